"""One declaration per sampling parameter, and everything derived from the declarations.

A parameter is declared once in SAMPLING_PARAMS (name, type, range, what vLLM does when it is unset, its OpenAI
names, how it maps to vLLM's `SamplingParams`). From that table come: the domain type `Sampling`, the per-model
defaults in config (`SamplingDefaults`), the gRPC and OpenAI conversions, the range checks and the vLLM conversion.
Adding a parameter is the proto field (same name, in `SamplingParams`) plus one entry here.

The names are the proto field names; the OpenAI surface accepts the same names (plus `openai_names` aliases).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from gemma_serving.errors import InvalidRequest

if TYPE_CHECKING:  # config imports this module for SamplingDefaults; only the type hints point back
    from gemma_serving.config import ModelConfig, RequestLimits

#: A bound that depends on the model or the request limits: f(model, limits) -> number.
ContextBound = Callable[["ModelConfig", "RequestLimits"], float]

_INT64 = 2**63 - 1


@dataclass(frozen=True)
class SamplingParam:
    """One sampling parameter. `kind` is int, float, bool or tuple (a list of strings)."""

    name: str
    kind: type
    description: str
    #: Range of the value (of the count, for a tuple); `low_open` makes the lower bound exclusive.
    low: float | None = None
    high: float | ContextBound | None = None
    low_open: bool = False
    #: For a tuple: the allowed length of each string, 1..item_chars.
    item_chars: ContextBound | None = None
    #: What vLLM uses when neither the request nor the model's defaults set it (None: nothing, e.g. no seed);
    #: stated in the config schema's descriptions.
    engine_default: Any = None
    #: Other names the OpenAI surface accepts for it, preferred first (e.g. max_completion_tokens).
    openai_names: tuple[str, ...] = ()
    #: May a model's config set a default (max_tokens has its own: default_max_tokens).
    defaultable: bool = True
    #: The vLLM SamplingParams fields for a set value; None maps to the field of the same name.
    to_vllm: Callable[[Any, Any], dict[str, Any]] | None = None
    #: The router span's attribute for it: the OpenTelemetry GenAI key where one exists, else our own.
    span_attribute: str = ""

    def span_key(self) -> str:
        return self.span_attribute or f"gemma_serving.request.{self.name}"

    def range_text(self, model: ModelConfig | None = None, limits: RequestLimits | None = None) -> str:
        """The allowed range in words, e.g. "0..2", "(0, 1]" or "true or false"."""
        if self.kind is bool:
            return "true or false"
        high = self._bound(self.high, model, limits)
        if self.kind is tuple:
            chars = self._bound(self.item_chars, model, limits)
            return f"at most {_num(high)} strings of 1..{_num(chars)} characters"
        if self.low_open:
            return f"in ({_num(self.low)}, {_num(high)}]" if high is not None else f"> {_num(self.low)}"
        return f"{_num(self.low)}..{_num(high)}" if high is not None else f">= {_num(self.low)}"

    @staticmethod
    def _bound(bound, model, limits):
        """A number, or None for no bound (or a context bound asked without its context)."""
        if callable(bound):
            return bound(model, limits) if model is not None and limits is not None else None
        return bound


def _num(value) -> str:
    if value is None:
        return "the configured limit"
    return str(int(value)) if float(value).is_integer() else str(value)


def _logprobs_to_vllm(value: bool, s: Any) -> dict[str, Any]:
    # vLLM's `logprobs` is the number of alternatives per token; 0 returns the sampled token's logprob only.
    return {"logprobs": s.top_logprobs or 0} if value else {}


SAMPLING_PARAMS: tuple[SamplingParam, ...] = (
    SamplingParam("max_tokens", int, "Most tokens to generate.", low=1, high=lambda m, _: m.max_output_tokens,
                  openai_names=("max_completion_tokens",), defaultable=False,
                  span_attribute="gen_ai.request.max_tokens"),
    SamplingParam("temperature", float, "Sampling temperature; 0 is greedy.", low=0, high=2, engine_default=1.0,
                  span_attribute="gen_ai.request.temperature"),
    SamplingParam("top_p", float, "Nucleus sampling: smallest token set with this probability mass.", low=0,
                  high=1, low_open=True, engine_default=1.0,
                  span_attribute="gen_ai.request.top_p"),
    SamplingParam("top_k", int, "Sample from the k most likely tokens; 0 or -1 disables it.", low=-1,
                  engine_default=0,
                  span_attribute="gen_ai.request.top_k"),
    SamplingParam("min_p", float, "Drop tokens less likely than min_p times the most likely one.", low=0, high=1,
                  engine_default=0.0),
    SamplingParam("seed", int, "Seed for reproducible sampling.", low=-_INT64 - 1, high=_INT64,
                  span_attribute="gen_ai.request.seed"),
    SamplingParam("stop", tuple, "Generation stops before any of these strings (not included in the output).",
                  high=lambda _, lim: lim.max_stop_sequences, item_chars=lambda _, lim: lim.max_stop_chars,
                  to_vllm=lambda v, _: {"stop": list(v)},
                  span_attribute="gen_ai.request.stop_sequences"),
    SamplingParam("repetition_penalty", float, "Penalty on tokens already in the prompt or output; 1 is none, "
                  "above 1 discourages repeats.", low=0, low_open=True, engine_default=1.0),
    SamplingParam("presence_penalty", float, "Penalty on tokens that already appeared in the output.", low=-2,
                  high=2, engine_default=0.0,
                  span_attribute="gen_ai.request.presence_penalty"),
    SamplingParam("frequency_penalty", float, "Penalty proportional to how often a token appeared in the output.",
                  low=-2, high=2, engine_default=0.0,
                  span_attribute="gen_ai.request.frequency_penalty"),
    SamplingParam("logprobs", bool, "Return the log probability of each generated token.", engine_default=False,
                  to_vllm=_logprobs_to_vllm),
    SamplingParam("top_logprobs", int, "With logprobs: also return this many most likely alternatives per token.",
                  low=0, high=20, engine_default=0, to_vllm=lambda v, _: {}),
    # Never passed to vLLM: an engine request generates one sequence (n > 1 is refused by validation for now).
    SamplingParam("n", int, "Number of choices to generate for the request.", low=1, high=8, engine_default=1,
                  to_vllm=lambda v, _: {},
                  span_attribute="gen_ai.request.choice.count"),
    SamplingParam("ignore_eos", bool, "Keep generating past the end-of-turn token until max_tokens (vLLM's "
                  "extension, for fixed-length benchmark requests); stop strings still apply.",
                  engine_default=False),
)
PARAMS_BY_NAME = {p.name: p for p in SAMPLING_PARAMS}

#: The domain type: one optional field per declared parameter (None: unset), in declaration order, so
#: Sampling(64) is max_tokens=64. Frozen and picklable (it travels to the replicas).
Sampling = dataclasses.make_dataclass(
    "Sampling", [(p.name, Optional[p.kind], dataclasses.field(default=None)) for p in SAMPLING_PARAMS],
    frozen=True, slots=True,
)
Sampling.__module__ = __name__
Sampling.__doc__ = "Sampling settings of one request; None means unset (the model's default, then vLLM's)."


def check_value(param: SamplingParam, value: Any, where: str) -> Any:
    """`value` as `param.kind`, or InvalidRequest naming the field when its type is wrong (JSON gives 2.0 for 2)."""
    if param.kind is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(f"{where} must be true or false, got {str(value)[:32]}", field=where)
        return value
    if param.kind is tuple:
        items = (value,) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise InvalidRequest(f"{where} must be a string or a list of strings", field=where)
        return tuple(items) or None
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (param.kind is int and not (math.isfinite(value) and float(value).is_integer())):
        article = "an integer" if param.kind is int else "a number"
        raise InvalidRequest(f"{where} must be {article}, got {str(value)[:32]}", field=where)
    return param.kind(value)


def resolve(request: Any, defaults: Any, model: ModelConfig, limits: RequestLimits) -> Any:
    """The request's sampling with unset fields taken from the model's defaults, every set value range-checked.

    Raises InvalidRequest naming the field (sampling.<name>), the allowed range and the value sent."""
    values = {}
    for p in SAMPLING_PARAMS:
        value = getattr(request, p.name)
        if value is None and p.defaultable:
            value = getattr(defaults, p.name)
            value = tuple(value) if isinstance(value, list) else value  # config lists: stop
        if value is None and p.name == "max_tokens":
            value = model.default_max_tokens
        if value is not None:
            check_range(p, value, model, limits)
        values[p.name] = value
    return Sampling(**values)


def check_range(p: SamplingParam, value: Any, model: ModelConfig | None, limits: RequestLimits | None) -> None:
    """InvalidRequest naming sampling.<name>, the range and the value when `value` is out of range (model and limits
    are needed only for bounds that depend on them)."""
    where = f"sampling.{p.name}"
    allowed = p.range_text(model, limits)
    suffix = f" for model {model.name}" if callable(p.high) and p.kind is not tuple else ""
    if p.kind is bool:
        return
    if p.kind is tuple:
        high, chars = p._bound(p.high, model, limits), p._bound(p.item_chars, model, limits)
        if len(value) > high:
            raise InvalidRequest(f"{where} may hold at most {high} strings, got {len(value)}", field=where)
        for i, item in enumerate(value):
            if not 1 <= len(item) <= chars:
                raise InvalidRequest(f"{where}[{i}] must be 1..{chars} characters, got {len(item)}",
                                     field=f"{where}[{i}]")
        return
    high = p._bound(p.high, model, limits)
    ok = math.isfinite(value)
    ok = ok and (value > p.low if p.low_open else value >= p.low) if p.low is not None else ok
    ok = ok and (high is None or value <= high)
    if not ok:
        raise InvalidRequest(f"{where} must be {allowed}{suffix}, got {value}", field=where)


def to_vllm_fields(s: Any) -> dict[str, Any]:
    """Keyword arguments for vLLM's SamplingParams: only the set parameters, so vLLM's own defaults stay."""
    fields: dict[str, Any] = {}
    for p in SAMPLING_PARAMS:
        value = getattr(s, p.name)
        if value is not None:
            fields.update(p.to_vllm(value, s) if p.to_vllm else {p.name: value})
    return fields
