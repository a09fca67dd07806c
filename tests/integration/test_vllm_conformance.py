"""Side by side with vLLM's own OpenAI server: the same requests (conformance_cases.CASES: chat and completions,
streamed and not, each sampling parameter, n, logprobs, stop strings, tools, response_format, bad parameters) to our
platform and to `python -m vllm.entrypoints.openai.api_server` on the same tiny checkpoint, greedy or seeded, and
the answers compared field by field: status codes, keys and value types, `object`, finish reasons, usage arithmetic,
the prompt's token count, the chunk sequence of streams, and for greedy requests the generated text itself.

Differences we keep on purpose are listed in conformance_cases (Case.differs, VLLM_ONLY, OURS_ONLY) with the reason.
vLLM runs with `--generation-config vllm` so that neither side takes sampling defaults from the checkpoint's
generation_config.json (ours come from config: default_sampling), and with the pythonic tool parser (TOOLS_PROMPT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from gemma_serving.config import ServiceKind
from gemma_serving.models.build import resolve_model_source

from tests.conftest import free_port
from tests.integration.conformance_cases import CASES, Case, Reply, parse_sse, shape_diff

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ours(platform):
    return f"http://127.0.0.1:{platform[1].http_port.remote().result()}"


@pytest.fixture(scope="module")
def vllm_server(platform_config, tmp_path_factory):
    """vLLM's OpenAI server on the text model's checkpoint and engine settings, in its own process group."""
    model = platform_config.services[ServiceKind.TEXT].model
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(resolve_model_source(
        model.source)), "--served-model-name", model.name, "--dtype", model.engine.dtype,
            "--max-model-len", str(model.engine.max_model_len), "--max-num-seqs", str(model.engine.max_num_seqs),
            "--enforce-eager", "--generation-config", "vllm", "--host", "127.0.0.1", "--port", str(port),
            "--enable-auto-tool-choice", "--tool-call-parser", "pythonic",  # no Gemma 3 parser: see TOOLS_PROMPT
            "--disable-log-stats", "--uvicorn-log-level", "warning"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(model.engine.cpu_kv_cache_gib), "HF_HUB_OFFLINE": "1"}
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log_path, timeout_s=600)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the API server and its engine-core process
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_ready(url: str, proc: subprocess.Popen, log_path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM's server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"vLLM's server did not answer within {timeout_s} s")


def send(base: str, case: Case) -> Reply:
    path = "/v1/chat/completions" if case.endpoint == "chat" else "/v1/completions"
    body = {k: v for k, v in case.body.items() if v is not None}  # None stands for "leave it out"
    if not case.stream:
        r = httpx.post(base + path, json=body, timeout=300)
        return Reply(r.status_code, r.json())
    with httpx.stream("POST", base + path, json=body, timeout=300) as r:
        if r.status_code != 200:
            r.read()
            return Reply(r.status_code, r.json())
        events, done = parse_sse(r.iter_lines())
    return Reply(200, events=events, done=done)


def _kind(event: dict) -> tuple:
    """What an event is, for comparing chunk sequences: usage-only, a role opener, text, a finish, logprobs."""
    if not event.get("choices"):
        return ("usage",) if event.get("usage") else ("empty",)
    c = event["choices"][0]
    delta = c.get("delta") or {}
    return ("role" if delta.get("role") else "", "finish" if c.get("finish_reason") else "",
            "logprobs" if c.get("logprobs") else "")


def _stream_problems(ours: Reply, theirs: Reply) -> list[str]:
    problems = [] if ours.done and theirs.done else ["a stream did not end with [DONE]"]
    if {e.get("object") for e in ours.events} != {e.get("object") for e in theirs.events}:
        problems.append("stream events' `object` differ")
    first_of = {}
    for event in theirs.events:
        first_of.setdefault(_kind(event), event)
    for event in ours.events:
        kind = _kind(event)
        if kind in first_of:
            problems += [f"event {kind}: {d}" for d in shape_diff(event, first_of.pop(kind))]
    ours_kinds = {_kind(e)[:2] for e in ours.events}  # whether logprobs ride on the finishing event may differ
    problems += [f"vLLM sends an event we do not: {kind}" for kind in first_of if kind[:2] not in ours_kinds]
    if (ours.events[-1].get("choices") == []) != (theirs.events[-1].get("choices") == []):
        problems.append("only one stream ends with a usage event")
    if ours.events and theirs.events and _kind(ours.events[0]) != _kind(theirs.events[0]):
        problems.append(f"first event differs: {_kind(ours.events[0])} vs {_kind(theirs.events[0])}")
    return problems


def _common_problems(case: Case, ours: Reply, theirs: Reply) -> list[str]:
    problems = []
    for name, reply in (("ours", ours), ("vLLM", theirs)):
        u = reply.usage()
        if u is not None and u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"]:
            problems.append(f"{name}: usage does not add up: {u}")
    our_usage, their_usage = ours.usage(), theirs.usage()
    if (our_usage is None) != (their_usage is None):
        problems.append(f"usage present on one side only: {our_usage} vs {their_usage}")
    elif our_usage and case.same_prompt and our_usage["prompt_tokens"] != their_usage["prompt_tokens"]:
        problems.append(f"prompt tokens differ (prompt rendering): {our_usage} vs {their_usage}")
    if sorted(ours.texts(case.endpoint)) != sorted(theirs.texts(case.endpoint)):
        problems.append("choice indexes differ")
    if case.same_text:
        if ours.texts(case.endpoint) != theirs.texts(case.endpoint):
            problems.append(f"greedy text differs: {ours.texts(case.endpoint)} vs {theirs.texts(case.endpoint)}")
        if ours.finish_reasons() != theirs.finish_reasons():
            problems.append(f"finish reasons differ: {ours.finish_reasons()} vs {theirs.finish_reasons()}")
        if our_usage and our_usage["completion_tokens"] != their_usage["completion_tokens"]:
            problems.append(f"completion tokens differ: {our_usage} vs {their_usage}")
    elif set(ours.finish_reasons().values()) - {"stop", "length", "tool_calls"}:
        problems.append(f"finish reasons outside OpenAI's values: {ours.finish_reasons()}")
    return problems


def test_at_least_forty_requests_cover_every_surface():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    assert {(c.endpoint, c.stream) for c in CASES} == {("chat", False), ("chat", True), ("completions", False),
                                                         ("completions", True)}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_answers_like_vllms_server(case: Case, ours: str, vllm_server: str):
    mine, theirs = send(ours, case), send(vllm_server, case)
    if case.differs:
        our_status, their_status, why = case.differs
        assert (mine.status, theirs.status) == (our_status, their_status), (
            f"documented difference ({why}) no longer holds: {mine.body} vs {theirs.body}")
        return
    assert mine.status == theirs.status, f"status {mine.status} vs vLLM {theirs.status}: {mine.body} vs {theirs.body}"
    if mine.status != 200:
        # Same keys as vLLM's error body; `code` is a string here (OpenAI's API uses strings, vLLM the status).
        assert {"message", "type", "param", "code"} <= set(mine.body["error"]), mine.body
        assert theirs.body["error"]["message"]
        return
    if case.stream:
        problems = _stream_problems(mine, theirs)
    else:
        problems = shape_diff(mine.body, theirs.body)
        if mine.body["object"] != theirs.body["object"]:
            problems.append(f"object {mine.body['object']} vs {theirs.body['object']}")
    problems += _common_problems(case, mine, theirs)
    assert not problems, "\n".join(problems)
