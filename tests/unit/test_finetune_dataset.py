"""Fine-tuning data and settings: JSONL validation errors name the line, labels cover assistant turns only, the
settings default to the Gemma guide's recipe and take overrides."""

import json

import pytest
from gemma_serving.errors import InvalidRequest
from gemma_serving.finetune.dataset import IGNORE_INDEX, Conversation, load_conversations, tokenize_conversation
from gemma_serving.finetune.settings import GUIDE_TARGET_MODULES, load_settings, parse_settings

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]}


def write(tmp_path, *lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_valid_file_loads_with_line_numbers_and_skips_blank_lines(tmp_path):
    system = {"messages": [{"role": "system", "content": "Be brief."}, *GOOD["messages"],
                           {"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}]}
    conversations = load_conversations(write(tmp_path, GOOD, "", system))
    assert [c.line for c in conversations] == [1, 3]
    assert [m["role"] for m in conversations[1].messages] == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("bad, expected", [
    ("{not json", "data.jsonl:2: not valid JSON"),
    ("[1, 2]", 'data.jsonl:2: expected an object with a "messages" list'),
    ({"messages": []}, 'data.jsonl:2: "messages" must be a non-empty list'),
    ({"messages": GOOD["messages"], "extra": 1}, "data.jsonl:2: unknown keys extra"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "data.jsonl:2: messages[0].role must be one of system, "
                                                        "user, assistant, got 'robot'"),
    ({"messages": [{"role": "user", "content": "  "}]}, "data.jsonl:2: messages[0].content must be a non-empty"),
    ({"messages": [{"role": "user", "content": 3}]}, "data.jsonl:2: messages[0].content must be a non-empty"),
    ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages[0]: unknown keys name"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "data.jsonl:2: messages[0].role must be user"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "data.jsonl:2: messages[1].role must be assistant"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "system", "content": "c"}]}, "data.jsonl:2: messages[2].role must be user"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "data.jsonl:2: the conversation has no "
                                                                    "assistant message"),
])
def test_bad_lines_are_refused_naming_the_line_and_the_rule(tmp_path, bad, expected):
    with pytest.raises(InvalidRequest) as info:
        load_conversations(write(tmp_path, GOOD, bad))
    assert expected in info.value.message
    assert "only a question" not in info.value.message  # never the conversation's text


def test_missing_and_empty_files_are_clear(tmp_path):
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidRequest, match="holds no conversations"):
        load_conversations(write(tmp_path, ""))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from gemma_serving.models.build import build_model
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(build_model("text", tmp_path_factory.mktemp("models"), lambda _: None)))


def test_labels_cover_exactly_the_assistant_turns_and_their_end_of_turn(tokenizer):
    messages = ({"role": "user", "content": "Question one"}, {"role": "assistant", "content": "Answer one"},
                {"role": "user", "content": "Question two"}, {"role": "assistant", "content": "Answer two"})
    row = tokenize_conversation(tokenizer, Conversation(1, messages), max_length=512)
    assert row.input_ids == tokenizer(tokenizer.apply_chat_template(list(messages), tokenize=False),
                                      add_special_tokens=False)["input_ids"]  # the text the engine would see
    learned = [t for t, label in zip(row.input_ids, row.labels) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(row.input_ids, row.labels))
    text = tokenizer.decode(learned)
    assert text.count("<end_of_turn>") == 2
    assert "Answer one" in text and "Answer two" in text
    assert "Question" not in text and "user" not in text


def test_conversation_whose_answer_is_cut_by_max_length_names_the_line(tokenizer):
    messages = ({"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "short"})
    with pytest.raises(InvalidRequest, match="dataset line 7: no assistant token falls within training.max_length 16"):
        tokenize_conversation(tokenizer, Conversation(7, messages), max_length=16)


def test_settings_default_to_the_guide_recipe():
    s = parse_settings()
    assert (s.lora.rank, s.lora.alpha, s.lora.dropout, s.lora.target_modules) == (16, 32, 0.1, GUIDE_TARGET_MODULES)
    t = s.training
    assert (t.learning_rate, t.batch_size, t.gradient_accumulation_steps, t.epochs, t.warmup_steps, t.max_length) \
        == (2e-5, 2, 8, 3, 100, 2048)


def test_settings_file_and_dotted_overrides(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text("training: {epochs: 30}\nlora: {rank: 8}\n")
    s = load_settings(path, ["training.learning_rate=5e-3", "lora.dropout=0", "workers.use_gpu=false"])
    assert (s.training.epochs, s.lora.rank, s.training.learning_rate, s.lora.dropout) == (30, 8, 5e-3, 0)
    assert s.workers.use_gpu is False
    with pytest.raises(InvalidRequest, match="training.epochz: Extra inputs are not permitted"):
        parse_settings(overrides=["training.epochz=3"])
    with pytest.raises(InvalidRequest, match="lora.rank: Input should be greater than or equal to 1"):
        parse_settings(overrides=["lora.rank=0"])
    with pytest.raises(InvalidRequest, match="override must look like section.field=value"):
        parse_settings(overrides=["training.epochs"])
