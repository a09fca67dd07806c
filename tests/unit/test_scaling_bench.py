"""bench/scaling.py reads scale events off the sampled replica timeline."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from scaling import derive_events, plot


def sample(t, text, audio):
    return {"t_s": t, "text": text, "audio": audio}


def test_events_measure_decision_and_serving_from_each_load_change():
    phases = [{"name": "baseline", "start_s": 0}, {"name": "text spike", "start_s": 10},
              {"name": "audio spike", "start_s": 50}, {"name": "cool down", "start_s": 80}]
    one, two_starting, two = {"RUNNING": 1}, {"RUNNING": 1, "STARTING": 1}, {"RUNNING": 2}
    timeline = [
        sample(0, one, {}), sample(12, one, {}), sample(14, two_starting, {}), sample(30, two, {}),
        sample(55, two, {"STARTING": 1}), sample(60, {"RUNNING": 1, "STOPPING": 1}, {"STARTING": 1}),
        sample(70, one, {"RUNNING": 1}), sample(95, one, {"RUNNING": 1}), sample(100, one, {"STOPPING": 1}),
    ]
    assert derive_events(phases, timeline) == {
        "text spike -> 2nd text replica decided": 4,
        "text spike -> 2nd text replica RUNNING": 20,
        "audio spike -> 1st audio replica decided (from zero)": 5,
        "audio spike -> 1st audio replica RUNNING (from zero)": 20,
        "text load drop -> back to 1 RUNNING text replica": 10,
        "audio idle -> 0 RUNNING audio replicas": 20,
    }


def test_an_event_that_never_happened_is_none():
    phases = [{"name": "text spike", "start_s": 0}]
    events = derive_events(phases, [sample(1, {"RUNNING": 1}, {})])
    assert events["text spike -> 2nd text replica RUNNING"] is None


def test_the_plot_draws_replicas_and_latencies(tmp_path):
    phases = [{"name": "baseline", "start_s": 0, "end_s": 10}, {"name": "text spike", "start_s": 10, "end_s": 20}]
    timeline = [sample(t, {"RUNNING": 1 + (t > 15)}, {}) for t in range(0, 20, 2)]
    requests = [{"service": "text", "ok": True, "sent_s": t, "e2e_s": 0.5 + t / 10} for t in range(18)]
    plot({"phases": phases, "timeline": timeline, "requests": requests}, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
