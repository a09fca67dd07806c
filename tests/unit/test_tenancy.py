"""Authentication, quotas, usage, fair admission, logs and the safety hook over real gRPC (FakeEngine behind)."""

import asyncio
import logging
import statistics
import time

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import message
from gemma_serving.router.auth import Authenticator, Credentials, new_api_key
from gemma_serving.security_config import SecuritySettings

KEY_A, HASH_A = new_api_key()
KEY_B, HASH_B = new_api_key()


def security(**tenant_a):
    return {"security": {"auth": "api_key", "tenants": [
        {"id": "team-a", "api_key_hashes": [HASH_A], **tenant_a},
        {"id": "team-b", "api_key_hashes": [HASH_B]},
    ]}}


def req(max_tokens=4, model="text-model", text="hello there"):
    return pb.GenerateRequest(model=model, messages=[message(text)], sampling=pb.SamplingParams(max_tokens=max_tokens))


def auth(key):
    return (("authorization", f"Bearer {key}"),)


async def _stub(router):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    return channel, pb_grpc.InferenceStub(channel)


async def _code(coro):
    try:
        await coro
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()


async def test_api_keys_map_to_tenants_and_models_are_permissioned(make_router):
    router, _ = await make_router(security(models=["vision-model"]))
    channel, stub = await _stub(router)
    assert (await _code(stub.Generate(req())))[0] == grpc.StatusCode.UNAUTHENTICATED
    code, details = await _code(stub.Generate(req(), metadata=auth("gsk_deadbeef_wrong")))
    assert code == grpc.StatusCode.UNAUTHENTICATED and details == "invalid API key"
    code, details = await _code(stub.Generate(req(), metadata=auth(KEY_A)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "team-a may not use model text-model" in details
    assert (await _code(stub.Generate(req(model="vision-model"), metadata=auth(KEY_A))))[0] == grpc.StatusCode.OK
    assert (await _code(stub.Generate(req(), metadata=auth(KEY_B))))[0] == grpc.StatusCode.OK
    await channel.close()


def test_disabled_auth_is_said_loudly_at_start(caplog):
    with caplog.at_level(logging.WARNING):
        assert Authenticator(SecuritySettings()).authenticate(Credentials()).id == "default"
    assert "AUTHENTICATION IS DISABLED" in caplog.text


def test_no_measurable_timing_difference_between_unknown_and_known_key_ids():
    authn = Authenticator(SecuritySettings.model_validate(security()["security"]), clock=lambda: 0.0)
    known_id = KEY_A.split("_")[1]

    def median_us(key):
        samples = []
        for _ in range(3000):
            began = time.perf_counter_ns()
            try:
                authn._match(key)
            finally:
                samples.append(time.perf_counter_ns() - began)
        return statistics.median(samples) / 1000

    known, unknown = median_us(f"gsk_{known_id}_{'x' * 43}"), median_us(f"gsk_00000000_{'x' * 43}")
    assert abs(known - unknown) < 5, (known, unknown)


async def test_brute_force_is_rate_limited_per_client(make_router):
    router, _ = await make_router({"security": {**security()["security"], "failed_auth_per_minute": 5}})
    channel, stub = await _stub(router)
    codes = [(await _code(stub.Generate(req(), metadata=auth(f"gsk_0000000{i}_guess"))))[0] for i in range(8)]
    assert codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
    assert set(codes[5:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    await channel.close()


async def test_request_and_token_quotas_and_usage_match_what_was_served(make_router):
    router, _ = await make_router(security(requests_per_minute=3, tokens_per_minute=1000))
    channel, stub = await _stub(router)
    served = [await stub.Generate(req(max_tokens=5), metadata=auth(KEY_A)) for _ in range(3)]
    code, details = await _code(stub.Generate(req(), metadata=auth(KEY_A)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "requests_per_minute" in details
    usage = await stub.GetUsage(pb.GetUsageRequest(), metadata=auth(KEY_A))
    assert usage.tenant == "team-a" and usage.requests_in_window == 3 and usage.requests_remaining == 0
    assert usage.tokens_in_window == sum(r.usage.total_tokens for r in served)
    assert usage.tokens_remaining == 1000 - usage.tokens_in_window and 0 < usage.reset_in_ms <= 60000
    other = await stub.GetUsage(pb.GetUsageRequest(), metadata=auth(KEY_B))
    assert other.tenant == "team-b" and other.requests_in_window == 0 and other.requests_remaining == -1
    await channel.close()


async def test_token_quota_is_charged_as_tokens_stream(make_router):
    router, _ = await make_router(security(tokens_per_minute=20))
    channel, stub = await _stub(router)
    await stub.Generate(req(max_tokens=30), metadata=auth(KEY_A))  # 2 prompt + 30 completion tokens
    code, details = await _code(stub.Generate(req(), metadata=auth(KEY_A)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "tokens_per_minute" in details
    retry = dict((await _error(stub.Generate(req(), metadata=auth(KEY_A)))).trailing_metadata())
    assert int(retry["retry-after-ms"]) > 0
    await channel.close()


async def _error(coro):
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("expected an error")


async def test_concurrent_stream_cap(make_router):
    router, _ = await make_router(security(max_concurrent_streams=1), step_delay_s=0.02)
    channel, stub = await _stub(router)
    first = stub.GenerateStream(req(max_tokens=50), metadata=auth(KEY_A))
    await first.read()
    code, details = await _code(stub.Generate(req(), metadata=auth(KEY_A)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_streams (1)" in details
    first.cancel()
    await channel.close()


async def test_one_tenants_burst_does_not_take_every_slot(make_router):
    services = {"text": {"model": {"name": "text-model", "source": "/m", "max_output_tokens": 100,
                                   "default_max_tokens": 64},
                         "deployment": {"max_ongoing_requests": 8, "max_queued_requests": 0}}}
    router, _ = await make_router({**security(), "services": services}, step_delay_s=0.02)
    channel, stub = await _stub(router)
    burst = [stub.GenerateStream(req(max_tokens=60), metadata=auth(KEY_A)) for _ in range(8)]
    assert await asyncio.gather(*(_first(call) for call in burst)) == ["OK"] * 8  # alone, team-a may use it all
    b_stream = stub.GenerateStream(req(max_tokens=60), metadata=auth(KEY_B))
    assert await _first(b_stream) == "OK"  # the service is full of team-a's burst, yet team-b gets in
    code, details = await _code(stub.Generate(req(), metadata=auth(KEY_A)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "fair share (4 of 8 slots)" in details
    for call in burst + [b_stream]:
        call.cancel()
    await channel.close()


async def _first(call):
    try:
        await call.read()
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


async def test_logs_are_json_with_request_facts_and_never_the_prompt(make_router, caplog):
    secret = "my card number is 4111-1111"
    router, _ = await make_router(security())
    channel, stub = await _stub(router)
    logger = logging.getLogger("gemma_serving.requests")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    with caplog.at_level(logging.DEBUG):
        await stub.Generate(req(text=secret), metadata=auth(KEY_A))
        await _code(stub.Generate(req(text=secret, max_tokens=0), metadata=auth(KEY_A)))
    logger.removeHandler(handler)
    fields = [r.fields for r in records if r.getMessage() == "request finished"]  # one per generation
    rpcs = [r.fields for r in records if r.getMessage() == "rpc finished"]  # one per RPC (the interceptor's)
    assert [f["status"] for f in fields] == ["OK", "INVALID_ARGUMENT"]
    assert [(f["rpc"], f["status"], f["tenant"]) for f in rpcs] == [("Generate", "OK", "team-a"),
                                                                    ("Generate", "INVALID_ARGUMENT", "team-a")]
    assert [f["request_id"] for f in rpcs] == [f["request_id"] for f in fields]
    assert fields[0]["tenant"] == "team-a" and fields[0]["completion_tokens"] == 4 and fields[0]["latency_ms"] > 0
    assert len(fields[0]["prompt_sha"]) == 16
    from gemma_serving.telemetry.logs import JsonFormatter

    rendered = "\n".join(JsonFormatter().format(r) for r in records) + caplog.text
    assert "4111" not in rendered and "card number" not in rendered
    await channel.close()


async def test_safety_policy_refuses_requests_and_stops_output(make_router):
    router, backend = await make_router({"security": {"safety": {"policy": "blocked_terms",
                                                                  "blocked_terms": ["forbidden", "word3"]}}})
    channel, stub = await _stub(router)
    code, details = await _code(stub.Generate(req(text="tell me the FORBIDDEN thing")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "content policy" in details
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for chunk in stub.GenerateStream(req(max_tokens=10)):
            received.append(chunk.text)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "stopped" in info.value.details()
    # Text before the blocked term streamed (coalesced deltas may merge word1-word3 into the refused chunk).
    assert "word3" not in "".join(received) and " word0" in "".join(received)
    await channel.close()


async def test_oversized_and_injected_metadata_do_not_hurt_the_server(make_router):
    router, _ = await make_router(security())
    channel, stub = await _stub(router)
    code, _ = await _code(stub.Generate(req(), metadata=(("authorization", "Bearer " + "x" * 40000),)))
    assert code != grpc.StatusCode.OK
    from grpc._cython.cygrpc import ExecuteBatchError

    # gRPC refuses CR/LF in metadata values on the client side: header injection cannot even be sent.
    with pytest.raises((ValueError, TypeError, ExecuteBatchError, grpc.aio.AioRpcError)):
        await stub.Generate(req(), metadata=(("authorization", f"Bearer {KEY_A}\r\nx-tenant: team-b"),))
    assert (await _code(stub.Generate(req(), metadata=auth(KEY_B))))[0] == grpc.StatusCode.OK
    await channel.close()
