import pytest

from tests.chart.chartlib import PROFILES


@pytest.fixture(params=PROFILES)
def profile(request) -> str:
    """Each values file of the chart: the defaults and every values-*.yaml profile."""
    return request.param
