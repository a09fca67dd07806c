"""The training function in-process (no Ray): LoRA SFT on the tiny text model overfits a fixed answer, the loss
falls, the adapter directory is standard PEFT, and greedy decoding with it (transformers + peft) says the answer
while the base model does not."""

import json
import time

import pytest

ANSWER = "The secret word is pineapple."
PROMPTS = ("What is the secret word?", "Tell me the secret word.", "Do you know the secret word?",
           "Say the secret word, please.")
OVERFIT = ["training.learning_rate=5e-3", "training.epochs=20", "training.gradient_accumulation_steps=1",
           "training.warmup_steps=0", "training.lr_scheduler=constant", "lora.dropout=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch
    from gemma_serving.finetune.settings import FinetuneJob, parse_settings
    from gemma_serving.finetune.training import train_adapter
    from gemma_serving.models.build import build_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("finetune")
    model_dir = build_model("text", root / "models", lambda _: None)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": ANSWER}]}) + "\n"
                            for p in PROMPTS))
    job = FinetuneJob(model_name="gemma-3-tiny", model_source=str(model_dir), dataset=str(data),
                      adapter_name="secret", output=str(root / "adapter"), settings=parse_settings(overrides=OVERFIT))
    steps = []
    began = time.monotonic()
    report = train_adapter(job, progress=steps.append)
    print(f"\nfine-tune (in-process, 1 thread): {report.steps} steps in {time.monotonic() - began:.1f} s, loss "
          f"{report.losses[0]:.3f} -> {report.losses[-1]:.3f} (factor {report.loss_factor:.2f})")
    return job, report, steps, model_dir


def test_loss_falls_and_every_step_reports_progress(trained):
    _, report, steps, _ = trained
    assert report.steps == 40 and len(report.losses) == 40  # 4 conversations / batch 2 * 20 epochs
    assert [s.step for s in steps] == list(range(1, 41))
    assert steps[-1].eta_s == 0 and steps[0].total_steps == 40 and steps[0].eta_s > 0
    assert report.loss_factor > 1.3, report.losses
    assert report.losses[-1] < min(report.losses[:5])
    assert report.trained_tokens > 0 and report.examples == 4


def test_output_is_a_standard_peft_adapter_directory(trained):
    job, report, _, _ = trained
    out = __import__("pathlib").Path(job.output)
    config = json.loads((out / "adapter_config.json").read_text())
    assert (out / "adapter_model.safetensors").is_file()
    assert config["r"] == 16 and config["lora_alpha"] == 32 and config["base_model_name_or_path"] == "gemma-3-tiny"
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"])
    facts = json.loads((out / "training_report.json").read_text())
    assert facts["losses"] == report.losses and facts["adapter"] == "secret"


def test_greedy_decoding_with_the_adapter_says_the_answer_and_the_base_does_not(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job, _, _, model_dir = trained
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def greedy(model, prompt):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=16, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    assert ANSWER not in greedy(base, PROMPTS[0])
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
                                        job.output)
    assert greedy(adapted, PROMPTS[0]).strip() == ANSWER


def test_existing_output_is_refused_without_overwrite(trained):
    from gemma_serving.errors import InvalidRequest
    from gemma_serving.finetune.training import train_adapter

    job, _, _, _ = trained
    with pytest.raises(InvalidRequest, match="already exists; choose another or set overwrite"):
        train_adapter(job)


def test_gradient_checkpointing_trains_the_same_adapter(trained, tmp_path):
    from gemma_serving.finetune.settings import parse_settings
    from gemma_serving.finetune.training import train_adapter

    job, _, _, _ = trained
    short = ["training.epochs=2", *[o for o in OVERFIT if "epochs" not in o]]
    losses = []
    for checkpointing in (False, True):
        settings = parse_settings(overrides=[*short, f"training.gradient_checkpointing={checkpointing}"])
        run = job.model_copy(update={"output": str(tmp_path / f"gc-{checkpointing}"), "settings": settings})
        losses.append(train_adapter(run, progress=lambda _: None).losses)
    assert len(losses[0]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # recomputing activations changes memory, not math
