"""A small OTLP/gRPC trace receiver on loopback: what a collector would receive from the platform."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class OtlpTraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects exported spans; `spans()` returns (resource attributes, span) pairs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[tuple[dict, object]] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpTraceReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self._received.extend((resource, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict, object]]:
        with self._lock:
            return list(self._received)

    def wait_for_trace(self, trace_id: bytes, names: set[str], timeout_s: float = 15) -> dict[str, tuple]:
        """Spans of `trace_id` by name, once all `names` have arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = {s.name: (r, s) for r, s in self.spans() if s.trace_id == trace_id}
            if names <= set(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)
