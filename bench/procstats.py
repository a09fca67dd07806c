"""CPU seconds per process group during a benchmark step (psutil), to see where the machine's cores go.

Groups: our own process tree (the load generator, Ray's system processes, each Serve replica by deployment, the
engine processes below a replica, subprocess baselines) and "other" (everything not started by this benchmark,
e.g. other sessions on a shared machine: a noise indicator).
"""

from __future__ import annotations

import os
from collections import defaultdict

import psutil


def cpu_seconds(p: psutil.Process) -> float:
    """User + system CPU seconds of one process so far."""
    t = p.cpu_times()
    return t.user + t.system


class ProcessGroups:
    """Snapshot CPU times of every process and attribute the difference between snapshots to groups."""

    def __init__(self, root_pid: int | None = None, labels: dict[int, str] | None = None) -> None:
        self.root_pid = root_pid or os.getpid()
        #: Explicit labels for subtrees (pid -> group), e.g. the engine baseline's subprocess.
        self.labels = dict(labels or {})

    def label(self, pid: int, group: str) -> None:
        self.labels[pid] = group

    def _group_of(self, proc: psutil.Process, names: dict[int, str], parents: dict[int, int]) -> str:
        chain = []
        pid = proc.pid
        while pid and pid in names and len(chain) < 64:
            chain.append(pid)
            if pid in self.labels:
                return self.labels[pid]
            pid = parents.get(pid, 0)
        if self.root_pid not in chain:
            return "other"
        # Inside our tree: name by the nearest Serve replica ancestor, else by the process itself.
        for p in chain:
            name = names[p]
            if "ServeReplica:" in name:
                # Ray's process title: "ray::ServeReplica:<app>:<deployment>[.<method>]", padded with spaces.
                app_deployment = name.split("ServeReplica:", 1)[1].split()[0].split(".")[0]
                return f"{app_deployment.replace(':', '/')}" + ("" if p == proc.pid else "/engine")
        if proc.pid == self.root_pid:
            return "bench-driver"
        return "ray-system"

    def snapshot(self) -> dict[int, tuple[str, float]]:
        names: dict[int, str] = {}
        parents: dict[int, int] = {}
        procs = []
        for p in psutil.process_iter(["pid", "ppid", "name", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or []) or p.info["name"] or ""
                names[p.pid] = cmd[:200]
                parents[p.pid] = p.info["ppid"] or 0
                procs.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        out = {}
        for p in procs:
            try:
                out[p.pid] = (self._group_of(p, names, parents), cpu_seconds(p))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    @staticmethod
    def diff(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        """CPU seconds per group between two snapshots (processes that started in between count fully)."""
        groups: dict[str, float] = defaultdict(float)
        for pid, (group, cpu) in after.items():
            prev = before.get(pid)
            groups[group] += cpu - (prev[1] if prev else 0.0)
        return {g: round(v, 3) for g, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v > 0.0005}

    def niceness(self) -> dict[str, list[int]]:
        """Nice values seen per group (our tree and labelled subtrees only)."""
        seen: dict[str, set[int]] = defaultdict(set)
        names = {}
        parents = {}
        procs = []
        for p in psutil.process_iter(["pid", "ppid", "name", "cmdline", "nice"]):
            cmd = " ".join(p.info["cmdline"] or []) or p.info["name"] or ""
            names[p.pid] = cmd[:200]
            parents[p.pid] = p.info["ppid"] or 0
            procs.append(p)
        for p in procs:
            group = self._group_of(p, names, parents)
            if group != "other" and p.info.get("nice") is not None:
                seen[group].add(p.info["nice"])
        return {g: sorted(v) for g, v in sorted(seen.items())}
