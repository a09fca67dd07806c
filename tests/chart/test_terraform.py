"""infra/terraform/gke parses as HCL2 (python-hcl2; no terraform binary here) and declares what the chart relies on:
Workload Identity, the GCS FUSE CSI driver, autoscaling GPU pools for the chart's accelerators, a pinned KubeRay."""

import functools
import json
from pathlib import Path

import hcl2
import lark
import pytest

from tests.chart.chartlib import CHART_DIR, KUBERAY_VERSION, REPO

TF_DIR = REPO / "infra" / "terraform" / "gke"


def _clean(value):
    """python-hcl2 keeps HCL quoting and block markers; strip them for plain comparisons."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@functools.cache
def terraform() -> dict:
    merged: dict = {}
    for path in sorted(TF_DIR.glob("*.tf")):
        with open(path, encoding="utf-8") as f:
            parsed = _clean(hcl2.load(f))
        for key, blocks in parsed.items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def _blocks(kind: str) -> dict:
    out = {}
    for block in terraform().get(kind, []):
        for rtype, named in block.items():
            for name, body in named.items():
                out[f"{rtype}.{name}"] = body
    return out


def _variables() -> dict:
    return {name: body for block in terraform()["variable"] for name, body in block.items()}


def test_every_file_parses():
    files = sorted(TF_DIR.glob("*.tf"))
    assert {f.name for f in files} >= {"versions.tf", "variables.tf", "main.tf", "iam.tf", "kuberay.tf", "outputs.tf"}
    for path in files:
        with open(path, encoding="utf-8") as f:
            hcl2.load(f)


def test_a_syntax_error_fails_to_parse(tmp_path):
    bad = tmp_path / "bad.tf"
    bad.write_text('resource "google_container_cluster" "x" {\n  name = \n}\n')
    with pytest.raises(lark.exceptions.LarkError), open(bad, encoding="utf-8") as f:
        hcl2.load(f)


def test_variables_and_outputs_are_documented():
    for name, body in _variables().items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"
    for block in terraform()["output"]:
        for name, body in block.items():
            assert body.get("description"), f"output {name} has no description"


def test_cluster_has_workload_identity_gcs_fuse_and_managed_prometheus():
    (cluster,) = [b for k, b in _blocks("resource").items() if k.startswith("google_container_cluster.")]
    assert cluster["workload_identity_config"][0]["workload_pool"] == "${var.project_id}.svc.id.goog"
    assert cluster["addons_config"][0]["gcs_fuse_csi_driver_config"][0]["enabled"] is True
    assert cluster["monitoring_config"][0]["managed_prometheus"][0]["enabled"] is True
    assert cluster["gateway_api_config"][0]["channel"] == "CHANNEL_STANDARD"
    assert cluster["datapath_provider"] == "ADVANCED_DATAPATH"  # enforces the chart's NetworkPolicy


def test_gpu_pools_autoscale_and_cover_the_charts_accelerators():
    import yaml

    pool = _blocks("resource")["google_container_node_pool.gpu"]
    assert pool["for_each"] == "${var.gpu_node_pools}"
    autoscaling = pool["autoscaling"][0]
    assert autoscaling["total_min_node_count"] == "${each.value.min_nodes}"
    assert autoscaling["total_max_node_count"] == "${each.value.max_nodes}"
    node = pool["node_config"][0]
    assert node["guest_accelerator"][0]["type"] == "${each.value.accelerator_type}"
    assert node["workload_metadata_config"][0]["mode"] == "GKE_METADATA"
    defaults = _variables()["gpu_node_pools"]["default"]
    types = {p["accelerator_type"] for p in defaults.values()}
    assert "nvidia-l4" in types and {"nvidia-a100-80gb", "nvidia-h100-80gb"} & types
    for p in defaults.values():
        assert 0 <= p["min_nodes"] <= p["max_nodes"]
    chart_accelerators = set(yaml.safe_load((CHART_DIR / "values.yaml").read_text())["accelerators"])
    assert chart_accelerators <= types, "every accelerator the chart has a worker group for has a node pool"
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert types <= set(schema["$defs"]["GkeAccelerator"]["enum"])


def test_kuberay_operator_is_pinned_to_the_charts_release():
    release = _blocks("resource")["helm_release.kuberay_operator"]
    assert release["chart"] == "kuberay-operator"
    assert release["version"] == "${var.kuberay_version}"
    pinned = _variables()["kuberay_version"]["default"]
    assert pinned == KUBERAY_VERSION  # the release whose real CRDs and Go checks tests/chart validates against
    chart_yaml = (CHART_DIR / "Chart.yaml").read_text()
    assert f'gemma-serving/kuberay-version: "{pinned}"' in chart_yaml


def test_incremental_upgrade_feature_gate_is_opt_in():
    """NewClusterWithIncrementalUpgrade needs the operator's RayServiceIncrementalUpgrade gate: set only on request
    (a featureGates value replaces the operator chart's whole default list)."""
    release = _blocks("resource")["helm_release.kuberay_operator"]
    ((gate,),) = [list(d.values()) for d in release["dynamic"]]
    assert "var.kuberay_incremental_upgrade ?" in gate["for_each"]
    assert "RayServiceIncrementalUpgrade" in gate["for_each"]
    assert gate["content"][0]["name"] == "featureGates[0].${set.key}"
    variable = _variables()["kuberay_incremental_upgrade"]
    assert variable["type"] == "bool" and variable["default"] is False


def test_workload_identity_binding_matches_the_charts_service_account():
    binding = _blocks("resource")["google_service_account_iam_member.workload_identity"]
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert (
        binding["member"]
        == "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/${var.kubernetes_service_account}]"
    )
    # The chart names its ServiceAccount <release>-gemma-serving; the README installs release "gemma".
    assert _variables()["kubernetes_service_account"]["default"] == "gemma-gemma-serving"
    assert Path(TF_DIR / "terraform.tfvars.example").exists()
