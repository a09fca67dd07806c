"""64 concurrent streams on each surface of the real platform (real vLLM, real Ray Serve, the delta channel): every
request is answered with exactly its tokens and no stream is starved (issue 13 saw 6-21 of 192 HTTP streams get no
answer at 32 clients). Order and completeness of every delta under concurrency: tests/unit/test_token_path.py."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import message

from tests.session_facts import SESSION_FACTS as PLATFORM_FACTS

MODEL = "gemma-3-tiny"
STREAMS = 64
TOKENS = 12


def _request(i: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=MODEL, messages=[message(f"Stream {i}: tell me about the sea.")],
                              sampling=pb.SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True))


#: Clients start this far apart (64 at once would exceed the integration platform's deliberately small Serve queue,
#: 16 per router, while the replica's 64 slots are being assigned); all 64 are still in flight together.
STAGGER_S = 0.005


async def _grpc_stream(stub, i: int) -> tuple[str, int, float]:
    await asyncio.sleep(i * STAGGER_S)
    began, text, tokens = time.monotonic(), [], 0
    async for chunk in stub.GenerateStream(_request(i), timeout=120):
        text.append(chunk.text)
        if chunk.HasField("usage"):
            tokens = chunk.usage.completion_tokens
    return "".join(text), tokens, time.monotonic() - began


async def _http_stream(session, url: str, i: int) -> tuple[str, int, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Stream {i}: tell me about the sea."}],
            "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    await asyncio.sleep(i * STAGGER_S)
    began, text, tokens = time.monotonic(), [], 0
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text), tokens, time.monotonic() - began


def test_64_concurrent_streams_on_each_surface_are_all_answered_complete(platform):
    port, handle, _ = platform
    http_port = handle.http_port.remote().result()

    async def run() -> tuple[list, list]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            grpc_results = await asyncio.wait_for(
                asyncio.gather(*(_grpc_stream(stub, i) for i in range(STREAMS))), 300)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
            http_results = await asyncio.wait_for(
                asyncio.gather(*(_http_stream(session, url, i) for i in range(STREAMS))), 300)
        return grpc_results, http_results

    grpc_results, http_results = asyncio.run(run())
    for surface, results in (("grpc", grpc_results), ("http", http_results)):
        assert len(results) == STREAMS, surface
        assert all(tokens == TOKENS for _, tokens, _ in results), (surface, [t for _, t, _ in results])
        assert all(text for text, _, _ in results), surface
        slowest = max(seconds for _, _, seconds in results)
        PLATFORM_FACTS[f"{STREAMS} concurrent {surface} streams x {TOKENS} tokens"] = (
            f"all answered, slowest {slowest:.1f} s")


def test_requests_reach_the_replica_as_direct_calls(stub, describe):
    """With a replica announced and room on it, a request costs no Serve handle call (deltas/calls.py)."""
    before = describe("text")["direct_calls"]
    assert before["address"].startswith("tcp://") and not before["draining"]
    for i in range(8):
        chunks = list(stub.GenerateStream(_request(i), timeout=60))
        assert chunks[-1].usage.completion_tokens == TOKENS
    after = describe("text")["direct_calls"]
    assert after["started"] - before["started"] == 8 and after["in_flight"] == 0


def test_a_paced_stream_ends_as_soon_as_vllm_has_its_final_output(stub, describe):
    """vLLM's output collector tells the replica when a request's final output is in (VllmEngine.on_final_output):
    a stream paced by stream_flush_ms sends its end at once instead of at its next tick."""
    before = describe("text")["paced_ends_at_once"]
    for i in range(8):
        chunks = list(stub.GenerateStream(_request(i), timeout=60))
        assert "".join(c.text for c in chunks) and chunks[-1].usage.completion_tokens == TOKENS
    # Each stream waits for its tick nearly all the time between pulls, so its final output lands in a wait.
    assert describe("text")["paced_ends_at_once"] - before >= 4


def test_the_replica_reads_vllms_engine_outputs_without_pyzmqs_asyncio_futures(stub, describe):
    """vLLM's output task reads every engine step through EngineOutputReader (engines/vllm_outputs.py): each token
    of a sequential stream is one engine step, so one read at least."""
    before = describe("text")["engine_output_reads"]
    assert before is not None, "vLLM's output socket is read through pyzmq's asyncio socket"
    for i in range(4):
        chunks = list(stub.GenerateStream(_request(i), timeout=60))
        assert "".join(c.text for c in chunks) and chunks[-1].usage.completion_tokens == TOKENS
    assert describe("text")["engine_output_reads"] - before >= 4 * TOKENS


def test_between_ticks_the_replica_leaves_vllms_outputs_on_the_socket(stub, describe):
    """A lone paced stream past its first token needs nothing before its next tick: the replica drains vLLM's
    output socket once per tick then (EngineOutputReader.pace), and still gets every token, first at once."""
    before = describe("text")["engine_paced_output_waits"]
    assert before is not None
    for i in range(4):
        chunks = list(stub.GenerateStream(_request(i), timeout=60))
        assert "".join(c.text for c in chunks) and chunks[-1].usage.completion_tokens == TOKENS
    assert describe("text")["engine_paced_output_waits"] - before >= 4
