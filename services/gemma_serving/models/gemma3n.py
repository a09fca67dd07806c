"""Tiny Gemma 3n checkpoint (``Gemma3nForConditionalGeneration``) with audio and vision towers.

* text: 4 layers of hidden 128 (AltUp, LAuReL, per-layer inputs and KV sharing kept on);
* audio: a 2-layer Conformer of width 64 fed by the standard 128-bin mel feature extractor,
  188 soft tokens per clip (vLLM 0.32 hard-codes ``TOKENS_PER_AUDIO = 188``);
* vision: timm's MobileNetV5-300m with ``channel_multiplier=0.125`` (its fusion adapter
  still emits 2048 channels), fed 256-px images: the stride-16 feature map is 16x16,
  so an image is the 256 soft tokens vLLM hard-codes (``TOKENS_PER_IMAGE = 256``)
  at a ninth of the cost of Gemma 3n's native 768 px.

Needs ``timm`` (``pip install --no-deps timm``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import tokenizer as tk
from .text import MAX_POSITIONS, SLIDING_WINDOW, save_generation_config, save_model, seed_everything

IMAGE_SIZE = 256
IMAGE_TOKENS = 256
AUDIO_TOKENS = 188
VISION_CHANNEL_MULTIPLIER = 0.125


def build_config():
    """Return the tiny ``Gemma3nConfig`` (token ids taken from the shared tiny vocabulary)."""
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig

    vocab = tk.build_backend_tokenizer().get_vocab()
    text = Gemma3nTextConfig(
        vocab_size=tk.VOCAB_SIZE,
        vocab_size_per_layer_input=tk.TEXT_VOCAB_SIZE,
        hidden_size=128,
        hidden_size_per_layer_input=16,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2,
        laurel_rank=8,
        activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0],
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    audio = Gemma3nAudioConfig(
        vocab_size=tk.MM_RANGE,
        vocab_offset=tk.AUDIO_VOCAB_OFFSET,
        input_feat_size=128,
        hidden_size=64,
        conf_num_attention_heads=2,
        conf_num_hidden_layers=2,
        sscp_conv_channel_size=[16, 8],
    )
    vision = Gemma3nVisionConfig(
        architecture="mobilenetv5_300m_enc",
        model_args={"channel_multiplier": VISION_CHANNEL_MULTIPLIER},
        hidden_size=2048,
        vocab_size=tk.MM_RANGE,
        vocab_offset=tk.VISION_VOCAB_OFFSET,
    )
    config = Gemma3nConfig(
        text_config=text,
        vision_config=vision,
        audio_config=audio,
        audio_soft_tokens_per_image=AUDIO_TOKENS,
        vision_soft_tokens_per_image=IMAGE_TOKENS,
        boi_token_id=vocab[tk.BOI],
        eoi_token_id=vocab[tk.EOI],
        image_token_id=vocab[tk.IMAGE_TOKEN],
        boa_token_id=vocab[tk.BOA],
        eoa_token_id=vocab[tk.EOA],
        audio_token_id=vocab[tk.AUDIO_TOKEN],
    )
    config.architectures = ["Gemma3nForConditionalGeneration"]
    return config


def build_processor(tokenizer):
    """Return the ``Gemma3nProcessor`` (mel feature extractor + 256-px SigLIP image processor)."""
    from transformers import Gemma3nAudioFeatureExtractor, Gemma3nProcessor, SiglipImageProcessor

    image_processor = SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_normalize=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Gemma3nProcessor(
        feature_extractor=Gemma3nAudioFeatureExtractor(),
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        audio_seq_length=AUDIO_TOKENS,
        image_seq_length=IMAGE_TOKENS,
    )


def build_gemma3n(out_dir: Path, progress: Callable[[str], None] = print) -> Path:
    """Build the tiny ``Gemma3nForConditionalGeneration`` checkpoint + processor into ``out_dir``."""
    from transformers import Gemma3nForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress("gemma3n: building tokenizer")
    tokenizer = tk.build_tokenizer("gemma3n")
    progress("gemma3n: initialising Gemma3nForConditionalGeneration (audio + MobileNetV5 towers)")
    seed_everything()
    model = Gemma3nForConditionalGeneration(build_config())
    progress("gemma3n: saving gemma3n model")
    save_model(model, out_dir)
    progress("gemma3n: saving processor")
    build_processor(tokenizer).save_pretrained(out_dir)
    save_generation_config(out_dir)
    return out_dir
