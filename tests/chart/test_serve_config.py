"""One schema: chart values -> our YAML -> serveConfigV2. The rendered serveConfigV2 loads with our own config model
(gemma_serving.config.parse_config) and with Ray Serve's own deploy schema, and equals the values' `config`."""

import pytest
import yaml
from gemma_serving.config import parse_config
from gemma_serving.errors import InvalidRequest

from tests.chart.chartlib import objects, rayservice, render


def _serve_config(profile="values.yaml", **overrides):
    return yaml.safe_load(rayservice(objects(render(profile, **overrides)))["spec"]["serveConfigV2"])


def test_serve_config_loads_with_our_config_model(profile):
    serve = _serve_config(profile)
    (app,) = serve["applications"]
    assert app["import_path"] == "gemma_serving.app:app_builder"
    config = parse_config(app["args"]["config"])
    assert app["name"] == config.app_name
    assert config.router.host == "0.0.0.0"
    assert config.services, "at least one service"


def test_serve_config_is_a_valid_ray_serve_config(profile):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.parse_obj(_serve_config(profile))
    (app,) = schema.applications
    assert app.deployments == []  # every deployment option comes from our config through the app builder


def test_values_config_passes_through_with_the_router_pinned_to_the_head():
    """What the chart's values hold under `config` is what the app builder receives, plus the router's placement
    resource (kept beside any resources the values give the router)."""
    override = {"config": {"limits": {"max_image_bytes": 20971520, "max_audio_seconds": 12.5}}}
    app = _serve_config(**override)["applications"][0]
    config = parse_config(app["args"]["config"])
    assert config.limits.max_image_bytes == 20971520  # large ints survive Helm's float64 numbers
    assert config.limits.max_audio_seconds == 12.5
    assert config.router.resources == {"gemma-router": 0.001}
    app = _serve_config(config={"router": {"resources": {"edge": 1}}})["applications"][0]
    assert parse_config(app["args"]["config"]).router.resources == {"edge": 1, "gemma-router": 0.001}


def test_null_drops_a_service():
    app = _serve_config("values-gemma3n.yaml")["applications"][0]
    assert set(parse_config(app["args"]["config"]).services) == {"audio"}


def test_our_model_rejects_what_the_schema_lets_through():
    """Cross-field rules live only in pydantic (e.g. token limits): the round trip is what catches them."""
    app = _serve_config(config={"services": {"text": {"model": {"max_output_tokens": 9000}}}})["applications"][0]
    with pytest.raises(InvalidRequest, match="max_output_tokens"):
        parse_config(app["args"]["config"])
