"""Tiny Gemma checkpoints: deterministic tokenizer, chat templates, loadable with transformers."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from gemma_serving.models import build_models, resolve_model_source  # noqa: E402
from gemma_serving.models.build import MARKER_FILE, build_model, build_version  # noqa: E402
from gemma_serving.models.tokenizer import build_backend_tokenizer  # noqa: E402

SAMPLE = "Hello world! Bonjour le monde. 你好，世界 🙂\n\nEnd."
SPECIALS = [
    "<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>",
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",
    "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>",
]
TEXT_MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": [{"type": "text", "text": "Tell me a joke."}]},
]
IMAGE_MSGS = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
AUDIO_MSGS = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    messages: list[str] = []
    paths = build_models(tmp_path_factory.mktemp("models"), progress=messages.append)
    return paths, messages


def _tok(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_build_reports_progress_and_marks_version(built):
    paths, messages = built
    assert set(paths) == {"text", "vision", "gemma3n"}
    for step in ("text: building tokenizer", "text: saving text model", "vision: saving processor",
                 "gemma3n: saving gemma3n model"):
        assert step in messages
    for path in paths.values():
        assert (path / MARKER_FILE).read_text().strip() == build_version()
        assert sum(p.stat().st_size for p in path.rglob("*")) < 60e6  # tiny


def test_tokenizer_is_deterministic_and_gemma_like(built):
    paths, _ = built
    assert build_backend_tokenizer().to_str() == build_backend_tokenizer().to_str()
    assert (paths["text"] / "tokenizer.json").read_bytes() == (paths["vision"] / "tokenizer.json").read_bytes()
    tok, tok_n = _tok(paths["text"]), _tok(paths["gemma3n"])
    ids = tok(SAMPLE).input_ids
    assert ids == tok(SAMPLE).input_ids == tok_n(SAMPLE).input_ids
    assert ids[0] == tok.bos_token_id == 2 and tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert tok.decode(ids, skip_special_tokens=True) == SAMPLE  # byte fallback round-trips the emoji
    assert "▁world!" in tok.convert_ids_to_tokens(ids) or "▁world" in "".join(tok.convert_ids_to_tokens(ids))
    vocab = tok.get_vocab()
    for special in SPECIALS:
        assert tok(special, add_special_tokens=False).input_ids == [vocab[special]]
    for n in range(1, 5):
        assert "\n" * n in vocab
    assert tok("\n\n", add_special_tokens=False).input_ids == [vocab["\n\n"]]
    assert tok_n.image_token == "<image_soft_token>" and tok_n.audio_token == "<audio_soft_token>"
    assert tok_n.boi_token == "<start_of_image>" and tok_n.eoa_token == "<end_of_audio>"


def test_chat_template_text(built):
    tok = _tok(built[0]["text"])
    out = tok.apply_chat_template(TEXT_MSGS, tokenize=False, add_generation_prompt=True)
    assert out == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n"
    )
    no_gen = tok.apply_chat_template(TEXT_MSGS[1:2], tokenize=False)
    assert no_gen == "<bos><start_of_turn>user\nHi there<end_of_turn>\n"


def test_chat_template_image_and_audio(built):
    paths, _ = built
    g3, g3n = _tok(paths["vision"]), _tok(paths["gemma3n"])
    head, tail = "<bos><start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"
    assert g3.apply_chat_template(IMAGE_MSGS, tokenize=False, add_generation_prompt=True) == (
        f"{head}<start_of_image>What is this?{tail}")
    assert g3n.apply_chat_template(IMAGE_MSGS, tokenize=False, add_generation_prompt=True) == (
        f"{head}<image_soft_token>What is this?{tail}")
    assert g3n.apply_chat_template(AUDIO_MSGS, tokenize=False, add_generation_prompt=True) == (
        f"{head}<audio_soft_token>Transcribe.{tail}")
    with pytest.raises(Exception, match="audio"):
        g3.apply_chat_template(AUDIO_MSGS, tokenize=False)


def test_text_model_loads_and_generates(built):
    import torch
    from transformers import AutoModelForCausalLM

    path = built[0]["text"]
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert type(model).__name__ == "Gemma3ForCausalLM" and not info["missing_keys"]
    tok = _tok(path)
    ids = tok.apply_chat_template(TEXT_MSGS[1:2], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[-1] == ids["input_ids"].shape[-1] + 3


@pytest.mark.parametrize(
    ("name", "model_cls", "processor_cls"),
    [("vision", "Gemma3ForConditionalGeneration", "Gemma3Processor"),
     ("gemma3n", "Gemma3nForConditionalGeneration", "Gemma3nProcessor")],
)
def test_multimodal_model_and_processor_load(built, name, model_cls, processor_cls):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = built[0][name]
    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert type(model).__name__ == model_cls
    assert not info["missing_keys"] and not info["unexpected_keys"]
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == processor_cls
    if name == "vision":  # vLLM's SigLIP loader wants vision_tower.vision_model.*
        index = json.loads((path / "config.json").read_text())
        assert index["mm_tokens_per_image"] == processor.image_seq_length == 16
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "pt") as f:
            vision_keys = [k for k in f.keys() if "vision_tower." in k]
        assert vision_keys and all("vision_tower.vision_model." in k for k in vision_keys)
    else:
        assert processor.audio_seq_length == 188 and processor.image_seq_length == 256


def test_build_is_idempotent_and_rebuilds_stale(built):
    paths, _ = built
    cache = paths["text"].parent
    messages: list[str] = []
    assert build_models(cache, progress=messages.append) == paths
    assert messages == []  # nothing rebuilt
    (paths["text"] / MARKER_FILE).write_text("stale\n")
    assert build_model("text", cache, progress=messages.append) == paths["text"]
    assert any("building tiny checkpoint" in m for m in messages)
    assert (paths["text"] / MARKER_FILE).read_text().strip() == build_version()


def test_concurrent_builders_build_once(tmp_path):
    messages: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: build_model("text", tmp_path, messages.append), range(2)))
    assert results[0] == results[1] == tmp_path / "text"
    assert sum("building tiny checkpoint" in m for m in messages) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_resolve_model_source(built, tmp_path):
    paths, _ = built
    assert resolve_model_source("tiny://vision", paths["vision"].parent, progress=lambda m: None) == paths["vision"]
    assert resolve_model_source("~/some/model") == Path.home() / "some" / "model"
    assert resolve_model_source(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError):
        resolve_model_source("tiny://nope", tmp_path)
