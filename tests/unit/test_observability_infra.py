"""infra/observability: collector config, alert rules (promtool) and Grafana dashboard against the real metric names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from gemma_serving.telemetry.metrics import ENGINE_METRICS, METRIC_NAMES, RouterMetrics

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "infra" / "observability"
RULES = OBS / "prometheus-rules.yaml"
RULE_TESTS = OBS / "prometheus-rules.test.yaml"
DASHBOARD = OBS / "grafana-dashboard.json"
COLLECTOR = OBS / "otel-collector.yaml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (apt-get install prometheus; .ci/run installs it): rule syntax and unit tests skipped",
)

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "inf", "nan", "atan2"}


def _promtool(*args: str, cwd: Path = OBS) -> None:
    """Run promtool; fail the test with its output unless it exits 0."""
    result = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout, result.stdout


def _metric_types() -> dict[str, str]:
    """Base metric name (as in METRIC_NAMES) -> counter | gauge | histogram, from the router's own registry."""
    types = {}
    for family in RouterMetrics().registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        types[name] = family.type
    return types


def _all_metric_types() -> dict[str, str]:
    """The router's metrics and the engine metrics every replica exports through Ray (ENGINE_METRICS)."""
    return {**_metric_types(), **{name: kind for name, (kind, _help) in ENGINE_METRICS.items()}}


def _exposed_names() -> set[str]:
    """Every series name a PromQL expression may select: METRIC_NAMES and ENGINE_METRICS with histogram suffixes,
    plus `up`."""
    names = {"up"}
    for name, kind in _all_metric_types().items():
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def metric_names_in(expr: str) -> set[str]:
    """Metric names selected by a PromQL (or Grafana-templated PromQL) expression."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals (label values, regexes)
    s = re.sub(r"\$\{?\w+\}?", "", s)  # Grafana variables: $service, $__rate_interval, ${datasource}
    s = re.sub(r"\{[^{}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", "", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)  # label lists
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", s)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        if word.lower() in _KEYWORDS or re.match(r"\s*\(", s[m.end():]):  # keyword or function call
            continue
        names.add(word)
    return names


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _panel_targets() -> list[tuple[str, str]]:
    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in walk(dash["panels"]) for t in p.get("targets", [])]


# --- the name extraction itself ---------------------------------------------------------------------------------

def test_metric_names_match_the_registry():
    assert set(_metric_types()) == set(METRIC_NAMES)


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.95, sum by (service, le) (rate(gemma_serving_time_to_first_token_seconds_bucket'
            '{service=~"$service",code!~"OK|up"}[$__rate_interval]))) > 10 and on (service) '
            'min_over_time(sum by (service) (gemma_serving_requests_in_flight)[5m:1m]) >= 1e3 or up offset 1h')
    assert metric_names_in(expr) == {"gemma_serving_time_to_first_token_seconds_bucket",
                                     "gemma_serving_requests_in_flight", "up"}


@pytest.mark.parametrize("bad", ["gemma_serving_requests", "gemma_serving_time_to_first_token_seconds",
                                 "gemma_serving_replicas_total", "gemma_serving_requests_in_flight_count",
                                 "vllm:num_requests_running"])
def test_unknown_or_unsuffixed_names_are_rejected(bad):
    assert metric_names_in(f"sum(rate({bad}[5m]))") == {bad}
    assert bad not in _exposed_names()


# --- OpenTelemetry Collector ------------------------------------------------------------------------------------

def test_collector_pipelines_reference_defined_components():
    cfg = yaml.safe_load(COLLECTOR.read_text())
    assert cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipelines = cfg["service"]["pipelines"]
    assert pipelines
    for name, pipeline in pipelines.items():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, name
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(section, [])) <= set(cfg.get(section) or {}), (name, section)
        assert pipeline["receivers"] and pipeline["exporters"], name
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", f"{name}: memory_limiter must come first"
        assert processors[-1].split("/")[0] == "batch", f"{name}: batch must come last"
    used = {e for p in pipelines.values() for e in p["exporters"]}
    assert {"googlecloud", "otlp"} <= used
    assert set(cfg["service"].get("extensions", [])) <= set(cfg.get("extensions") or {})


# --- Prometheus rules ---------------------------------------------------------------------------------------------

def test_rules_reference_only_existing_metrics():
    known = _exposed_names()
    rules = _rules()
    assert rules
    for rule in rules:
        names = metric_names_in(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, f"{rule['alert']}: unknown metrics {sorted(names - known)}"


def test_rules_have_severity_for_and_annotations():
    alerts = {rule["alert"]: rule for rule in _rules()}
    for name in ("GemmaServingHighTimeToFirstToken", "GemmaServingLowTokenThroughput", "GemmaServingHighErrorRate",
                 "GemmaServingQueueGrowing", "GemmaServingNearCapacity", "GemmaServingResourceExhausted",
                 "GemmaServingNoReplicas", "GemmaServingTargetDown", "GemmaServingSlowDecode",
                 "GemmaServingKVCacheSaturated", "GemmaServingEngineQueueGrowing", "GemmaServingPreemptions",
                 "GemmaServingReplicaMemoryHigh", "GemmaServingDegraded", "GemmaServingLowQualityScore"):
        assert name in alerts
    for name, rule in alerts.items():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        # Alerts name the service: from the series (templated) or, for `up`, a static label.
        assert "$labels.service" in rule["annotations"]["summary"] or "service" in rule["labels"], name
        assert rule["annotations"]["description"], name


@needs_promtool
def test_promtool_check_rules():
    _promtool("check", "rules", str(RULES))


@needs_promtool
def test_promtool_rule_unit_tests():
    # Every alert is exercised by the unit-test file.
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert {rule["alert"] for rule in _rules()} <= tested
    _promtool("test", "rules", RULE_TESTS.name)


# --- Grafana dashboard ------------------------------------------------------------------------------------------

def test_dashboard_targets_reference_only_existing_metrics():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "service" in variables
    targets = _panel_targets()
    assert len(targets) >= 10
    known = _exposed_names()
    query = variables["service"]["query"]
    query = query["query"] if isinstance(query, dict) else query
    for title, expr in [*targets, ("$service variable", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))]:
        names = metric_names_in(expr)
        assert names, title
        assert names <= known, f"{title}: unknown metrics {sorted(names - known)}"
    for title, expr in targets:
        if "gemma_serving_" in expr or "ray_vllm_" in expr:
            assert '"$service"' in expr, f"{title}: not filtered by the service variable"
    # Every exported metric (router and engine) shows up somewhere on the dashboard.
    shown = set().union(*(metric_names_in(e) for _, e in targets))
    for name in _all_metric_types():
        assert any(s == name or s.startswith(name + "_") for s in shown), f"{name} not on the dashboard"


@needs_promtool
def test_dashboard_expressions_parse(tmp_path):
    # promtool has no bare expression check in 2.42: wrap each target as a recording rule.
    rules = [{"record": f"dashboard:panel_{i}",
              "expr": expr.replace("$__rate_interval", "5m").replace("$service", ".*")}
             for i, (_, expr) in enumerate(_panel_targets())]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path))


def test_readme_documents_every_metric():
    readme = (OBS / "README.md").read_text()
    for name, help_text in [*METRIC_NAMES.items(), *((n, h) for n, (_kind, h) in ENGINE_METRICS.items())]:
        assert f"| `{name}` |" in readme and help_text in readme, name
