"""values.schema.json: generated from our config model where it describes `config`, and it refuses bad values
before anything renders (helm install/upgrade/template/lint run the same check)."""

import subprocess
import sys

import helm_python as helm
import pytest

from tests.chart.chartlib import CHART_DIR, REPO, chart, render


def test_schema_is_generated_from_the_config_model():
    script = REPO / "deploy" / "helm" / "gen_values_schema.py"
    result = subprocess.run([sys.executable, str(script), "--check"], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_default_values_and_profiles_pass(profile):
    chart().validate_schema(
        {} if profile == "values.yaml" else helm.values_from_yaml((CHART_DIR / profile).read_text())
    )


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"accelerators": {"nvidia-l4": {"minReplicas": -1}}}, "/accelerators/nvidia-l4/minReplicas"),
        ({"accelerators": {"nvidia-l4": {"maxReplicas": 0}}}, "/accelerators/nvidia-l4/maxReplicas"),
        ({"config": {"services": {"text": {"deployment": {"autoscaling": {"min_replicas": -1}}}}}}, "min_replicas"),
        ({"config": {"router": {"num_replicas": 0}}}, "/config/router/num_replicas"),
        ({"config": {"services": {"text": {"deployment": {"accelerator_type": "nvidia-k80"}}}}}, "accelerator_type"),
        ({"accelerators": {"tpu-v5e": {"minReplicas": 1}}}, "/accelerators"),
        ({"config": {"services": {"speech": {"model": {"name": "x", "source": "/m"}}}}}, "speech"),
        ({"config": {"services": {"text": {"model": {"nmae": "typo"}}}}}, "nmae"),
        ({"config": {"servcies": {}}}, "servcies"),
        ({"image": {"tag": "latest"}}, "/image/tag"),
        ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
        ({"modelStorage": {"type": "s3"}}, "/modelStorage/type"),
        ({"gateway": {"healthCheck": "tcp"}}, "/gateway/healthCheck"),
        ({"head": {"rayCpus": 0}}, "/head/rayCpus"),
    ],
)
def test_bad_values_are_rejected(values, where):
    with pytest.raises(helm.HelmValuesError, match=where):
        chart().validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(**values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"router": {"host": "127.0.0.1"}}}, "0.0.0.0"),
        (
            {"config": {"services": {"text": {"deployment": {"accelerator_type": "nvidia-b200"}}}}},
            "accelerators.nvidia-b200",
        ),
        ({"config": {"router": {"num_replicas": 16, "num_cpus": 1}}}, "head.rayCpus"),
        ({"gateway": {"enabled": True}}, "gateway.tls.secretName"),
    ],
)
def test_inconsistent_values_fail_to_render(values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render(**values)
