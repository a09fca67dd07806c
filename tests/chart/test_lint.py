"""`helm lint --strict` through Helm's Go SDK: no errors and no warnings, for the defaults and every profile."""

import helm_python as helm

from tests.chart.chartlib import CHART_DIR, KUBE_VERSION, profile_values

WARNING = 2


def test_lint_is_clean(profile):
    report = helm.lint(str(CHART_DIR), profile_values(profile), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert report["total_charts_linted"] == 1
    assert not report["errors"], report["errors"]
    assert not problems, problems


def test_lint_catches_a_broken_template(tmp_path):
    """The lint gate can fail: a chart with a template that does not parse reports an error."""
    broken = tmp_path / "gemma-serving"
    helm.Chart.load(str(CHART_DIR)).save_dir(str(tmp_path))
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope | badfunc }}\n")
    report = helm.lint(str(broken), strict=True)
    assert report["errors"] or any(m["severity"] >= WARNING for m in report["messages"])
