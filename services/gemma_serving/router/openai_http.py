"""The OpenAI-compatible HTTP surface of the router: same pipeline (limits, errors, tracing, metrics) as gRPC.

Served by uvicorn inside the router replica (no extra Serve hop). Images come as data URLs, audio as base64
`input_audio` parts or multipart uploads; errors use OpenAI's body shape with the status from the error hierarchy.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from gemma_serving.config import ServingConfig
from gemma_serving.engines.types import AudioPart, AudioTask, Chunk, GenerationRequest, Message, Sampling, TextPart
from gemma_serving.errors import InvalidRequest
from gemma_serving.router import openai_convert as oc
from gemma_serving.router import openai_responses as responses
from gemma_serving.router.choices import choice_requests, collect_choices, merged
from gemma_serving.router.health import ServiceHealth
from gemma_serving.router.http_cancel import until_disconnect
from gemma_serving.router.http_errors import OpenAIRequestMiddleware, credentials, error_body
from gemma_serving.router.http_limits import BodyLimitMiddleware, parse_json_object
from gemma_serving.router.pipeline import InferencePipeline, collect
from gemma_serving.router.timing import with_timing


async def _json(request: Request, max_depth: int) -> dict:
    return parse_json_object(await request.body(), max_depth)


class OpenAISurface:
    """Routes of the OpenAI-compatible API over an InferencePipeline."""

    def __init__(self, config: ServingConfig, pipeline: InferencePipeline,
                 health: ServiceHealth | None = None) -> None:
        self._config = config
        self._pipeline = pipeline
        self._health = health

    def app(self) -> Starlette:
        requests = Middleware(OpenAIRequestMiddleware, authenticate=self._authenticate)
        body_limit = Middleware(BodyLimitMiddleware, max_body_bytes=self._config.limits.max_http_body_bytes)
        return Starlette(middleware=[requests, body_limit], routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", self.translations, methods=["POST"]),
            Route("/v1/usage", self.usage, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ])

    def _authenticate(self, caller):
        return self._pipeline.authenticate(caller)

    async def health(self, http: Request) -> JSONResponse:
        """200 while the router serves (the gRPC health's overall verdict; status "degraded" when a service's probe
        generations are slow), else 503 with each service's state;
        for HTTP load balancers and tools that probe `/health` like vLLM's server."""
        states = {k.value: v.value for k, v in self._health.states.items()} if self._health else {}
        if self._health is None or self._health.serving():
            # Degraded (slow probe generations) still serves: 200, and the JSON says so.
            degraded = self._health is not None and bool(self._health.degraded())
            return JSONResponse({"status": "degraded" if degraded else "serving", "services": states})
        return JSONResponse({"status": "draining" if self._health.draining else "not_serving", "services": states},
                            status_code=503)

    async def usage(self, http: Request) -> JSONResponse:
        """The calling tenant's usage and remaining quota (same figures as the GetUsage RPC)."""
        u = self._pipeline.tenancy.quotas.usage(http.state.tenant)
        windows = [{"window": w.window, "window_seconds": int(w.seconds), "requests": w.requests,
                    "tokens": w.tokens, "requests_limit": w.requests_limit, "tokens_limit": w.tokens_limit,
                    "reset_in_ms": int(w.reset_in_s * 1000)} for w in u.windows]
        # The top-level figures are the minute window's (as before the hour and day windows existed).
        minute = {k: v for k, v in windows[0].items() if k != "window"}
        return JSONResponse({"tenant": u.tenant, **minute, "concurrent_streams": u.concurrent,
                             "concurrent_streams_limit": u.concurrent_limit, "windows": windows})

    def _stream(self, domain: GenerationRequest, http: Request, request_id: str) -> AsyncIterator[Chunk]:
        received = time.monotonic()
        carrier = {k: v for k, v in http.headers.items() if k in ("traceparent", "tracestate")}
        stream = self._pipeline.stream(domain, request_id=request_id, time_remaining=None, carrier=carrier,
                                       credentials=credentials(http), tenant=http.state.tenant)
        named_tool = domain.tool_choice.mode == "function"
        return with_timing(oc.openai_finish(stream, named_tool=named_tool), received=received)

    async def _complete(self, domain: GenerationRequest, http: Request, request_id: str) -> tuple[str, Chunk]:
        return await until_disconnect(http, collect(self._stream(domain, http, request_id)))

    async def models(self, http: Request) -> JSONResponse:
        """OpenAI's model list, with vLLM's `max_model_len` and our `default_sampling` (set parameters only)."""
        data = [{"id": s.model.name, "object": "model", "created": 0, "owned_by": "gemma-serving",
                 "max_model_len": s.model.engine.max_model_len,
                 "default_sampling": {"max_tokens": s.model.default_max_tokens,
                                      **s.model.default_sampling.model_dump(exclude_none=True)}}
                for s in self._config.services.values()]
        return JSONResponse({"object": "list", "data": data})

    def _choice_streams(self, domain: GenerationRequest, http: Request, request_id: str
                        ) -> list[AsyncIterator[Chunk]]:
        requests = choice_requests(domain)
        if len(requests) == 1:
            return [self._stream(domain, http, request_id)]
        return [self._stream(r, http, f"{request_id}-{i}") for i, r in enumerate(requests)]

    async def chat(self, http: Request):
        request_id = http.state.request_id
        domain, body = oc.chat_request(await _json(http, self._config.limits.max_json_depth))
        streams = self._choice_streams(domain, http, request_id)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream and len(streams) == 1:
            first = await _first_or_error(streams[0])  # errors before the first token become an HTTP error
            events = _chat_events(streams[0], first, request_id, domain.model, include_usage)
            return StreamingResponse(_sse_text(events, streams[0], request_id), media_type="text/event-stream")
        if body.stream:
            pairs = merged(streams)
            first = await _first_or_error(pairs)
            events = responses.chat_choice_events(pairs, first, request_id, domain.model, include_usage)
            return StreamingResponse(_sse_text(events, pairs, request_id), media_type="text/event-stream")
        choices = await until_disconnect(http, collect_choices(streams))
        return JSONResponse(responses.chat_completion(request_id, domain.model, choices))

    async def completions(self, http: Request):
        """OpenAI's legacy completions: the raw prompt (no chat template), optionally echoed, streamed or not."""
        request_id = http.state.request_id
        domain, body = oc.completion_request(await _json(http, self._config.limits.max_json_depth))
        echo = domain.messages[0].parts[0].text if body.echo else ""
        streams = self._choice_streams(domain, http, request_id)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            pairs = merged(streams) if len(streams) > 1 else _indexed(streams[0])
            first = await _first_or_error(pairs)
            events = responses.completion_events(pairs, first, request_id, domain.model, include_usage, echo)
            return StreamingResponse(_sse_text(events, pairs, request_id), media_type="text/event-stream")
        choices = await until_disconnect(http, collect_choices(streams))
        return JSONResponse(responses.text_completion(request_id, domain.model, choices, echo))

    async def transcriptions(self, http: Request):
        return await self._audio(http, translate=False)

    async def translations(self, http: Request):
        return await self._audio(http, translate=True)

    async def _audio(self, http: Request, *, translate: bool):
        try:
            form = await http.form(max_files=1, max_fields=16)
        except Exception:
            raise InvalidRequest("send multipart/form-data with a `file` and a `model`") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("file is required: the audio to transcribe", field="file")
        data = await upload.read(self._config.limits.max_audio_bytes + 1)
        parts = [AudioPart(data, upload.content_type or "")]
        if form.get("prompt"):
            parts.append(TextPart(str(form["prompt"])))
        task = AudioTask("translate", "English") if translate else AudioTask("transcribe")
        sampling = Sampling(temperature=_form_float(form, "temperature"))
        domain = GenerationRequest(str(form.get("model", "")), (Message("user", tuple(parts)),), sampling,
                                   audio_task=task)
        text, _ = await self._complete(domain, http, http.state.request_id)
        if form.get("response_format") == "text":
            return PlainTextResponse(text)
        return JSONResponse({"text": text})


def _form_float(form, name: str) -> float | None:
    """A number field of a multipart form (None when absent); InvalidRequest naming the field otherwise."""
    value = form.get(name)
    if not value:
        return None
    try:
        return float(str(value))
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, got {str(value)[:32]!r}", field=name) from None


async def _first_or_error(stream: AsyncIterator[Chunk]) -> Chunk | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _chat_events(stream: AsyncIterator[Chunk], first: Chunk | None, request_id: str, model: str,
                       include_usage: bool) -> AsyncIterator[str]:
    """One choice's chunks as OpenAI chat.completion.chunk events (JSON), then the usage event if asked for."""
    yield oc.chat_chunk(request_id, model, {"role": "assistant", "content": ""})
    chunk = last = first
    while chunk is not None:
        delta: dict = {"content": chunk.text} if chunk.text else {}
        if chunk.tool_calls:
            delta["tool_calls"] = [dict(c, index=i) for i, c in enumerate(oc.tool_calls_json(chunk.tool_calls))]
        finish = oc.FINISH[chunk.finish_reason]
        if delta or finish or chunk.logprobs:
            yield oc.chat_chunk(request_id, model, delta, finish, timing=chunk.timing, logprobs=chunk.logprobs)
        last, chunk = chunk, await anext(stream, None)
    if include_usage and first is not None:
        body = json.loads(oc.chat_chunk(request_id, model, {}, None, oc.usage(last)))
        body["choices"] = []
        yield json.dumps(body)


async def _indexed(stream: AsyncIterator[Chunk]) -> AsyncIterator[tuple[int, Chunk]]:
    """A single choice's chunks as (0, chunk) pairs."""
    try:
        async for chunk in stream:
            yield 0, chunk
    finally:
        await stream.aclose()


async def _sse_text(events: AsyncIterator[dict | str], stream: AsyncIterator, request_id: str
                    ) -> AsyncIterator[str]:
    """`events` (bodies, or their JSON) as server-sent events ending with [DONE]; a failure mid-stream is one
    OpenAI error event; `stream` (what the events come from) is closed at the end."""
    try:
        async for event in events:
            yield f"data: {event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)}\n\n"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _, body = error_body(exc, request_id)
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        await stream.aclose()
    yield "data: [DONE]\n\n"


async def start_http_server(app: Starlette, host: str, port: int, options: dict | None = None):
    """Run uvicorn on the current event loop; returns (server, bound port). `options` are further uvicorn.Config
    settings (TLS: `router.http_tls.http_tls_options`)."""
    import socket

    import uvicorn

    from gemma_serving.router.http_server import QuietServer

    # Bind here, not in uvicorn: uvicorn exits the process (SystemExit) on a bind error, which would hang a replica.
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for sockets created with it; without
    # it every small SSE write waited for the client's delayed ACK (Nagle): ~40 ms added to TTFT and to ITL.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted connections on Linux
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # router replicas share the port, as for gRPC
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"router.http_port: cannot listen on {host}:{port}: {exc.strerror}") from None
    server = QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                        **(options or {})))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
        await asyncio.sleep(0.01)
    server.gemma_task = task
    return server, server.servers[0].sockets[0].getsockname()[1]

