"""The sampling declarations (engines/sampling.py) and what is derived from them: proto fields, the gRPC and OpenAI
conversions, per-model defaults (config, validation, ListModels) and vLLM's SamplingParams."""

import math
from pathlib import Path

import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api.convert import request_from_pb
from gemma_serving.client import message
from gemma_serving.config import ModelConfig, parse_config
from gemma_serving.engines.sampling import SAMPLING_PARAMS
from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart
from gemma_serving.engines.vllm import VllmEngine
from gemma_serving.errors import InvalidRequest
from gemma_serving.router.openai_convert import sampling_from
from gemma_serving.router.openai_models import ChatBody, parse_body
from gemma_serving.router.validation import validate_request

from tests.unit.conftest import CONFIG

#: A valid, non-default value per declared parameter: a new declaration without one fails these tests.
EXAMPLES = {"max_tokens": 12, "temperature": 0.5, "top_p": 0.75, "top_k": 40, "min_p": 0.25, "seed": 7,
            "stop": ("END", "###"), "repetition_penalty": 1.25, "presence_penalty": -0.5, "frequency_penalty": 1.5,
            "logprobs": True, "top_logprobs": 3, "n": 2, "ignore_eos": True}
GUIDE_DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.05}


def _same(a, b):
    return math.isclose(a, b, rel_tol=1e-6) if isinstance(a, float) else a == b


def test_every_declared_parameter_has_an_example_and_a_proto_field_of_its_name():
    fields = pb.SamplingParams.DESCRIPTOR.fields_by_name
    for p in SAMPLING_PARAMS:
        assert p.name in EXAMPLES, f"add an example value for {p.name}"
        field = fields[p.name]
        if p.kind is tuple:
            assert field.is_repeated
        else:
            assert field.has_presence, f"{p.name} must be `optional` so unset differs from zero"


def test_grpc_carries_every_parameter_and_leaves_unset_ones_none():
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in EXAMPLES.items()}
    req = pb.GenerateRequest(model="m", messages=[message("hi")], sampling=pb.SamplingParams(**values))
    got = request_from_pb(req).sampling
    assert all(_same(getattr(got, k), v) for k, v in EXAMPLES.items())
    unset = request_from_pb(pb.GenerateRequest(model="m", messages=[message("hi")])).sampling
    assert unset == Sampling()


def test_openai_bodies_carry_every_parameter_under_its_name():
    body = {"model": "m", "messages": [], **{k: list(v) if isinstance(v, tuple) else v for k, v in EXAMPLES.items()}}
    got = sampling_from(parse_body(ChatBody, body))
    assert all(_same(getattr(got, k), v) for k, v in EXAMPLES.items())
    # OpenAI's newer name wins over the deprecated one, as in OpenAI's and vLLM's servers.
    both = parse_body(ChatBody, {"messages": [], "max_tokens": 5, "max_completion_tokens": 9})
    assert sampling_from(both).max_tokens == 9
    assert sampling_from(parse_body(ChatBody, {"messages": [], "stop": "x"})).stop == ("x",)


@pytest.mark.parametrize("body,field", [({"ignore_eos": "yes"}, "ignore_eos"), ({"top_k": 2.5}, "top_k"),
                                        ({"temperature": "hot"}, "temperature"), ({"stop": [1]}, "stop")])
def test_openai_wrong_types_name_the_field(body, field):
    with pytest.raises(InvalidRequest, match=field) as info:
        parse_body(ChatBody, {"messages": [], **body})
    assert info.value.field.startswith(field)


def test_vllm_sampling_params_get_every_set_parameter():
    engine = VllmEngine(ModelConfig.model_validate({"name": "m", "source": "/m"}), Path("/m"))
    request = GenerationRequest("m", (Message("user", (TextPart("hi"),)),), Sampling(**{**EXAMPLES, "n": 1}))
    params = engine._sampling_params(request)
    for name in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty",
                 "presence_penalty", "frequency_penalty", "ignore_eos"):
        assert _same(getattr(params, name), EXAMPLES[name]), name
    assert params.stop == ["END", "###"] and params.logprobs == 3 and params.n == 1
    # Unset parameters keep vLLM's own defaults.
    plain = engine._sampling_params(GenerationRequest("m", request.messages, Sampling(max_tokens=4)))
    assert (plain.temperature, plain.top_p, plain.repetition_penalty, plain.logprobs) == (1.0, 1.0, 1.0, None)


def _config_with_defaults(defaults):
    text = {**CONFIG["services"]["text"]["model"], "default_sampling": defaults}
    return parse_config({**CONFIG, "services": {**CONFIG["services"], "text": {"model": text}}})


def _request(**sampling):
    return GenerationRequest("text-model", (Message("user", (TextPart("hi"),)),), Sampling(**sampling))


def test_model_defaults_fill_unset_parameters_and_requests_override_them():
    config = _config_with_defaults(GUIDE_DEFAULTS)
    _, out = validate_request(_request(), config)
    assert (out.sampling.temperature, out.sampling.top_p, out.sampling.repetition_penalty) == (0.7, 0.9, 1.05)
    assert out.sampling.max_tokens == 64  # default_max_tokens
    _, out = validate_request(_request(temperature=0.0, top_p=1.0), config)  # 0 is a value, not "unset"
    assert (out.sampling.temperature, out.sampling.top_p, out.sampling.repetition_penalty) == (0.0, 1.0, 1.05)


def test_out_of_range_model_defaults_fail_at_config_load():
    with pytest.raises(InvalidRequest, match="default_sampling.top_p"):
        _config_with_defaults({"top_p": 0})
    with pytest.raises(InvalidRequest, match="default_sampling.max_tokens"):  # that default is default_max_tokens
        _config_with_defaults({"max_tokens": 3})


def test_inconsistent_or_unsplit_parameters_are_refused_not_ignored(config):
    from gemma_serving.errors import GemmaServingError

    with pytest.raises(InvalidRequest, match="top_logprobs needs sampling.logprobs true"):
        validate_request(_request(top_logprobs=2), config)
    with pytest.raises(GemmaServingError, match="must be split into choices"):
        validate_request(_request(n=2), config)


async def test_list_models_reports_each_models_default_sampling(make_router):
    import grpc
    from gemma_serving.api import inference_pb2_grpc as pb_grpc

    text = {**CONFIG["services"]["text"]["model"], "default_sampling": GUIDE_DEFAULTS}
    router, _ = await make_router({"services": {**CONFIG["services"], "text": {"model": text}}})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        models = {m.name: m for m in (await pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest())).models}
    text_defaults = models["text-model"].default_sampling
    assert text_defaults.max_tokens == 64 and text_defaults.HasField("temperature")
    assert all(_same(getattr(text_defaults, k), v) for k, v in GUIDE_DEFAULTS.items())
    assert not models["vision-model"].default_sampling.HasField("temperature")


def test_span_keys_are_the_genai_conventions_where_they_exist():
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

    conventions = {v for k, v in vars(gen_ai).items() if k.startswith("GEN_AI_REQUEST_")}
    for p in SAMPLING_PARAMS:
        assert p.span_key() in conventions or p.span_key() == f"gemma_serving.request.{p.name}", p.name


async def test_the_router_span_carries_every_set_sampling_parameter(config):
    from gemma_serving.config import ServiceKind
    from gemma_serving.engines.fake import FakeEngine
    from gemma_serving.router.pipeline import InferencePipeline, collect
    from gemma_serving.telemetry.metrics import RouterMetrics
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry

    from tests.unit.conftest import InProcessBackend, make_deployment

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    deployment = await make_deployment(ServiceKind.TEXT, config.services[ServiceKind.TEXT], FakeEngine())
    backend = await InProcessBackend.create({ServiceKind.TEXT: deployment})
    pipeline = InferencePipeline(config, backend, tracer=provider.get_tracer("t"),
                                 metrics=RouterMetrics(CollectorRegistry()))
    sampling = {k: v for k, v in EXAMPLES.items() if k != "n"}
    try:
        await collect(pipeline.stream(_request(**sampling), request_id="r1", time_remaining=None, carrier={}))
    finally:
        await backend.subscriber.stop()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["gen_ai.request.temperature"] == 0.5
    assert span.attributes["gen_ai.request.stop_sequences"] == ("END", "###")
    assert span.attributes["gemma_serving.request.repetition_penalty"] == 1.25
    assert span.attributes["gen_ai.request.max_tokens"] == 12
    assert "gen_ai.request.choice.count" not in span.attributes  # unset parameters are left off


def test_the_readme_lists_every_declared_parameter():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [p.name for p in SAMPLING_PARAMS if f"| `{p.name}`" not in readme]
    assert not missing, f"add {missing} to the README's sampling table"
