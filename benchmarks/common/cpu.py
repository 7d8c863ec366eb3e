"""Where the CPU goes: CPU seconds of this benchmark's own processes, by role, over a span.

The private cluster's processes are the descendants of the components ``streamrec up``
started (broker, MLflow, Ray head: its raylet starts every Ray worker, so Serve's proxy,
controller and replicas are among them), plus this process (the load generator). Other
processes on the machine (a test suite running beside) are counted only in the machine's
total, so a busy neighbour shows as ``machine_busy_cores`` well above what ours use.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass

import psutil

from infra.components import all_components
from infra.processes import read_record
from infra.settings import Settings

TOP_ROLES = 6  # roles listed by name in ``usage``; the rest are summed


@dataclass(frozen=True)
class Snapshot:
    at: float
    by_pid: dict[int, tuple[str, float, float]]  # pid -> (role, cpu seconds, rss MB)
    machine_busy: float  # CPU seconds of the whole machine, all cores, not idle


def role(process: psutil.Process) -> str:
    """A short name for what a process does: the Ray actor class, or the program."""
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "gone"
    if process.pid == os.getpid():
        return "load generator (this process)"
    first = cmdline[0] if cmdline else process.name()
    if first.startswith("ray::"):
        name = first[5:].split(" ")[0]
        if name.startswith("ServeReplica:"):
            return "replica " + name.split(":", 2)[-1].split(".")[0]  # ServeReplica:app:Deployment
        return name.split(".")[0]
    program = os.path.basename(first)
    if program.startswith("python") and len(cmdline) > 1:
        script = next((part for part in cmdline[1:] if not part.startswith("-")), "")
        return f"python {os.path.basename(script)}"
    return program


class CpuMeter:
    """Snapshots of the CPU time of this run's processes; ``per_request`` between two of them."""

    def __init__(self, settings: Settings) -> None:
        self.roots = [psutil.Process()]
        for component in all_components(settings):
            record = read_record(component.pid_file)
            if record is not None and record.alive():
                self.roots.append(psutil.Process(record.pid))

    def processes(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for root in self.roots:
            try:
                for process in [root, *root.children(recursive=True)]:
                    found[process.pid] = process
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def snapshot(self) -> Snapshot:
        by_pid = {}
        for process in self.processes():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    by_pid[process.pid] = (role(process), times.user + times.system, process.memory_info().rss / 2**20)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        machine = psutil.cpu_times()
        busy = sum(getattr(machine, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
        return Snapshot(time.monotonic(), by_pid, busy)

    @staticmethod
    def usage(before: Snapshot, after: Snapshot, requests: int) -> dict[str, object]:
        """CPU ms per request by role (ours), their total, and the machine's busy cores meanwhile."""
        spent: dict[str, float] = defaultdict(float)
        for pid, (name, cpu, _) in after.by_pid.items():
            spent[name] += cpu - (before.by_pid[pid][1] if pid in before.by_pid else 0.0)
        seconds = max(after.at - before.at, 1e-9)
        ours = sum(spent.values())
        ranked = sorted(spent.items(), key=lambda item: -item[1])
        per_request = {name: round(value / max(requests, 1) * 1000, 3) for name, value in ranked[:TOP_ROLES]}
        per_request["other processes of ours"] = round(
            sum(v for _, v in ranked[TOP_ROLES:]) / max(requests, 1) * 1000, 3
        )
        total_ms = ours / max(requests, 1) * 1000
        return {
            "cpu_ms_per_request": per_request,
            "cpu_ms_per_request_total": round(total_ms, 3),
            "our_busy_cores": round(ours / seconds, 2),
            "machine_busy_cores": round((after.machine_busy - before.machine_busy) / seconds, 2),
        }

    @staticmethod
    def rss_mb(snapshot: Snapshot) -> dict[str, float]:
        """Resident memory by role (MB)."""
        memory: dict[str, float] = defaultdict(float)
        for name, _, rss in snapshot.by_pid.values():
            memory[name] += rss
        return {name: round(value) for name, value in sorted(memory.items(), key=lambda item: -item[1])}

    def process_facts(self, name: str) -> dict[str, object]:
        """Niceness and thread count of the first process whose role is ``name`` (Ray starts its
        workers at niceness 15, so any nice-0 process on the machine runs before them)."""
        for process in self.processes():
            if role(process) == name:
                try:
                    return {"role": name, "nice": process.nice(), "threads": process.num_threads()}
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
        return {}
