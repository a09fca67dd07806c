"""A tiny, deterministically trained tokenizer that behaves like GemmaTokenizer.

Vocabulary layout (the same for every model variant, ``VOCAB_SIZE`` ids in all):

* ``0..4``: ``<pad> <eos> <bos> <unk> <mask>`` (Gemma's ids)
* then the chat / multimodal special tokens that live in Gemma's text vocabulary,
  the 256 byte-fallback tokens ``<0x00>..<0xFF>``, the newline runs
  ``"\\n" .. "\\n\\n\\n\\n"`` (vLLM's Gemma 3 processors look them up by string),
  the BPE tokens learned from :mod:`.corpus`, and ``<unusedN>`` filler up to
  ``TEXT_VOCAB_SIZE``;
* ``[TEXT_VOCAB_SIZE, +128)``: Gemma 3n's vision "hard token" range
  (``<end_of_image>``, ``<image_soft_token>``, filler);
* ``[TEXT_VOCAB_SIZE + 128, +256)``: Gemma 3n's audio range
  (``<end_of_audio>``, ``<audio_soft_token>``, filler).

That mirrors the real Gemma 3n layout (``eoi``/``image`` right after the text
vocabulary, ``eoa``/``audio`` right after the vision range), and is harmless
for Gemma 3, whose image soft token also sits after the text vocabulary.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .corpus import training_corpus

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

PAD, EOS, BOS, UNK, MASK = "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
BOI, EOI, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
BOA, EOA, AUDIO_TOKEN = "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"

TEXT_VOCAB_SIZE = 4096
MM_RANGE = 128  # Gemma 3n: vocab_size of each of embed_vision / embed_audio
VISION_VOCAB_OFFSET = TEXT_VOCAB_SIZE
AUDIO_VOCAB_OFFSET = TEXT_VOCAB_SIZE + MM_RANGE
VOCAB_SIZE = TEXT_VOCAB_SIZE + 2 * MM_RANGE
NEWLINES = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")

_HEAD_SPECIALS = (PAD, EOS, BOS, UNK, MASK, START_OF_TURN, END_OF_TURN, BOI, BOA)
_VISION_SPECIALS = (EOI, IMAGE_TOKEN)
_AUDIO_SPECIALS = (EOA, AUDIO_TOKEN)

# Placeholder that the chat template renders for an image / audio part.  vLLM 0.32
# replaces these strings: gemma3_mm targets <start_of_image> (the processor's
# boi_token); gemma3n_mm targets <image_soft_token> / <audio_soft_token> (the
# processor's image_token / audio_token) -- exactly what the official templates emit.
PLACEHOLDERS = {
    "gemma3": {"image": BOI, "audio": None},
    "gemma3n": {"image": IMAGE_TOKEN, "audio": AUDIO_TOKEN},
}

_CHAT_TEMPLATE = """{{- bos_token -}}
{%- macro render(content) -%}
{%- if content is string -%}{{ content | trim }}
{%- elif content is iterable -%}
{%- for part in content -%}
{%- if part['type'] == 'text' -%}{{ part['text'] | trim }}
{%- elif part['type'] == 'image' -%}{{ '@IMAGE@' }}
{%- elif part['type'] == 'audio' -%}@AUDIO@
{%- else -%}{{ raise_exception('Unsupported content part type: ' ~ part['type']) }}
{%- endif -%}
{%- endfor -%}
{%- else -%}{{ raise_exception('Invalid content type') }}
{%- endif -%}
{%- endmacro -%}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = render(messages[0]['content']) + '\\n\\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}
{{- render(message['content']) -}}
{{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}
"""


def chat_template(variant: str) -> str:
    """Return the Gemma-style Jinja chat template for ``variant`` ("gemma3" or "gemma3n")."""
    marks = PLACEHOLDERS[variant]
    audio = (
        "{{ '" + marks["audio"] + "' }}"
        if marks["audio"]
        else "{{ raise_exception('This model does not accept audio input') }}"
    )
    return _CHAT_TEMPLATE.replace("@IMAGE@", marks["image"]).replace("@AUDIO@", audio)


def _train_bpe(vocab_budget: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Train BPE on the built-in corpus; return (tokens in id order, merges)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Training-only pre-tokenizer: keeps learned pieces inside "▁word" units.
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_budget, min_frequency=1, show_progress=False)
    # Newline runs are added by hand (with top-priority merges), keep them out of training.
    tok.train_from_iterator([t.replace("\n", " ") for t in training_corpus()], trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(state["vocab"].items(), key=lambda kv: kv[1])]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return tokens, merges


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Assemble the full, fixed-size vocabulary and merge list."""
    head = list(_HEAD_SPECIALS) + [f"<0x{b:02X}>" for b in range(256)] + list(NEWLINES)
    budget = TEXT_VOCAB_SIZE - len(head)
    learned, learned_merges = _train_bpe(budget)
    seen = set(head)
    tokens = head + [t for t in learned if t not in seen]
    tokens = tokens[:TEXT_VOCAB_SIZE]
    tokens += [f"<unused{i}>" for i in range(TEXT_VOCAB_SIZE - len(tokens))]
    for offset_specials in (_VISION_SPECIALS, _AUDIO_SPECIALS):
        kind = "vision" if offset_specials is _VISION_SPECIALS else "audio"
        tokens += list(offset_specials)
        tokens += [f"<unused_{kind}{i}>" for i in range(MM_RANGE - len(offset_specials))]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, "duplicate tokens in the tiny vocabulary"
    newline_merges = [("\n", "\n"), ("\n\n", "\n"), ("\n\n", "\n\n")]
    merges = newline_merges + [m for m in learned_merges if m[0] + m[1] in vocab]
    return vocab, merges


def build_backend_tokenizer():
    """Build the ``tokenizers.Tokenizer`` (GemmaTokenizer pipeline: no pre-split, ▁ for spaces)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = _vocab_and_merges()
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    specials = _HEAD_SPECIALS + _VISION_SPECIALS + _AUDIO_SPECIALS
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return tok


def build_tokenizer(variant: str = "gemma3") -> "PreTrainedTokenizerFast":
    """Return a transformers fast tokenizer with Gemma's special tokens and chat template.

    ``variant`` selects the chat template: "gemma3" (images as ``<start_of_image>``,
    no audio) or "gemma3n" (``<image_soft_token>`` / ``<audio_soft_token>``).
    """
    from transformers import PreTrainedTokenizerFast

    if variant not in PLACEHOLDERS:
        raise ValueError(f"unknown tokenizer variant {variant!r}")
    named = {
        "boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN,
        "boa_token": BOA, "eoa_token": EOA, "audio_token": AUDIO_TOKEN,
        "sot_token": START_OF_TURN, "eot_token": END_OF_TURN,
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=build_backend_tokenizer(),
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD, mask_token=MASK,
        add_bos_token=True, add_eos_token=False, padding_side="left",
        model_specific_special_tokens=named,
        chat_template=chat_template(variant),
        model_max_length=8192,
    )
