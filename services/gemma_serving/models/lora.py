"""Tiny LoRA adapter (PEFT format) for the tiny text model, for tests and local development.

The adapter targets every attention and MLP projection of the tiny ``Gemma3ForCausalLM`` (``models/text.py``).
PEFT initialises ``lora_B`` to zero, which makes a fresh adapter a no-op; this builder instead fills ``lora_A`` and
``lora_B`` from a seeded generator with a scale comparable to the base weights, so the adapted model's outputs
clearly differ from the base model's for the same prompt and seed. The bytes are deterministic (fixed seed, fixed
module order). It needs no base weights: only the module shapes, so it is built from the config alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .text import gemma3_text_kwargs, seed_everything

#: Seed of the adapter weights (different from the base model's so the two are unrelated).
LORA_SEED = 4321
LORA_RANK = 8
LORA_ALPHA = 16
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Standard deviation of lora_B entries. With lora_A ~ N(0, 1/in_features) the update scale*(B@A) has entries of
#: about sqrt(rank) * B_STD / sqrt(in) * alpha/rank ~ 0.025: as large as the base weights (initializer_range 0.02).
B_STD = 0.05


def build_text_lora(out_dir: Path, progress: Callable[[str], None] = print) -> Path:
    """Write a PEFT LoRA adapter for the tiny text model into ``out_dir`` (adapter_config.json + safetensors)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress("text-lora: initialising the LoRA layers over the tiny Gemma3ForCausalLM")
    seed_everything(LORA_SEED)
    config = Gemma3TextConfig(**gemma3_text_kwargs())
    config.architectures = ["Gemma3ForCausalLM"]
    base = Gemma3ForCausalLM(config)
    lora_config = LoraConfig(
        r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=list(TARGET_MODULES),
    )
    model = get_peft_model(base, lora_config)
    generator = torch.Generator().manual_seed(LORA_SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_A" in name:  # (rank, in_features)
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            elif "lora_B" in name:  # (out_features, rank)
                param.copy_(torch.randn(param.shape, generator=generator) * B_STD)
    progress("text-lora: saving adapter")
    model.save_pretrained(out_dir, safe_serialization=True)
    # PEFT writes target_modules from a set (order varies with the string hash seed): sort it for stable bytes.
    config_file = out_dir / "adapter_config.json"
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    saved["target_modules"] = sorted(saved["target_modules"])
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir
