"""The tiny LoRA adapter: deterministic PEFT files that change the tiny text model's outputs."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("peft")

from gemma_serving.models import resolve_model_source
from gemma_serving.models.build import MARKER_FILE, build_version
from gemma_serving.models.lora import LORA_RANK, TARGET_MODULES, build_text_lora


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def test_tiny_lora_source_builds_a_peft_adapter_once(cache):
    messages: list[str] = []
    path = resolve_model_source("tiny-lora://text", cache, progress=messages.append)
    assert path == cache / "text-lora"
    assert (path / MARKER_FILE).read_text().strip() == build_version()
    config = json.loads((path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["target_modules"]) == ("LORA", LORA_RANK,
                                                                             sorted(TARGET_MODULES))
    assert (path / "adapter_model.safetensors").stat().st_size < 2e6  # tiny
    assert any("text-lora: saving adapter" in m for m in messages)
    again: list[str] = []
    assert resolve_model_source("tiny-lora://text", cache, progress=again.append) == path
    assert again == []  # reused, not rebuilt


def test_adapter_bytes_are_deterministic(tmp_path):
    first = build_text_lora(tmp_path / "a", progress=lambda m: None)
    second = build_text_lora(tmp_path / "b", progress=lambda m: None)
    assert _digest(first) == _digest(second)


def test_adapter_changes_the_model_output(cache):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = resolve_model_source("tiny://text", cache, progress=lambda m: None)
    adapter_dir = resolve_model_source("tiny-lora://text", cache, progress=lambda m: None)
    ids = torch.tensor([[2, 10, 20, 30, 40, 50]])
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, adapter_dir).eval()
        lora_logits = adapted(ids).logits
        with adapted.disable_adapter():
            assert torch.equal(adapted(ids).logits, base_logits)
    # Non-trivial weights: the adapter moves the next-token distribution, not just rounding noise.
    assert (lora_logits - base_logits).abs().max() > 0.05
    assert not torch.equal(lora_logits.argmax(-1), base_logits.argmax(-1))
