"""Tiny text-only Gemma 3 checkpoint (``Gemma3ForCausalLM``), plus helpers shared by the
multimodal builders (seeding, text-config sizes, generation config)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import tokenizer as tk

SEED = 1234
SLIDING_WINDOW = 512
MAX_POSITIONS = 4096


def seed_everything(seed: int = SEED) -> None:
    """Seed torch / numpy / random so that weight initialisation is reproducible."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gemma3_text_kwargs() -> dict[str, Any]:
    """Return keyword arguments for a tiny ``Gemma3TextConfig`` (also used inside Gemma 3 VLM)."""
    return dict(
        vocab_size=tk.VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        query_pre_attn_scalar=64,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )


def eos_token_ids() -> list[int]:
    """Token ids that end a generation: ``<eos>`` and ``<end_of_turn>`` (as in real Gemma)."""
    vocab = tk.build_backend_tokenizer().get_vocab()
    return [vocab[tk.EOS], vocab[tk.END_OF_TURN]]


def save_generation_config(out_dir: Path) -> None:
    """Write Gemma-like ``generation_config.json`` (greedy-friendly defaults, two EOS ids)."""
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=2, pad_token_id=0, eos_token_id=eos_token_ids(),
        do_sample=True, top_k=64, top_p=0.95,
    ).save_pretrained(out_dir)


def save_model(model: Any, out_dir: Path) -> None:
    """Save ``model`` as bfloat16 safetensors (one shard) into ``out_dir``."""
    import torch

    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="1GB")


def build_text(out_dir: Path, progress: Callable[[str], None] = print) -> Path:
    """Build the tiny ``Gemma3ForCausalLM`` checkpoint with tokenizer into ``out_dir``."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress("text: building tokenizer")
    tokenizer = tk.build_tokenizer("gemma3")
    progress("text: initialising Gemma3ForCausalLM")
    seed_everything()
    config = Gemma3TextConfig(**gemma3_text_kwargs())
    config.architectures = ["Gemma3ForCausalLM"]
    model = Gemma3ForCausalLM(config)
    progress("text: saving text model")
    save_model(model, out_dir)
    tokenizer.save_pretrained(out_dir)
    save_generation_config(out_dir)
    return out_dir
