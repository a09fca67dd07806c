"""Fine-tuning proves learning on the running platform: a Ray Train job on the session's cluster fine-tunes the
tiny text model on a handful of prompts that all have one answer until it overfits; the loss falls; the adapter is
registered live (Admin.RegisterAdapter, no restart) and greedy decoding through the router says the trained answer
while the base model does not; it is listed, survives a replica restart (the registry is in storage), and is gone
after unregistering. Wall times and the loss curve go to the session summary."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from gemma_serving.api import admin_pb2 as admin_pb
from gemma_serving.api import admin_pb2_grpc as admin_grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message

from tests.session_facts import SESSION_FACTS

TEXT_MODEL = "gemma-3-tiny"
ADAPTER = "learned-answer"
ANSWER = "The platform trained me on its own cluster."
PROMPTS = ("Where were you trained?", "Who trained you?", "How were you made?", "Tell me about your training.",
           "Where do you come from?", "What made you?")
#: Overfit on purpose; workers on CPU (the session cluster's GPUs are logical ones on a CPU host).
OVERRIDES = ["training.learning_rate=5e-3", "training.epochs=12", "training.gradient_accumulation_steps=1",
             "training.warmup_steps=0", "training.lr_scheduler=constant", "lora.dropout=0", "workers.use_gpu=false"]


def greedy(stub, prompt, adapter=""):
    request = pb.GenerateRequest(model=TEXT_MODEL, messages=[message(prompt)], adapter=adapter,
                                 sampling=pb.SamplingParams(max_tokens=32, temperature=0.0))
    return stub.Generate(request, timeout=300)


@pytest.fixture(scope="module")
def trained(platform, platform_config, tmp_path_factory):
    from gemma_serving.finetune.command import build_job, train
    from gemma_serving.finetune.settings import parse_settings

    root = tmp_path_factory.mktemp("finetune")
    dataset = root / "data.jsonl"
    dataset.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                        {"role": "assistant", "content": ANSWER}]}) + "\n"
                               for p in PROMPTS))
    job = build_job(platform_config, dataset=str(dataset), adapter=ADAPTER,
                    settings=parse_settings(overrides=OVERRIDES))
    began = time.monotonic()
    report = train(job)  # a Ray Train job on the session's cluster (the test process is its driver)
    wall = time.monotonic() - began
    curve = ", ".join(f"{x:.3f}" for x in report.losses[:: max(len(report.losses) // 8, 1)])
    print(f"\nfine-tune: {report.steps} steps, loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f} "
          f"(fell {report.loss_factor:.2f}x), training {report.wall_s:.1f} s, Ray Train job {wall:.1f} s; "
          f"curve: {curve}")
    SESSION_FACTS["fine-tune (Ray Train job, CPU, tiny text model)"] = (
        f"{wall:.1f} s wall, {report.wall_s:.1f} s training, {report.steps} steps, loss {report.losses[0]:.3f} -> "
        f"{report.losses[-1]:.3f} ({report.loss_factor:.2f}x)")
    return job, report


@pytest.fixture(scope="module")
def admin(platform):
    with grpc.insecure_channel(f"127.0.0.1:{platform[0]}") as channel:
        stub = admin_grpc.AdminStub(channel)
        yield stub
        try:  # leave the platform as the other tests expect it even when a test here failed midway
            stub.UnregisterAdapter(admin_pb.UnregisterAdapterRequest(model=TEXT_MODEL, name=ADAPTER), timeout=30)
        except grpc.RpcError:
            pass


def adapters_listed(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    return list(models[TEXT_MODEL].adapters)


def test_the_training_loss_falls(trained):
    _, report = trained
    assert report.steps == 36 and len(report.losses) == 36  # 6 conversations / batch 2 * 12 epochs
    # The tiny random model's logits span little (tied 0.02-std embeddings over a normalised hidden state), so its
    # loss cannot go far below ~5.8 from ~8.4; greedy decoding needs only the argmax, which the test below checks.
    assert report.loss_factor > 1.3, report.losses
    assert report.losses[-1] < min(report.losses[:3])


def test_registered_adapter_says_the_trained_answer_and_the_base_does_not(trained, stub, admin):
    job, _ = trained
    began = time.monotonic()
    entry = admin.RegisterAdapter(admin_pb.RegisterAdapterRequest(model=TEXT_MODEL, name=ADAPTER, source=job.output,
                                                                  replace=True), timeout=30).adapter
    assert entry.lora_id >= 1000
    assert ADAPTER in adapters_listed(stub)
    tuned = greedy(stub, PROMPTS[0], ADAPTER)
    first_answer = time.monotonic() - began
    base = greedy(stub, PROMPTS[0])
    print(f"\nregistered -> first adapter answer {first_answer:.2f} s; base: {base.text[:60]!r}; "
          f"adapter: {tuned.text!r}")
    SESSION_FACTS["registered adapter -> its first answer (live load)"] = f"{first_answer:.2f} s"
    assert tuned.text.strip() == ANSWER
    assert tuned.finish_reason == pb.FINISH_REASON_STOP  # it learned to end its turn too
    assert ANSWER not in base.text
    assert greedy(stub, PROMPTS[3], ADAPTER).text.strip() == ANSWER  # another training prompt


@pytest.mark.slow
def test_registered_adapter_survives_a_replica_restart(trained, stub, admin, ray_cluster, platform_config):
    from gemma_serving.local_cluster import ClusterView

    view = ClusterView(ray_cluster, platform_config.app_name, metrics_port=0)
    replicas = view.replicas("text")
    assert replicas
    began = time.monotonic()
    for replica in replicas:
        view.kill(replica)
    # Serve replaces the replica; the request waits for it (bounded by max_wait_for_replica_s) and the new replica
    # finds the adapter in the registry on its first miss.
    reply = greedy(stub, PROMPTS[1], ADAPTER)
    SESSION_FACTS["text replica killed -> registered adapter answers from the new replica"] = (
        f"{time.monotonic() - began:.1f} s")
    assert reply.text.strip() == ANSWER
    assert all(r.pid not in {k.pid for k in replicas} for r in view.replicas("text"))


def test_unregistered_adapter_is_refused_and_unlisted(trained, stub, admin):
    admin.UnregisterAdapter(admin_pb.UnregisterAdapterRequest(model=TEXT_MODEL, name=ADAPTER), timeout=30)
    assert ADAPTER not in adapters_listed(stub)
    with pytest.raises(grpc.RpcError) as info:
        greedy(stub, PROMPTS[0], ADAPTER)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"adapter '{ADAPTER}' is not configured for model {TEXT_MODEL}" in info.value.details()
