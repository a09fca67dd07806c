"""Calling the platform for the fuzz tests: one RPC per distinct request, every check on its answer against the
oracle (fuzz_oracle), the tally of what was sent, and waiting until every model answers again. A replay of the same
request (hypothesis replays a failing example) reuses the recorded outcome.

Reproducible: hypothesis runs derandomized with no example database (FUZZ); no shrinking (every example is a real
RPC, and after an engine crash a replay could wait minutes for a replacement replica) -- the failure prints the case
label.

The test modules are numbered because their order matters: pytest runs them by name, the audio fuzzing (where
BUG-1 crashed an engine) after everything else, and test_fuzz_6 checks the platform after all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from hypothesis import HealthCheck, Phase, settings

from tests.integration.fuzz_oracle import ALLOWED, EXHAUSTED, INVALID, MODELS, NOT_FOUND, OK, Case

CALL_TIMEOUT_S = 60.0

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
)

#: (test name, method, status code) -> count, for the summary and the >= 500 requests check.
SENT: Counter = Counter()
RAN: set = set()
_OUTCOMES: dict = {}


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    trailers: tuple = ()
    reply: object = None
    seconds: float = 0.0


def call(stub, case: Case, test: str, timeout: float = CALL_TIMEOUT_S, fresh: bool = False) -> Outcome:
    """Send `case` once (hypothesis replays a failing example: it gets the recorded outcome unless `fresh`)."""
    key = hashlib.sha256(case.request.SerializeToString(deterministic=True)
                         + bytes([case.stream]) + repr(timeout).encode()).hexdigest()
    if fresh or key not in _OUTCOMES:
        began = time.monotonic()
        try:
            if case.stream:
                reply = list(stub.GenerateStream(case.request, timeout=timeout))
            else:
                reply = stub.Generate(case.request, timeout=timeout)
            outcome = Outcome(OK, reply=reply, seconds=time.monotonic() - began)
        except grpc.RpcError as err:
            outcome = Outcome(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()),
                              seconds=time.monotonic() - began)
        _OUTCOMES[key] = outcome
        SENT[(test, "GenerateStream" if case.stream else "Generate", outcome.code.name)] += 1
    return _OUTCOMES[key]


def check(stub, case: Case, test: str, fresh: bool = False) -> Outcome:
    out = call(stub, case, test, fresh=fresh)
    where = f"{case!r}: got {out.code.name} after {out.seconds:.1f} s: {out.details[:500]!r}"
    if out.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise AssertionError(f"HANG: no answer within {CALL_TIMEOUT_S:.0f} s -- {where}")
    if out.code == grpc.StatusCode.UNAVAILABLE and "died" in out.details:
        raise AssertionError(f"ENGINE CRASH (a bad request killed a vLLM engine; BUG-1 if a short clip) -- {where}")
    assert out.code in ALLOWED, f"unexpected status code -- {where}"
    assert out.code in case.expected | {EXHAUSTED}, f"wrong status code for this request -- {where}"
    if out.code == OK:
        _check_reply(case, out.reply)
    else:
        assert out.details.strip(), f"empty error message -- {where}"
        assert "Traceback" not in out.details and 'File "' not in out.details, f"traceback in message -- {where}"
        assert len(out.details) <= 2000, f"error message of {len(out.details)} chars echoes input -- {where}"
        for text in case.texts:
            assert len(text.strip()) < 16 or text.strip() not in out.details, f"prompt text in message -- {where}"
        if out.code in (INVALID, NOT_FOUND):
            assert any(k == "request-id" and v for k, v in out.trailers), f"no request-id trailer -- {where}"
    return out


def _check_reply(case: Case, reply) -> None:
    finished = (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    n = case.request.sampling.n if case.request.sampling.HasField("n") else 1
    if case.stream:
        assert reply, f"empty stream for {case!r}"
        ids = {c.request_id for c in reply}
        assert len(ids) == 1 and ids != {""}, f"request ids {ids} in one stream: {case!r}"
        assert {c.index for c in reply} == set(range(n)), f"choice indexes in the stream: {case!r}"
        for index in range(n):  # each choice (one unless n > 1) ends with its finish reason and usage
            mine = [c for c in reply if c.index == index]
            assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in mine[:-1]), f"early finish: {case!r}"
            last, usage = mine[-1], mine[-1].usage
            assert last.finish_reason in finished, f"last chunk finish_reason {last.finish_reason}: {case!r}"
            assert 1 <= usage.completion_tokens <= case.max_tokens, f"usage {usage} for {case!r}"
    else:
        assert reply.request_id and reply.model == case.request.model, f"reply header: {case!r}"
        assert reply.finish_reason in finished, f"finish_reason {reply.finish_reason}: {case!r}"
        assert len(reply.choices) == (n if n > 1 else 0), f"{len(reply.choices)} choices for {case!r}"
        usage = reply.usage
        assert n <= usage.completion_tokens <= n * case.max_tokens, f"usage {usage} for {case!r}"
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def wait_until_every_model_answers(port: int, timeout_s: float = 300) -> dict[str, str]:
    """Send a 1-token request to every model until all succeed (a replica replaced after an engine crash takes
    minutes on this machine); returns the last outcome per model."""
    from gemma_serving.api import inference_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        pending = list(MODELS)
        while pending and time.monotonic() < deadline:
            for model in list(pending):
                hello = [pb.Message(role="user", parts=[pb.Part(text="hi")])]
                request = pb.GenerateRequest(model=model, messages=hello, sampling=pb.SamplingParams(max_tokens=1))
                try:
                    stub.Generate(request, timeout=max(1.0, min(20.0, deadline - time.monotonic())))
                    last[model] = "OK"
                    pending.remove(model)
                except grpc.RpcError as err:
                    last[model] = f"{err.code().name}: {(err.details() or '')[:120]}"
            if pending:
                time.sleep(2)
    return last


def print_summary() -> int:
    """Print the RPCs sent by test, method and status code (shown with pytest -s); returns the total."""
    total = sum(SENT.values())
    by_code = Counter()
    for (_, _, code), n in SENT.items():
        by_code[code] += n
    print(f"\nfuzz: {total} RPCs sent; by code: {dict(by_code)}")
    for (test, method, code), n in sorted(SENT.items()):
        print(f"  {test:>10} {method:<22} {code:<20} {n:5d}")
    return total


@pytest.fixture(scope="module", autouse=True)
def leave_the_platform_ready(platform):
    """Imported by every fuzz test module. After the module: print what was sent, then wait (bounded) until every
    model answers again, so that an engine crash found there does not spill over into later test files while Serve
    replaces the replica."""
    began = time.monotonic()
    yield
    print(f"\nfuzz module: {time.monotonic() - began:.0f} s")
    print_summary()
    wait_until_every_model_answers(platform[0])

