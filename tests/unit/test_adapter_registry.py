"""The live adapter registry in storage: one file per adapter, stable LoRA ids, survives a new reader (restart),
readers see other writers' changes after refresh_s, adapter directories are checked before registering."""

import json

import pytest
from gemma_serving.adapter_registry import (
    ENTRIES_DIR,
    FIRST_REGISTERED_ID,
    AdapterRegistry,
    check_adapter_dir,
)
from gemma_serving.errors import AlreadyExists, InvalidRequest, ModelNotFound


def peft_dir(root, name="a", rank=8, peft_type="LORA", weights=True):
    path = root / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "r": rank}))
    if weights:
        (path / "adapter_model.safetensors").write_bytes(b"x")
    return path


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_register_writes_one_file_per_adapter_and_a_new_reader_sees_it(tmp_path):
    registry = AdapterRegistry(str(tmp_path))
    entry = registry.register("answers-v1", "/data/a1")
    assert entry.lora_id >= FIRST_REGISTERED_ID and entry.registered_at > 0
    on_disk = json.loads((tmp_path / ENTRIES_DIR / "answers-v1.json").read_text())
    assert on_disk == {"name": "answers-v1", "source": "/data/a1", "lora_id": entry.lora_id,
                       "registered_at": entry.registered_at}
    after_restart = AdapterRegistry(str(tmp_path))
    assert after_restart.get("answers-v1") == entry
    assert after_restart.read("answers-v1") == entry
    assert list(after_restart.entries()) == ["answers-v1"]


def test_names_are_unique_unless_replaced_and_replacing_gives_a_new_id(tmp_path):
    registry = AdapterRegistry(str(tmp_path))
    first = registry.register("a", "/x")
    with pytest.raises(AlreadyExists, match="adapter 'a' is already registered"):
        registry.register("a", "/y")
    second = registry.register("a", "/y", replace=True)
    assert second.source == "/y" and second.lora_id != first.lora_id
    assert registry.read("a") == second


def test_unregister_removes_the_file_and_unknown_names_are_not_found(tmp_path):
    registry = AdapterRegistry(str(tmp_path))
    entry = registry.register("a", "/x")
    assert registry.unregister("a") == entry
    assert registry.get("a") is None and not (tmp_path / ENTRIES_DIR / "a.json").exists()
    with pytest.raises(ModelNotFound, match="adapter 'a' is not registered"):
        registry.unregister("a")


def test_other_writers_changes_are_seen_after_refresh_s(tmp_path):
    clock = Clock()
    reader = AdapterRegistry(str(tmp_path), refresh_s=2.0, clock=clock)
    writer = AdapterRegistry(str(tmp_path))
    assert reader.get("a") is None
    writer.register("a", "/x")
    assert reader.get("a") is None  # cached listing
    clock.now = 2.0
    assert reader.get("a") is not None
    writer.unregister("a")
    clock.now = 3.0
    assert reader.get("a") is not None
    clock.now = 4.0
    assert reader.get("a") is None


def test_bad_names_and_unreadable_entries(tmp_path):
    registry = AdapterRegistry(str(tmp_path))
    for bad in ("../escape", ".hidden", "", "a" * 65):
        with pytest.raises(InvalidRequest, match="adapter name must match"):
            registry.register(bad, "/x")
        assert registry.read(bad) is None
    registry.register("good", "/x")
    (tmp_path / ENTRIES_DIR / "broken.json").write_text("{not json")
    (tmp_path / ENTRIES_DIR / "other.json").write_text(json.dumps({"name": "mismatch", "source": "/x",
                                                                   "lora_id": 1001, "registered_at": 1}))
    assert list(AdapterRegistry(str(tmp_path)).entries()) == ["good"]


def test_ids_avoid_the_configured_adapters_and_each_other(tmp_path, monkeypatch):
    import gemma_serving.adapter_registry as module

    draws = iter([5, 5, 7])
    monkeypatch.setattr(module, "_fresh_id", lambda: next(draws))
    registry = AdapterRegistry(str(tmp_path))
    assert registry.register("a", "/x", reserved_ids=[7]).lora_id == 5
    with pytest.raises(StopIteration):  # 5 is taken by a, 7 is reserved: it keeps drawing
        registry.register("b", "/x", reserved_ids=[7])


def test_adapter_directories_are_checked(tmp_path):
    assert check_adapter_dir(str(peft_dir(tmp_path, "ok")), max_rank=16) == tmp_path / "ok"
    with pytest.raises(InvalidRequest, match="holds no adapter_config.json"):
        check_adapter_dir(str(tmp_path / "missing"), 16)
    with pytest.raises(InvalidRequest, match="rank must be 1..16 .the engine's max_lora_rank., got 32"):
        check_adapter_dir(str(peft_dir(tmp_path, "big", rank=32)), 16)
    with pytest.raises(InvalidRequest, match="is not a LoRA adapter"):
        check_adapter_dir(str(peft_dir(tmp_path, "ia3", peft_type="IA3")), 16)
    with pytest.raises(InvalidRequest, match="has no adapter_model.safetensors"):
        check_adapter_dir(str(peft_dir(tmp_path, "empty", weights=False)), 16)


def test_gs_locations_map_to_the_gcs_fuse_mount(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_SERVING_GCS_MOUNT", str(tmp_path))
    AdapterRegistry("gs://bucket/adapters/gemma").register("a", "gs://bucket/adapters/gemma/a")
    assert (tmp_path / "adapters" / "gemma" / ENTRIES_DIR / "a.json").is_file()


def test_a_registry_enables_lora_in_the_engine_with_a_spare_cpu_slot():
    from gemma_serving.config import ModelConfig
    from gemma_serving.engines.vllm import engine_args

    model = ModelConfig(name="m", source="/m", adapter_registry="/registry",
                        engine={"max_loras": 2, "max_cpu_loras": 4})
    cpu = engine_args(model, "/m", accepts=("text",), cpu=True)
    assert cpu["enable_lora"] and cpu["max_loras"] == 5 and cpu["max_cpu_loras"] == 5  # never fills the last slot
    gpu = engine_args(model, "/m", accepts=("text",), cpu=False)
    assert gpu["max_loras"] == 2 and gpu["max_cpu_loras"] == 4
    assert "enable_lora" not in engine_args(ModelConfig(name="m", source="/m"), "/m", accepts=("text",))


def test_registries_are_for_text_models_only():
    from gemma_serving.config import parse_config

    services = {"text": {"model": {"name": "t", "source": "/t", "adapter_registry": "/r"}},
                "vision": {"model": {"name": "v", "source": "/v", "adapter_registry": "/r2"}}}
    with pytest.raises(InvalidRequest, match="LoRA adapters are supported on the text service only, not on vision"):
        parse_config({"services": services})
