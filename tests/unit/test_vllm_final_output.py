"""VllmEngine.on_final_output: the callback fires when vLLM's output collector receives the request's final output
(or an error), before anyone pulls it; against vLLM 0.32's real RequestOutputCollector and OutputProcessor layout."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from gemma_serving.engines.vllm import VllmEngine
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.output_processor import RequestOutputCollector


def output(text: str, finished: bool) -> RequestOutput:
    """One engine step's DELTA output, as vLLM's output processor makes it."""
    done = "length" if finished else None
    return RequestOutput("req-1a2b3c4d", None, [1, 2], None,
                         [CompletionOutput(0, text, [7], None, None, finish_reason=done)], finished)


def engine_with(collector, external="req", internal="req-1a2b3c4d"):
    engine = VllmEngine.__new__(VllmEngine)
    engine._llm = SimpleNamespace(output_processor=SimpleNamespace(
        external_req_ids={external: [internal]}, request_states={internal: SimpleNamespace(queue=collector)}))
    return engine


@pytest.fixture
def collector():
    return RequestOutputCollector(RequestOutputKind.DELTA, "req-1a2b3c4d")


async def test_the_final_output_calls_back_before_it_is_pulled(collector):
    calls = []
    assert engine_with(collector).on_final_output("req", lambda: calls.append(1))
    collector.put(output(" a", False))
    collector.put(output(" b", False))  # merged into the first
    assert calls == []
    collector.put(output(" c", True))
    assert calls == [1]
    pulled = collector.get_nowait()  # still there for the stream to pull, merged
    assert pulled.finished and pulled.outputs[0].text == " a b c"


async def test_an_error_calls_back_too(collector):
    calls = []
    engine_with(collector).on_final_output("req", lambda: calls.append(1))
    collector.put(RuntimeError("engine dead"))
    assert calls == [1]


async def test_a_final_output_already_waiting_calls_back_at_once(collector):
    calls = []
    collector.put(output(" a", True))
    engine_with(collector).on_final_output("req", lambda: calls.append(1))
    assert calls == [1]


def test_an_unknown_request_or_another_vllm_layout_keeps_the_ticks(collector):
    assert not engine_with(collector).on_final_output("other", lambda: None)
    engine = VllmEngine.__new__(VllmEngine)
    engine._llm = SimpleNamespace()  # no output_processor
    assert not engine.on_final_output("req", lambda: None)
