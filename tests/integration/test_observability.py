"""One trace from the client to the engine across Ray processes, exported over OTLP; Prometheus metrics move."""

import re
import secrets
import urllib.request

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message
from gemma_serving.telemetry import attributes as attr

SECRET_PROMPT = "the launch code is " + secrets.token_hex(8)


def _attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value or v.int_value or v.double_value or [x.string_value for x in v.array_value.values]
    return out


def test_client_traceparent_is_continued_by_router_deployment_and_engine(stub, otlp_receiver):
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent_id}-01"
    request = pb.GenerateRequest(model="gemma-3-tiny", messages=[message(SECRET_PROMPT)],
                                 sampling=pb.SamplingParams(max_tokens=8, temperature=0.0))
    reply = stub.Generate(request, timeout=60, metadata=(("traceparent", traceparent),))
    names = {attr.SPAN_ROUTER, attr.SPAN_DEPLOYMENT, attr.SPAN_ENGINE}
    spans = otlp_receiver.wait_for_trace(bytes.fromhex(trace_id), names)
    assert names <= set(spans), f"got {sorted(spans)}"
    (router_res, router), (dep_res, dep), (_, engine) = (spans[n] for n in
                                                          (attr.SPAN_ROUTER, attr.SPAN_DEPLOYMENT, attr.SPAN_ENGINE))
    # Parent links: client -> router -> deployment -> engine, across the router and text replica processes.
    assert router.parent_span_id == bytes.fromhex(parent_id)
    assert dep.parent_span_id == router.span_id and engine.parent_span_id == dep.span_id
    assert router_res["gemma_serving.component"] == "router" and dep_res["gemma_serving.component"] == "text"
    assert router_res["service.name"] == "gemma-serving"
    a = _attrs(router)
    assert a[attr.REQUEST_MODEL] == "gemma-3-tiny" and a[attr.RESPONSE_ID] == reply.request_id
    assert a[attr.USAGE_INPUT_TOKENS] == reply.usage.prompt_tokens
    assert a[attr.USAGE_OUTPUT_TOKENS] == reply.usage.completion_tokens
    e = _attrs(engine)
    assert e[attr.USAGE_OUTPUT_TOKENS] == reply.usage.completion_tokens and attr.TIME_TO_FIRST_TOKEN_S in e
    # Queue time is the router's measure less the replica's own time (no cross-host clocks): on the router span.
    assert attr.QUEUE_TIME_S in a


def test_prompt_text_never_appears_on_spans(stub, otlp_receiver):
    test_client_traceparent_is_continued_by_router_deployment_and_engine(stub, otlp_receiver)
    dumped = b"".join(s.SerializeToString() for _, s in otlp_receiver.spans())
    assert SECRET_PROMPT.encode() not in dumped and b"launch code" not in dumped


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _value(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move_with_traffic(stub, platform):
    port = platform[1].metrics_port.remote().result()
    before = _scrape(port)
    ok = dict(service="text", model="gemma-3-tiny", code="OK")
    request = pb.GenerateRequest(model="gemma-3-tiny", messages=[message("hello")],
                                 sampling=pb.SamplingParams(max_tokens=8, temperature=0.0))
    replies = [stub.Generate(request, timeout=60) for _ in range(3)]
    list(stub.GenerateStream(request, timeout=60))
    bad = pb.GenerateRequest(model="nope", messages=[message("x")])
    try:
        stub.Generate(bad, timeout=10)
    except Exception:
        pass
    after = _scrape(port)
    requests = "gemma_serving_requests_total"
    assert _value(after, requests, **ok) - _value(before, requests, **ok) == 4
    nf = dict(code="NOT_FOUND", model="unknown")
    assert _value(after, requests, **nf) - _value(before, requests, **nf) == 1
    generated = sum(r.usage.completion_tokens for r in replies)
    delta_tokens = (_value(after, "gemma_serving_completion_tokens_total", service="text")
                    - _value(before, "gemma_serving_completion_tokens_total", service="text"))
    assert delta_tokens >= generated
    ttft = "gemma_serving_time_to_first_token_seconds_count"
    assert _value(after, ttft, service="text") - _value(before, ttft, service="text") == 4
    assert _value(after, "gemma_serving_queue_time_seconds_count", service="text") > 0
    assert _value(after, "gemma_serving_inter_token_latency_seconds_count", service="text") > 0
    assert _value(after, "gemma_serving_requests_in_flight", service="text") == 0
    assert re.search(r'gemma_serving_replicas\{service="text"\} 1\.0', after)
