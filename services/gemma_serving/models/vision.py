"""Tiny Gemma 3 vision-language checkpoint (``Gemma3ForConditionalGeneration``).

A 64-px SigLIP tower with 8-px patches (8x8 patches, pooled to 4x4 = 16 image tokens)
in front of the tiny Gemma 3 text model, saved with its ``Gemma3Processor``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import tokenizer as tk
from .text import gemma3_text_kwargs, save_generation_config, save_model, seed_everything

IMAGE_SIZE = 64
PATCH_SIZE = 8
MM_TOKENS_PER_IMAGE = 16


def rename_siglip_keys(out_dir: Path) -> int:
    """Rename SigLIP weights to the layout vLLM 0.32 expects; return how many keys changed.

    transformers 5.19 saves the tower as ``*.vision_tower.{embeddings,encoder,post_layernorm}.*``
    while vLLM's ``SiglipVisionModel`` loader (and older checkpoints) use
    ``*.vision_tower.vision_model.*``.  transformers still loads the renamed file.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(out_dir) / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    renamed, changed = {}, 0
    for key, value in tensors.items():
        head, sep, tail = key.partition("vision_tower.")
        if sep and not tail.startswith("vision_model."):
            key, changed = f"{head}vision_tower.vision_model.{tail}", changed + 1
        renamed[key] = value
    if changed:
        save_file(dict(sorted(renamed.items())), str(path), metadata=metadata)
    return changed


def build_image_processor():
    """Return the ``Gemma3ImageProcessor`` for 64-px images (no pan-and-scan)."""
    from transformers import Gemma3ImageProcessor

    return Gemma3ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )


def build_vision(out_dir: Path, progress: Callable[[str], None] = print) -> Path:
    """Build the tiny ``Gemma3ForConditionalGeneration`` checkpoint + processor into ``out_dir``."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress("vision: building tokenizer")
    tokenizer = tk.build_tokenizer("gemma3")
    vocab = tokenizer.get_vocab()
    progress("vision: initialising Gemma3ForConditionalGeneration")
    seed_everything()
    vision_config = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3,
        vision_use_head=False, layer_norm_eps=1e-6,
    )
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**gemma3_text_kwargs()),
        vision_config=vision_config,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=vocab[tk.BOI],
        eoi_token_index=vocab[tk.EOI],
        image_token_index=vocab[tk.IMAGE_TOKEN],
        tie_word_embeddings=True,
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    model = Gemma3ForConditionalGeneration(config)
    progress("vision: saving vision model")
    save_model(model, out_dir)
    progress("vision: renaming SigLIP weight keys for vLLM")
    rename_siglip_keys(out_dir)
    progress("vision: saving processor")
    processor = Gemma3Processor(
        image_processor=build_image_processor(),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(out_dir)
    save_generation_config(out_dir)
    return out_dir
