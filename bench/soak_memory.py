"""The router's memory over a soak: the resident set size (RSS, psutil) of its Ray Serve replica process(es).

The router replica is an actor in its own process; its pid comes from Ray's GCS actor table (the replica actor class
`ServeReplica:<app>:router`; Ray's state API would need the dashboard, which the soak does not start), so a Ray
connection is needed: the platform started here, or --ray-address with --target, on this host. Samples: at load
start, after the warm-up (`--warmup-seconds`, default 10 s of load), every progress tick and at the end.

The rule ("router memory flat"): end RSS <= after-warm-up RSS x 1.10 + 32 MiB. Start-up costs (imports, first
requests, caches filling) fall before the warm-up mark; what grows after it with the number of requests is a leak. A
run shorter than the warm-up compares against the start sample.
"""

from __future__ import annotations

import time

import psutil

MIB = 2**20
FLAT_FACTOR = 1.10
FLAT_SLACK_MIB = 32.0


def memory_flat(after_warmup_mib: float, end_mib: float) -> bool:
    """The rule of the module docstring."""
    return end_mib <= after_warmup_mib * FLAT_FACTOR + FLAT_SLACK_MIB


def router_pids(app_name: str) -> list[int]:
    """Pids of the app's live router replicas (needs a Ray connection)."""
    from gemma_serving.local_cluster import ClusterView

    return [replica.pid for replica in ClusterView(None, app_name, metrics_port=0).replicas("router")]


def is_local_router(pid: int, app_name: str) -> bool:
    """Whether `pid` is a router replica on this host (Ray titles it "ray::ServeReplica:<app>:router"): with a
    remote cluster the same pid here may be anything."""
    try:
        return f"ServeReplica:{app_name}:router" in " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class RouterMemory:
    """RSS samples of the router's processes (summed over replicas), or why there are none."""

    def __init__(self, pids: list[int], *, skipped: str | None = None, clock=time.monotonic) -> None:
        self.pids = pids
        self.skipped = skipped
        self.lost: str | None = None  # a router process that went away during the soak
        self._procs = [psutil.Process(pid) for pid in pids]
        self._clock = clock
        self._t0: float | None = None  # the first sample's time
        self.samples: list[tuple[float, float]] = []  # (seconds since the first sample, MiB)
        self.after_warmup: float | None = None

    @classmethod
    def find(cls, app_name: str) -> RouterMemory:
        """The app's router replicas on this host, or skipped (none, or all on other hosts)."""
        pids = router_pids(app_name)
        here = [pid for pid in pids if is_local_router(pid, app_name)]
        return cls(here) if here else cls([], skipped=f"no live router replica of app {app_name} on this host "
                                                       f"(Ray reports pids {pids})")

    def sample(self) -> float | None:
        """Take one sample (MiB), or None when skipped or a router process is gone."""
        if self.skipped or self.lost:
            return None
        try:
            mib = sum(p.memory_info().rss for p in self._procs) / MIB
        except psutil.NoSuchProcess as exc:
            self.lost = f"router pid {exc.pid} exited during the soak"
            return None
        now = self._clock()
        self._t0 = now if self._t0 is None else self._t0
        self.samples.append((round(now - self._t0, 1), round(mib, 1)))
        return mib

    def mark_warm(self) -> None:
        self.after_warmup = self.sample()

    def report(self) -> dict:
        if self.skipped:
            return {"skipped": self.skipped}
        values = [mib for _, mib in self.samples]
        return {"pids": self.pids, "start": values[0] if values else None,
                "after_warmup": None if self.after_warmup is None else round(self.after_warmup, 1),
                "end": values[-1] if values else None, "max": max(values, default=None),
                "samples": self.samples, **({"lost": self.lost} if self.lost else {})}

    def check(self) -> dict:
        """The "router memory flat" check for the report."""
        name = "router memory flat"
        if self.skipped:
            return {"name": name, "ok": True, "skipped": True, "detail": self.skipped}
        report = self.report()
        base = report["after_warmup"] if report["after_warmup"] is not None else report["start"]
        if self.lost or base is None:
            return {"name": name, "ok": False, "detail": self.lost or "no samples"}
        limit = base * FLAT_FACTOR + FLAT_SLACK_MIB
        return {"name": name, "ok": memory_flat(base, report["end"]),
                "detail": f"RSS start {report['start']} MiB, after warm-up {report['after_warmup']} MiB, end "
                          f"{report['end']} MiB, max {report['max']} MiB (limit {limit:.1f} MiB = after warm-up "
                          f"x {FLAT_FACTOR} + {FLAT_SLACK_MIB:.0f})"}
