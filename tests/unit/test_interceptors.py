"""The error model in one place: a new Inference RPC written without any error handling still gets a request id,
authentication before it runs, our statuses with google.rpc details, and one RPC log line (a real grpc.aio server
with the interceptor and a raw handler, no servicer code)."""

import ast
import inspect
import logging

import grpc
import pytest
from gemma_serving.errors import InvalidRequest, RateLimited
from gemma_serving.router import servicer
from gemma_serving.router.auth import Authenticator
from gemma_serving.router.interceptors import InferenceInterceptor, current_request_id, current_tenant
from gemma_serving.security_config import SecuritySettings

from tests.unit.test_servicer import _details
from tests.unit.test_tenancy import KEY_A, auth, security

SERVICE = "gemma.serving.v1.Inference"
ran: list[str] = []


async def brand_new_rpc(request: bytes, context) -> bytes:
    """What a careless new RPC looks like: raises whatever happens, handles nothing."""
    ran.append(current_tenant().id)
    if request == b"bad field":
        raise InvalidRequest("widgets must be 1..3, got 9", field="widgets")
    if request == b"busy":
        raise RateLimited("slow down", retry_after_s=2.5)
    if request == b"bug":
        raise RuntimeError("secret internal detail")
    return current_request_id().encode()


async def brand_new_stream(request: bytes, context):
    yield b"one"
    raise InvalidRequest("stopped after one", field="request")


@pytest.fixture
async def channel():
    authn = Authenticator(SecuritySettings.model_validate(security()["security"]))
    server = grpc.aio.server(interceptors=[InferenceInterceptor(authn.authenticate)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "BrandNew": grpc.unary_unary_rpc_method_handler(brand_new_rpc),
        "BrandNewStream": grpc.unary_stream_rpc_method_handler(brand_new_stream),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


async def _fails(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_a_new_rpc_gets_statuses_details_and_a_request_id(channel, caplog):
    rpc = channel.unary_unary(f"/{SERVICE}/BrandNew")
    request_id = (await rpc(b"ok", metadata=auth(KEY_A))).decode()
    assert len(request_id) == 32
    error = await _fails(rpc(b"bad field", metadata=auth(KEY_A)))
    details = _details(error)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "widgets must be 1..3, got 9"
    assert details["BadRequest"].field_violations[0].field == "widgets"
    assert details["RequestInfo"].request_id == dict(error.trailing_metadata())["request-id"]
    error = await _fails(rpc(b"busy", metadata=auth(KEY_A)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _details(error)["RetryInfo"].retry_delay.seconds == 2
    assert dict(error.trailing_metadata())["retry-after-ms"] == "2500"
    with caplog.at_level(logging.ERROR):
        error = await _fails(rpc(b"bug", metadata=auth(KEY_A)))
    assert error.code() == grpc.StatusCode.INTERNAL and "secret" not in error.details()
    assert dict(error.trailing_metadata())["request-id"] in error.details()
    assert "secret internal detail" in caplog.text  # the details go to the log, under the request id


async def test_a_new_rpc_is_authenticated_before_it_runs(channel):
    ran.clear()
    rpc = channel.unary_unary(f"/{SERVICE}/BrandNew")
    error = await _fails(rpc(b"ok"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "request-id" in dict(error.trailing_metadata())
    assert (await _fails(rpc(b"ok", metadata=auth("gsk_00000000_nope")))).code() == grpc.StatusCode.UNAUTHENTICATED
    assert ran == []
    await rpc(b"ok", metadata=auth(KEY_A))
    assert ran == ["team-a"]


async def test_a_new_streaming_rpc_ends_with_our_status_after_its_output(channel):
    call = channel.unary_stream(f"/{SERVICE}/BrandNewStream")(b"", metadata=auth(KEY_A))
    assert await call.read() == b"one"
    error = await _fails(call.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "stopped after one"


async def test_each_rpc_logs_one_line(channel, request_log):
    rpc = channel.unary_unary(f"/{SERVICE}/BrandNew")
    await rpc(b"ok", metadata=auth(KEY_A))
    await _fails(rpc(b"bad field", metadata=auth(KEY_A)))
    await _fails(rpc(b"ok"))
    assert [(r.fields["rpc"], r.fields["status"], r.fields["tenant"]) for r in request_log] == [
        ("BrandNew", "OK", "team-a"), ("BrandNew", "INVALID_ARGUMENT", "team-a"),
        ("BrandNew", "UNAUTHENTICATED", "unknown")]


def test_the_servicer_handles_errors_only_where_a_batch_item_fails_alone():
    tree = ast.parse(inspect.getsource(servicer.InferenceServicer))
    with_try = {f.name for f in ast.walk(tree) if isinstance(f, ast.AsyncFunctionDef | ast.FunctionDef)
                and any(isinstance(n, ast.Try) and n.handlers for n in ast.walk(f))}
    assert with_try == {"_batch_item"}


async def test_refused_callers_are_counted_in_the_request_metric(make_router):
    from tests.unit.test_tenancy import _code, _stub, req

    router, _ = await make_router(security())
    channel, stub = await _stub(router)
    assert (await _code(stub.Generate(req(), metadata=auth("gsk_00000000_nope"))))[0] == grpc.StatusCode.UNAUTHENTICATED
    await channel.close()
    refused = router.metrics.registry.get_sample_value(
        "gemma_serving_requests_total", {"service": "none", "model": "unknown", "tenant": "unknown",
                                         "code": "UNAUTHENTICATED"})
    assert refused == 1
