import pytest
from gemma_serving.config import ServiceKind, load_config, parse_config
from gemma_serving.errors import InvalidRequest

MINIMAL = {"services": {"text": {"model": {"name": "m", "source": "/models/m"}}}}


def test_default_config_serves_three_modalities():
    config = load_config()
    assert set(config.services) == {ServiceKind.TEXT, ServiceKind.VISION, ServiceKind.AUDIO}
    assert config.service_for_model("gemma-3n-tiny") is ServiceKind.AUDIO
    assert config.router.port == 50051


def test_unknown_keys_are_rejected_with_their_path():
    with pytest.raises(InvalidRequest, match=r"services\.text\.model\.colour"):
        parse_config({"services": {"text": {"model": {"name": "m", "source": "x", "colour": "red"}}}})


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"router": {"port": 70000}}, "router.port"),
        ({"services": {"sound": MINIMAL["services"]["text"]}}, "services.sound"),
        ({"services": {"text": {"model": {"name": "m", "source": "x", "max_output_tokens": 4096}}}}, "max_model_len"),
        (
            {"services": {"text": {"model": {"name": "m", "source": "x"},
                                   "deployment": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}}},
            "min_replicas",
        ),
    ],
)
def test_bad_values_are_rejected(patch, match):
    with pytest.raises(InvalidRequest, match=match):
        parse_config({**MINIMAL, **patch})


def test_duplicate_model_names_are_rejected():
    svc = MINIMAL["services"]["text"]
    with pytest.raises(InvalidRequest, match="unique"):
        parse_config({"services": {"text": svc, "vision": svc}})


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(InvalidRequest, match="mapping"):
        load_config(path)
