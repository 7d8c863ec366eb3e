"""A serving replica killed (SIGKILL) under steady /recommend load, repeated: the figures of the
runbook's "A serving replica killed under load" (issue 30, item 3).

On a private mini-cluster, the serve benchmark's pipeline (``benchmarks.serve.run.pipeline``:
synthetic events -> ingest -> features -> a small HSTU -> promoted and deployed) serves the
model with ``--replicas`` (2) replicas through the HAProxy ingress. ``--clients`` threads send
/recommend (random known users) at a fixed total rate (``--rate``, request i scheduled at
start + i / rate, latency from the scheduled time) for the whole run, and a prober reads
/healthz every ``--probe-s``. Each of ``--trials`` kills, one after the other in the same
cluster: ``--settle-s`` of steady load with every replica RUNNING (before), SIGKILL to the
process of the replica alive longest (a replica never killed before: the previous victim is
gone), then the recovery window, until Ray Serve reports ``--replicas`` RUNNING replicas
again, then ``--settle-s`` more (after, which is the next trial's before).

Per trial: requests sent and failed, failures sent within ``--grace-s`` of the kill (in flight
on the killed replica, or sent to it before the ingress noticed) and later, seconds until a
new replica actor is alive, until Ray Serve has every replica RUNNING again, until /healthz
said degraded and until it said ok again after that, and p50/p99 latency of the answered
requests sent before, during the recovery window and after. A summary gives each figure's
median, min and max over the trials.

    .venv/bin/python -m benchmarks.serve.replica_kill [--trials 3] [--rate 50] [--quick]

Writes benchmarks/results/replica_kill.json (``--out``).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from benchmarks.harness import (
    PHASES,
    RESULTS,
    header,
    loads,
    log,
    phase,
    private_settings,
    run_in_private_home,
    shutdown,
    with_preset,
    write_result,
)
from infra.settings import Settings

RESULT = RESULTS / "replica_kill.json"
DEPLOYMENT = "Recommender"
FULL = dict(users=2_000, items=5_000, events=100_000, epochs=1, trials=3, settle_s=20.0)
QUICK = dict(users=500, items=2_000, events=20_000, epochs=1, trials=1, settle_s=8.0)


@dataclass(frozen=True)
class Request:
    """One request: its scheduled, sent and finished times (monotonic) and outcome."""

    scheduled: float
    sent: float
    ended: float
    outcome: str  # the status code, or the exception's class
    body: dict[str, Any] | None = None  # /healthz: its answer


# Bookkeeping (pure) -------------------------------------------------------------------------


def latency_ms(answered: list[Request]) -> dict[str, Any]:
    """Count, p50 and p99 of the latency (scheduled time to the end of the answer) in ms."""
    if not answered:
        return {"answered": 0, "p50_ms": None, "p99_ms": None}
    values = [(request.ended - request.scheduled) * 1000 for request in answered]
    return {
        "answered": len(values),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
    }


def healthz_recovery(probes: list[Request], killed_at: float, replicas: int) -> dict[str, float | None]:
    """Seconds from the kill to the first /healthz probe (sent after it) that said degraded, and to
    the first after that which said ok with ``replicas`` RUNNING (None where none did).

    An ok before the first degraded is not a recovery: /healthz still reads every replica RUNNING
    until Ray Serve's health check notices the death."""
    degraded_at = next((probe.sent for probe in probes if probe.sent > killed_at and probe.body
                        and probe.body.get("status") == "degraded"), None)  # fmt: skip
    ok_at = None
    if degraded_at is not None:
        ok_at = next((probe.sent for probe in probes if probe.sent > degraded_at and probe.body
                      and (probe.body.get("status"), probe.body.get("replicas")) == ("ok", {"RUNNING": replicas})),
                     None)  # fmt: skip
    return {
        "healthz_degraded_s": None if degraded_at is None else round(degraded_at - killed_at, 2),
        "healthz_ok_again_s": None if ok_at is None else round(ok_at - killed_at, 2),
    }


def trial_figures(
    done: list[Request],
    probes: list[Request],
    window: tuple[float, float, float, float],
    grace_s: float,
    replicas: int,
) -> dict[str, Any]:
    """The figures of one kill from every request and probe of the run. ``window`` = (start of
    before, the kill, every replica RUNNING again, end of after); a request belongs to the part
    in which it was sent."""
    start, killed_at, running_at, end = window
    mine = [request for request in done if start <= request.sent < end]
    failed = [request for request in mine if request.outcome != "200"]
    near = [request for request in failed if killed_at - grace_s <= request.sent <= killed_at + grace_s]
    parts = {"before": (start, killed_at), "recovery": (killed_at, running_at), "after": (running_at, end)}
    mine_probes = [probe for probe in probes if start <= probe.sent < end]
    return {
        "sent": len(mine),
        "failed": len(failed),
        "failed_sent_within_grace_of_kill": len(near),
        "failed_other": len(failed) - len(near),
        "failed_outcomes": sorted({request.outcome for request in failed}),
        "replicas_running_again_s": round(running_at - killed_at, 2),
        **healthz_recovery(probes, killed_at, replicas),
        "healthz_probes": len(mine_probes),
        "healthz_failed": sum(1 for probe in mine_probes if probe.outcome != "200"),
        "latency": {
            name: {
                "seconds": round(high - low, 1),
                **latency_ms([r for r in mine if low <= r.sent < high and r.outcome == "200"]),
            }
            for name, (low, high) in parts.items()
        },  # fmt: skip
    }


def spread(values: list[float | None]) -> dict[str, float | None]:
    """Median, min and max of the values that are not None (all None when none is)."""
    present = [value for value in values if value is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "of": 0}
    return {"median": round(statistics.median(present), 2), "min": min(present), "max": max(present),
            "of": len(present)}  # fmt: skip


def summarise_trials(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's spread over the trials; the counts summed too."""
    summary: dict[str, Any] = {"trials": len(trials)}
    for key in ("sent", "failed", "failed_sent_within_grace_of_kill", "failed_other"):
        summary[key] = {"total": sum(trial[key] for trial in trials), **spread([trial[key] for trial in trials])}
    for key in ("new_replica_actor_s", "replicas_running_again_s", "healthz_degraded_s", "healthz_ok_again_s"):
        summary[key] = spread([trial.get(key) for trial in trials])
    for part in ("before", "recovery", "after"):
        summary[f"{part}_p50_ms"] = spread([trial["latency"][part]["p50_ms"] for trial in trials])
        summary[f"{part}_p99_ms"] = spread([trial["latency"][part]["p99_ms"] for trial in trials])
    return summary


# The run ------------------------------------------------------------------------------------


class Load:
    """Steady /recommend load at a fixed total rate from several client threads, and a /healthz
    prober, until ``stop``; every request and probe recorded."""

    def __init__(self, url: str, users: list[str], rate: float, clients: int, probe_s: float, seed: int) -> None:
        self.url, self.rate, self.clients, self.probe_s = url, rate, clients, probe_s
        pick = random.Random(seed)
        self.bodies = [{"user_id": users[pick.randrange(len(users))]} for _ in range(1_000)]
        self.done: list[Request] = []
        self.probes: list[Request] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(k,), daemon=True) for k in range(clients)]
        self.threads.append(threading.Thread(target=self.prober, daemon=True))
        self.start = 0.0

    def __enter__(self) -> Load:
        self.start = time.monotonic() + 0.1
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def client(self, k: int) -> None:
        """Requests k, k + clients, ...: each at its scheduled time, or at once when this client is late."""
        session = requests.Session()
        i = k
        while not self.stopping.is_set():
            scheduled = self.start + i / self.rate
            if self.stopping.wait(max(0.0, scheduled - time.monotonic())):
                return
            sent = time.monotonic()
            try:
                outcome = str(session.post(self.url + "/recommend", json=self.bodies[i % len(self.bodies)],
                                           timeout=30).status_code)  # fmt: skip
            except requests.RequestException as error:
                outcome = error.__class__.__name__
            self.done.append(Request(scheduled, sent, time.monotonic(), outcome))
            i += self.clients

    def prober(self) -> None:
        while not self.stopping.wait(self.probe_s):
            sent = time.monotonic()
            try:
                response = requests.get(self.url + "/healthz", timeout=10)
            except requests.RequestException as error:
                self.probes.append(Request(sent, sent, time.monotonic(), error.__class__.__name__))
            else:
                self.probes.append(Request(sent, sent, time.monotonic(), str(response.status_code), response.json()))


def wait_until(condition: Any, timeout_s: float, every_s: float = 0.2) -> float:
    """Poll ``condition()`` until true; the monotonic time it was; raises after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return time.monotonic()
        except Exception:  # the controller or the dashboard busy or restarting: ask again
            pass
        time.sleep(every_s)
    raise TimeoutError(f"not true within {timeout_s} s: {condition}")


def kill_trials(settings: Settings, args: argparse.Namespace, load: Load) -> list[dict[str, Any]]:
    """``args.trials`` kills under ``load``, each with its before and after windows."""
    from serving.config import APP_NAME
    from serving.replicas import replica_pids, replica_states

    def pids() -> dict[str, int]:
        return replica_pids(settings, APP_NAME, DEPLOYMENT)

    def all_running() -> bool:
        return replica_states(APP_NAME, DEPLOYMENT) == {"RUNNING": args.replicas}

    def replaced(gone: int) -> bool:
        now = set(pids().values())
        return gone not in now and len(now) == args.replicas

    first_seen: dict[int, float] = {}
    trials = []
    start = wait_until(lambda: all_running() and len(pids()) == args.replicas, 300)
    for trial in range(args.trials):
        with phase(f"trial {trial + 1}/{args.trials}"):
            time.sleep(max(0.0, start + args.settle_s - time.monotonic()))
            alive = pids()
            for pid in alive.values():
                first_seen.setdefault(pid, time.monotonic())
            victim = min(alive.values(), key=lambda pid: (first_seen[pid], pid))
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            replaced_at = wait_until(lambda gone=victim: replaced(gone), 300)
            running_at = wait_until(all_running, 300)
            time.sleep(args.settle_s)
            end = time.monotonic()
            figures = trial_figures(load.done, load.probes, (start, killed_at, running_at, end), args.grace_s,
                                    args.replicas)  # fmt: skip
            trials.append({"trial": trial + 1, "victim_pid": victim,
                           "new_replica_actor_s": round(replaced_at - killed_at, 2), **figures})  # fmt: skip
            log(f"  killed {victim}: {figures['failed']}/{figures['sent']} failed "
                f"({figures['failed_sent_within_grace_of_kill']} near the kill), RUNNING again after "
                f"{figures['replicas_running_again_s']} s, /healthz ok after "
                f"{figures['healthz_ok_again_s']} s")  # fmt: skip
            start = end
    return trials


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: a small pipeline, one short trial")
    parser.add_argument("--trials", type=int, help="kills, one after the other in the same cluster")
    parser.add_argument("--settle-s", type=float, help="seconds of steady load before each kill and after recovery")
    parser.add_argument("--rate", type=float, default=50.0, help="/recommend requests per second, all clients")
    parser.add_argument("--clients", type=int, default=8, help="client threads sharing the rate (each one closed loop)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--grace-s", type=float, default=1.0, help="a failure sent this close to the kill is its own")
    parser.add_argument("--probe-s", type=float, default=0.25, help="/healthz probe interval")
    parser.add_argument("--users", type=int)
    parser.add_argument("--items", type=int, help="items of the synthetic event model")
    parser.add_argument("--events", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT)
    return with_preset(parser.parse_args(), QUICK, FULL)


def main() -> None:
    run_in_private_home("replica-kill", parse_args(), run, print_summary)


def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """The pipeline, the load and the kills on a private cluster in ``home``; the result, written to ``args.out``."""
    from benchmarks.serve.run import base, pipeline

    started = time.perf_counter()
    load_start = loads()
    settings = private_settings(
        home,
        STREAMREC_TOPIC="bench-replica-kill",
        STREAMREC_REGISTERED_MODEL="bench-replica-kill-retrieval",
        STREAMREC_MLFLOW_EXPERIMENT="bench-replica-kill",
        STREAMREC_TRAIN_WORKERS=str(args.workers),
        STREAMREC_SERVE_REPLICAS=str(args.replicas),
        STREAMREC_SERVE_INGRESS="haproxy",
    )
    result: dict[str, Any] = {
        **header("replica_kill", args, seeds=[args.seed]),
        "settings": {key: value for key, value in settings.flat_dump(mode="json").items() if key.startswith("serve_")},
    }
    try:
        result["pipeline"] = pipeline(settings, args)
        users = result["pipeline"].pop("known_users")
        with Load(base(settings), users, args.rate, args.clients, args.probe_s, args.seed) as load:
            result["trials"] = kill_trials(settings, args, load)
        seconds = load.done[-1].sent - load.start if load.done else 0.0
        result["load"] = {"rate": args.rate, "clients": args.clients, "sent": len(load.done),
                          "achieved_rate": round(len(load.done) / seconds, 1) if seconds else None}  # fmt: skip
    finally:
        shutdown(settings)
    result["summary"] = summarise_trials(result["trials"])
    result["phases"] = PHASES
    result["machine"]["load_average_1_5_15_min"] = {"start": load_start, "end": loads()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.out, result)
    return result


def print_summary(result: dict[str, Any]) -> None:
    summary = result["summary"]
    print(f"{summary['trials']} kills at {result['load']['rate']}/s ({result['load']['achieved_rate']}/s achieved):")
    for key, value in summary.items():
        if key != "trials":
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
