"""Scale benchmark: ramp load on a multi-node local cluster and record, per service, replicas over time, the time from
a load spike to a new replica serving, and latency p50/p99 per phase. Writes bench/results/scaling.json and .png.

The cluster is `gemma_serving.local_cluster`: head + two `nvidia-l4` workers (text, 1-2 replicas) + one
`nvidia-h100-80gb` worker (audio, 0-1 replicas), real Ray Serve and real vLLM engines on the tiny local models.
Phases: baseline (light text load), text spike (text scales 1 -> 2), audio spike (audio scales 0 -> 1 while text
load drops), cool down (no load: text back to 1, audio to 0).

    .venv/bin/python bench/scaling.py             # ~6-8 min on the 2-core box
    .venv/bin/python bench/scaling.py --replot    # redraw the PNG from the JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import GrpcTarget, SamplingSpec, make_prompts, one_request, summarize

RESULTS = Path(__file__).resolve().parent / "results"
APP = "scalebench"
KINDS = ("text", "audio")
MODELS = {"text": "gemma-3-tiny", "audio": "gemma-3n-tiny"}


def progress(msg: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class AudioTarget(GrpcTarget):
    """A one-second clip plus the prompt, to the audio service."""

    def parts(self, prompt: str) -> list:
        from gemma_serving.api import inference_pb2 as pb
        from gemma_serving.client.samples import sample_wav

        return [pb.Part(audio=pb.Audio(data=sample_wav(), mime_type="audio/wav")), pb.Part(text=prompt)]


class Load:
    """A closed loop whose concurrency can be changed while it runs; records (service, phase, record)."""

    def __init__(self, service: str, target: GrpcTarget, run: Run, max_tokens: int) -> None:
        self.service, self.target, self.run = service, target, run
        self.sampling = SamplingSpec(max_tokens=max_tokens, temperature=1.0)
        self.prompts = make_prompts(64)
        self.level = 0
        self.workers: list[asyncio.Task] = []

    def set(self, concurrency: int) -> None:
        self.level = concurrency
        while len(self.workers) < concurrency:
            self.workers.append(asyncio.create_task(self._worker(len(self.workers))))

    async def _worker(self, index: int) -> None:
        """Send requests back to back while `index` is within the level; the phase is the one at sending time."""
        sent = 0
        while True:
            if index >= self.level:
                await asyncio.sleep(0.2)
                continue
            phase, prompt = self.run.phase, self.prompts[(index * 7 + sent) % len(self.prompts)]
            rec = await one_request(self.target, prompt, self.sampling, self.run.t0)
            self.run.records.append((self.service, phase, rec))
            sent += 1


class Run:
    def __init__(self, view) -> None:
        self.view = view
        self.t0 = time.perf_counter()
        self.phase = "start"
        self.phases: list[dict[str, Any]] = []
        self.records: list[tuple[str, str, Any]] = []
        self.timeline: list[dict[str, Any]] = []

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def enter(self, name: str) -> None:
        if self.phases:
            self.phases[-1]["end_s"] = round(self.now(), 2)
        self.phase = name
        self.phases.append({"name": name, "start_s": round(self.now(), 2)})
        progress(f"phase: {name}")

    async def sample_forever(self, interval_s: float = 1.0) -> None:
        while True:
            states = await asyncio.to_thread(self.view.replica_states)  # one Serve status read per sample
            self.timeline.append({"t_s": round(self.now(), 2), **{k: states.get(k, {}) for k in KINDS}})
            await asyncio.sleep(interval_s)

    def running(self, kind: str) -> int:
        return self.timeline[-1][kind].get("RUNNING", 0) if self.timeline else 0

    async def until(self, what: str, predicate, timeout_s: float) -> None:
        """Wait until `predicate()` holds on the latest sample (or the timeout passes)."""
        began = self.now()
        while not predicate():
            if self.now() - began > timeout_s:
                progress(f"timed out waiting for {what}")
                return
            await asyncio.sleep(0.5)
        progress(f"{what} after {self.now() - began:.1f} s")


def first_time(timeline: list[dict[str, Any]], after_s: float, kind: str, test) -> float | None:
    """The first sample time at or after `after_s` where `test(states of kind)` holds."""
    return next((s["t_s"] for s in timeline if s["t_s"] >= after_s and test(s[kind])), None)


def derive_events(phases: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> dict[str, float | None]:
    """Seconds from each load change to the autoscaler's reaction (a replica in any state: the decision) and to
    the replica serving (RUNNING: Serve routes to it), read from the sampled timeline."""
    start = {p["name"]: p["start_s"] for p in phases}
    running = lambda n: lambda st: st.get("RUNNING", 0) == n
    exists = lambda n: lambda st: sum(st.values()) >= n
    spans = {
        "text spike -> 2nd text replica decided": ("text spike", "text", exists(2)),
        "text spike -> 2nd text replica RUNNING": ("text spike", "text", running(2)),
        "audio spike -> 1st audio replica decided (from zero)": ("audio spike", "audio", exists(1)),
        "audio spike -> 1st audio replica RUNNING (from zero)": ("audio spike", "audio", running(1)),
        "text load drop -> back to 1 RUNNING text replica": ("audio spike", "text", running(1)),
        "audio idle -> 0 RUNNING audio replicas": ("cool down", "audio", running(0)),
    }
    events = {}
    for name, (phase, kind, test) in spans.items():
        if phase in start:
            t = first_time(timeline, start[phase], kind, test)
            events[name] = round(t - start[phase], 1) if t is not None else None
    return events


async def drive(args, run: Run, target: str) -> None:
    text = Load("text", GrpcTarget(target, MODELS["text"], name="text"), run, args.max_tokens)
    audio = Load("audio", AudioTarget(target, MODELS["audio"], name="audio"), run, 8)
    for load in (text, audio):
        await load.target.open()
    sampler = asyncio.create_task(run.sample_forever())
    await asyncio.sleep(1.5)
    run.enter("baseline")
    text.set(args.base_concurrency)
    await asyncio.sleep(args.hold_s)
    run.enter("text spike")
    text.set(args.spike_concurrency)
    await run.until("text spike -> 2nd text replica RUNNING", lambda: run.running("text") >= 2, args.timeout_s)
    await asyncio.sleep(args.hold_s)
    run.enter("audio spike")
    text.set(args.base_concurrency)
    audio.set(args.audio_concurrency)
    await run.until("audio spike -> 1st audio replica RUNNING (from zero)", lambda: run.running("audio") >= 1,
                    args.timeout_s)
    await asyncio.sleep(args.hold_s)
    run.enter("cool down")
    text.set(0)
    audio.set(0)
    await run.until("text back to 1 replica", lambda: run.running("text") == 1, args.timeout_s)
    await run.until("audio back to 0 replicas", lambda: run.running("audio") == 0, args.timeout_s)
    await asyncio.sleep(2)
    run.phases[-1]["end_s"] = round(run.now(), 2)
    for load in (text, audio):
        for w in load.workers:
            w.cancel()
        await load.target.close()
    sampler.cancel()


def latency_table(run: Run, events: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Per service and phase; the text spike also split at the second replica's arrival (sent before / after)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        for phase in [p["name"] for p in run.phases]:
            recs = [r for s, p, r in run.records if s == kind and p == phase]
            if recs:
                out.setdefault(kind, {})[phase] = summarize(recs)
    spike = next((p for p in run.phases if p["name"] == "text spike"), None)
    arrived = events.get("text spike -> 2nd text replica RUNNING")
    if spike and arrived is not None:
        cut = spike["start_s"] + arrived
        recs = [r for s, p, r in run.records if s == "text" and p == "text spike"]
        before, after = [r for r in recs if r.sent < cut], [r for r in recs if r.sent >= cut]
        for label, part in (("1 replica", before), ("2 replicas", after)):
            if part:
                out["text"][f"text spike, {label}"] = summarize(part)
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 7), sharex=True)
    colors = {"text": "tab:blue", "audio": "tab:orange"}
    for ax in (top, bottom):
        for i, p in enumerate(result["phases"]):
            ax.axvspan(p["start_s"], p.get("end_s", p["start_s"]), color="0.93" if i % 2 else "0.86", lw=0)
    ts = [s["t_s"] for s in result["timeline"]]
    for kind in KINDS:
        running = [s[kind].get("RUNNING", 0) for s in result["timeline"]]
        total = [sum(s[kind].values()) for s in result["timeline"]]
        top.step(ts, running, where="post", color=colors[kind], label=f"{kind} RUNNING")
        top.step(ts, total, where="post", color=colors[kind], ls=":", label=f"{kind} all states (incl. STARTING)")
        pts = [(r["sent_s"] + r["e2e_s"], r["e2e_s"]) for r in result["requests"] if r["service"] == kind and r["ok"]]
        if pts:
            bottom.scatter(*zip(*pts), s=6, color=colors[kind], label=f"{kind} request e2e")
    for p in result["phases"]:
        top.text(p["start_s"] + 1, 2.25, p["name"], fontsize=8)
    top.set_ylabel("replicas")
    top.set_ylim(-0.1, 2.6)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    top.set_title("Replicas per service under a load ramp (head + 2x L4 + 1x H100 logical workers, tiny models, CPU)")
    bottom.set_yscale("log")
    bottom.set_ylabel("end-to-end latency (s)")
    bottom.set_xlabel("time since start (s)")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-concurrency", type=int, default=1, help="below the target of 2 per replica")
    p.add_argument("--spike-concurrency", type=int, default=16)
    p.add_argument("--audio-concurrency", type=int, default=4)
    p.add_argument("--hold-s", type=float, default=25, help="time each phase keeps its load after the scale event")
    p.add_argument("--timeout-s", type=float, default=300)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS / "scaling.json"))
    p.add_argument("--replot", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if args.replot:
        result = json.loads(out.read_text())
        result["events_s"] = derive_events(result["phases"], result["timeline"])
        out.write_text(json.dumps(result, indent=1) + "\n")
        plot(result, out.with_suffix(".png"))
        print(json.dumps(result["events_s"], indent=1))
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from gemma_serving.app import build_app
    from gemma_serving.local_cluster import ClusterView, pinned_config, start_local_cluster
    from gemma_serving.models import build_models
    from ray import serve

    build_models(progress=lambda m: progress(f"models: {m}"))
    progress("starting the local cluster (head + l4-a, l4-b, h100-a)")
    local = start_local_cluster()
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": 0})
        config = pinned_config(APP, text_max_replicas=2, audio_max_replicas=1, audio_downscale_delay_s=20)
        progress("deploying (router + 1 text engine; audio starts at zero)")
        handle = serve.run(build_app(config), name=APP, route_prefix=None)
        target = f"127.0.0.1:{handle.port.remote().result()}"
        run = Run(ClusterView(local, APP, handle.metrics_port.remote().result()))
        asyncio.run(drive(args, run, target))
    finally:
        serve.shutdown()
        local.shutdown()
    events = derive_events(run.phases, run.timeline)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "autoscaling": {k: s.deployment.autoscaling.model_dump() for k, s in config.services.items()},
        "load": {"base_concurrency": args.base_concurrency, "spike_concurrency": args.spike_concurrency,
                 "audio_concurrency": args.audio_concurrency, "max_tokens": args.max_tokens},
        "phases": run.phases,
        "events_s": events,
        "latency": latency_table(run, events),
        "timeline": run.timeline,
        "requests": [{"service": s, "phase": ph, "sent_s": round(r.sent, 3), "ok": r.error is None,
                      "e2e_s": round(r.e2e, 4) if r.e2e else None, "ttft_s": round(r.ttft, 4) if r.ttft else None,
                      "error": r.error} for s, ph, r in run.records],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    for kind, phases in result["latency"].items():
        for phase, s in phases.items():
            progress(f"{kind:5s} {phase:12s} n={s['requests']:4d} ok={s['ok']:4d} e2e p50={s['e2e_ms']['p50']} "
                     f"p99={s['e2e_ms']['p99']} ms ttft p50={s['ttft_ms']['p50']} ms errors={s['errors']}")
    for name, seconds in result["events_s"].items():
        progress(f"{name}: {seconds} s")
    progress(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
