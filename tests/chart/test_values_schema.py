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
        ({"ray": {"upgradeStrategy": "Recreate"}}, "/ray/upgradeStrategy"),  # RayCluster's, not RayService's
        ({"ray": {"upgradeStrategy": "IncrementalUpgrade"}}, "/ray/upgradeStrategy"),
        ({"ray": {"incrementalUpgrade": {"maxSurgePercent": 101}}}, "/ray/incrementalUpgrade/maxSurgePercent"),
        ({"ray": {"incrementalUpgrade": {"stepSizePercent": -1}}}, "/ray/incrementalUpgrade/stepSizePercent"),
        ({"ray": {"incrementalUpgrade": {"intervalSeconds": 0}}}, "/ray/incrementalUpgrade/intervalSeconds"),
        ({"ray": {"incrementalUpgrade": {"maxSurge": 10}}}, "maxSurge"),
        ({"ray": {"clusterDeletionDelaySeconds": -1}}, "/ray/clusterDeletionDelaySeconds"),
        ({"router": {"service": {"type": "LoadBalancer"}}}, "/router/service/type"),  # would expose GCS/dashboard
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
        ({"ray": {"upgradeStrategy": "NewClusterWithIncrementalUpgrade"}}, "needs gateway.enabled=true"),
        (
            {
                "ray": {"upgradeStrategy": "NewClusterWithIncrementalUpgrade",
                        "incrementalUpgrade": {"maxSurgePercent": 10, "stepSizePercent": 20}},
                "gateway": {"enabled": True, "tls": {"secretName": "t"}},
            },
            "stepSizePercent must be <= maxSurgePercent",
        ),
    ],
)
def test_inconsistent_values_fail_to_render(values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render(**values)


def test_upgrade_strategy_values_reach_the_rayservice():
    from tests.chart.chartlib import objects, rayservice

    gateway = {"enabled": True, "tls": {"secretName": "t"}, "className": "gke-l7-global-external-managed"}
    for strategy in ("NewCluster", "None"):
        spec = rayservice(objects(render(ray={"upgradeStrategy": strategy})))["spec"]
        assert spec["upgradeStrategy"] == {"type": strategy}
    spec = rayservice(objects(render(ray={"upgradeStrategy": "NewClusterWithIncrementalUpgrade",
                                          "incrementalUpgrade": {"gatewayClassName": ""}}, gateway=gateway)))["spec"]
    assert spec["upgradeStrategy"] == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {"gatewayClassName": "gke-l7-global-external-managed", "maxSurgePercent": 25,
                                  "stepSizePercent": 5, "intervalSeconds": 60},
    }


def test_old_cluster_outlives_the_longest_stream():
    """rayClusterDeletionDelaySeconds defaults to max_request_seconds + the router's drain (5 + 30 in values.yaml)."""
    from tests.chart.chartlib import find, objects, rayservice

    gateway = {"enabled": True, "tls": {"secretName": "t"}}
    docs = objects(render(gateway=gateway))
    assert rayservice(docs)["spec"]["rayClusterDeletionDelaySeconds"] == 600 + 35
    (policy,) = find(docs, "GCPBackendPolicy")
    assert policy["spec"]["default"]["connectionDraining"]["drainingTimeoutSec"] == 635
    docs = objects(render(config={"router": {"max_request_seconds": 120.5}}, gateway=gateway))
    assert rayservice(docs)["spec"]["rayClusterDeletionDelaySeconds"] == 121 + 35
    docs = objects(render(ray={"clusterDeletionDelaySeconds": 60}, gateway=gateway))
    assert rayservice(docs)["spec"]["rayClusterDeletionDelaySeconds"] == 60
    assert find(docs, "GCPBackendPolicy")[0]["spec"]["default"]["connectionDraining"]["drainingTimeoutSec"] == 60
    docs = objects(render(config={"router": {"max_request_seconds": 86400}}, gateway=gateway))
    assert find(docs, "GCPBackendPolicy")[0]["spec"]["default"]["connectionDraining"]["drainingTimeoutSec"] == 3600


def test_config_changes_can_roll_a_new_cluster():
    """ray.newClusterOnConfigChange: a hash of `config` on the head template makes KubeRay's cluster hash change
    with the config, so NewCluster rolls config changes out blue/green; off by default (changes apply in place)."""
    from tests.chart.chartlib import objects, rayservice

    def annotations(**values):
        cluster = rayservice(objects(render(**values)))["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]["template"]["metadata"].get("annotations", {})
        workers = [g["template"]["metadata"].get("annotations", {}) for g in cluster["workerGroupSpecs"]]
        return head, workers

    head, workers = annotations()
    assert "gemma-serving/config-sha256" not in head
    on = {"ray": {"newClusterOnConfigChange": True}}
    head, workers = annotations(**on)
    assert len(head["gemma-serving/config-sha256"]) == 64
    assert not any("gemma-serving/config-sha256" in w for w in workers)
    changed, _ = annotations(**on, config={"router": {"grace_period_s": 45}})
    assert changed["gemma-serving/config-sha256"] != head["gemma-serving/config-sha256"]
    assert annotations(**on)[0] == head  # stable across renders
