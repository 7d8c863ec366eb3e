"""Freshness as a user sees it: a brand-new item's first event to it being served, through the
whole path (Kafka -> `streamrec ingest` -> silver -> `streamrec train --follow` -> a model delta
-> each serving replica's follower -> /retrieve and /recommend), on a private mini-cluster.

Set-up: a synthetic stream is produced, ingested and built into features; a small HSTU is
trained, registered, promoted and served. Then `streamrec ingest` runs as a stream (trigger
``ingest.trigger_interval_s``, 1 s) and `streamrec train --follow --publish-every
<--publish-every>` runs beside it, while (all at once, for ``--duration`` seconds):

* a steady open-loop /recommend load of known users (``benchmarks.common.loadgen``) records
  every answer's ``lineage.delta``: (2) a delta's publish (its ``published_ms``) to the first
  answer naming its sequence or a later one, and the failed requests;
* a background producer sends clicks of known users on known items at ``--background-rate``
  per second, so the follow job has a steady stream to learn;
* trials, one after the other: a brand-new item id gets ``--events-per-user`` clicks from each
  of ``--users-per-trial`` known users, produced to Kafka as the app would; then the first of
  those users is asked for until the item is in /retrieve's top 100 (the user's stored online
  history, which now ends at the item) and in /recommend's (``exclude_seen`` false: the user
  has seen it by construction; no ranker is served here, so /recommend is retrieval's list):
  (1) seconds from the item's first event, with the answer's ``lineage.delta``, checked against
  the delta that first named the item (the table's ``new_items``).
* (3) CPU: the follow job's process tree and the serving replicas/ingress (``benchmarks.common.cpu``),
  in cores and as a share of the machine, next to the load's p99; the follow job's events/s learned
  from its progress lines.

    .venv/bin/python -m benchmarks.streaming.freshness [--quick] [--trials 10] [--duration 300]

Writes benchmarks/results/freshness.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from benchmarks.common import loadgen
from benchmarks.common.cpu import CpuMeter, Snapshot
from benchmarks.harness import (
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
from infra import cluster
from infra.settings import Settings

RESULT = RESULTS / "freshness.json"
QUICK = {"trials": 2, "duration": 150.0, "users": 300, "items": 600, "events": 8_000}
FULL = {"trials": 10, "duration": 330.0, "users": 500, "items": 1_000, "events": 20_000}
TOP_K = 100
TARGET_NEW_ITEM_P95_S = 60.0
TARGET_DELTA_P95_S = 5.0
PROGRESS = re.compile(r"delta \S+ v\d+ #(\d+): ([\d,]+) events learned")
SERVING_ROLES = ("replica ", "haproxy", "ProxyActor")  # the app's replicas and the ingress


# Pure bookkeeping (tests/benchmarks/test_freshness.py) ---------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation, as numpy's default) rounded to ms; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 3)


def spread(values: list[float]) -> dict[str, Any]:
    """n, p50, p95 and max of ``values`` (seconds)."""
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": round(max(values), 3) if values else None}  # fmt: skip


@dataclass
class SequenceSightings:
    """The first time (wall clock, s) each delta sequence was named by a served answer."""

    first_seen: dict[int, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, sequence: int, at: float) -> None:
        with self.lock:
            if sequence not in self.first_seen or at < self.first_seen[sequence]:
                self.first_seen[sequence] = at

    def visible_at(self, sequence: int) -> float | None:
        """When ``sequence`` was first visible: the first answer naming it or a later one (a replica
        that applied two deltas between answers shows only the later)."""
        times = [at for seen, at in self.first_seen.items() if seen >= sequence]
        return min(times) if times else None


def publish_to_visible(published_ms: dict[int, int], sightings: SequenceSightings, after_s: float) -> list[float]:
    """Seconds from each delta's publish to its first sighting, for deltas published after
    ``after_s`` (when the load began); a delta never seen is left out (``unseen_deltas`` counts it)."""
    lags = []
    for sequence, published in sorted(published_ms.items()):
        seen = sightings.visible_at(sequence)
        if published / 1000 >= after_s and seen is not None:
            lags.append(max(0.0, seen - published / 1000))
    return lags


def unseen_deltas(published_ms: dict[int, int], sightings: SequenceSightings, after_s: float, before_s: float) -> int:
    """Deltas published in [after_s, before_s) that no answer named."""
    return sum(after_s <= p / 1000 < before_s and sightings.visible_at(s) is None for s, p in published_ms.items())


def learned_rate(lines: list[tuple[float, str]], start: float, end: float) -> dict[str, Any]:
    """The follow job's events learned per second between its first and last progress line in
    [start, end] (wall clock): events learned is cumulative in each line."""
    points = [(at, int(match.group(2).replace(",", ""))) for at, line in lines
              if start <= at <= end and (match := PROGRESS.search(line))]  # fmt: skip
    if len(points) < 2:
        return {"deltas": len(points), "events": None, "events_per_s": None}
    (first_at, first), (last_at, last) = points[0], points[-1]
    rate = round((last - first) / (last_at - first_at), 1)
    return {"deltas": len(points), "events": last - first, "events_per_s": rate}


def summarise_trials(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """(1): how many new items were found, their seconds to /retrieve and /recommend, and
    whether each answer's lineage reached the delta that brought the item."""
    retrieve = [t["retrieve_s"] for t in trials if t.get("retrieve_s") is not None]
    recommend = [t["recommend_s"] for t in trials if t.get("recommend_s") is not None]
    named = [t for t in trials if t.get("brought_by") is not None and t.get("retrieve_sequence") is not None]
    return {
        "trials": len(trials),
        "found_in_retrieve": len(retrieve),
        "found_in_recommend": len(recommend),
        "retrieve_s": spread(retrieve),
        "recommend_s": spread(recommend),
        "lineage_names_bringing_delta": sum(t["retrieve_sequence"] >= t["brought_by"] for t in named),
        "target_p95_s": TARGET_NEW_ITEM_P95_S,
        "met": len(retrieve) == len(trials) > 0 and (spread(retrieve)["p95"] or math.inf) <= TARGET_NEW_ITEM_P95_S,
    }


def cpu_by_role(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Cores each role used between two snapshots."""
    seconds = max(after.at - before.at, 1e-9)
    spent: dict[str, float] = {}
    for pid, (name, cpu, _) in after.by_pid.items():
        spent[name] = spent.get(name, 0.0) + cpu - (before.by_pid[pid][1] if pid in before.by_pid else 0.0)
    return {name: round(value / seconds, 3) for name, value in sorted(spent.items(), key=lambda item: -item[1])}


# The run ----------------------------------------------------------------------------------------


def tree_cpu_seconds(process: psutil.Popen | psutil.Process) -> float:
    """CPU seconds of a process and its live children."""
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


class Tail:
    """A subprocess whose output lines are kept with their arrival time."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.lines: list[tuple[float, str]] = []
        self.log_file = log_path.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # progress lines as they happen, not per pipe buffer
        self.process = psutil.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.time(), line.rstrip()))
            self.log_file.write(line)
            self.log_file.flush()

    def wait_for(self, pattern: str, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if any(pattern in line for _, line in self.lines):
                return
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited {self.process.returncode}: {self.lines[-20:]}")
            time.sleep(0.5)
        raise SystemExit(f"{self.name}: no '{pattern}' in {timeout_s:.0f} s: {self.lines[-20:]}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 60 s; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except psutil.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.thread.join(5)
        self.log_file.close()
        return self.process.returncode


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("streamrec")), *args]


def pipeline(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Synthetic events -> Kafka -> ingest -> features -> a small HSTU, promoted and served."""
    from features.build import build
    from ingestion.producer import encode_event, produce
    from ingestion.stream import run_ingest
    from ingestion.synthetic import SyntheticConfig, generate_events
    from serving.deploy import deploy
    from serving.registry import promote
    from training.common.config import EncoderConfig
    from training.retrieval.config import TrainConfig
    from training.retrieval.runner import train

    with phase("cluster up"):
        cluster.up(settings, ["kafka", "mlflow", "ray"])
    synthetic = SyntheticConfig(users=args.users, items=args.items, events=args.events, seed=args.seed)
    events = list(generate_events(synthetic))
    with phase("produce, ingest, features"):
        produce((encode_event(e) for e in events), settings, total=len(events), show_progress=False)
        run_ingest(settings, until_idle=True, report=lambda *_: None)
        build(settings, incremental=True, log=lambda *_: None)
    config = TrainConfig(encoder=EncoderConfig(kind="hstu", dim=args.dim, max_len=args.max_len),
                         epochs=args.epochs, patience=0, seed=args.seed)  # fmt: skip
    with phase("train"):
        run = train(settings, config, workers=1, log=lambda *_: None)
    with phase("promote, deploy"):
        promote(settings, run.model_version)
        health = deploy(settings)
    return {
        "synthetic": {"users": args.users, "items": args.items, "events": args.events, "seed": args.seed},
        "base": {"version": run.model_version, "encoder": config.encoder.model_dump(mode="json"),
                 "epochs": args.epochs, "items": health["model"]["items"], "index": health["model"]["index"]},
        "users": sorted({event["user_id"] for event in events}),
        "items": sorted({event["item_id"] for event in events}),
    }  # fmt: skip


class Producer:
    """Events to the topic as the app would send them (one producer, thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        from ingestion.producer import open_producer

        self.settings, self.producer, self.lock = settings, open_producer(settings), threading.Lock()

    def send(self, user: str, item: str, action: str = "click") -> None:
        from ingestion.producer import encode_event

        event = {"event_id": f"fresh-{uuid.uuid4().hex}", "user_id": user, "item_id": item, "action": action,
                 "ts": int(time.time() * 1000)}  # fmt: skip
        record = encode_event(event)
        with self.lock:
            self.producer.send(self.settings.kafka.topic, key=record.key, value=record.value)
            self.producer.flush()

    def close(self) -> None:
        self.producer.close()


def background(producer: Producer, users: list[str], items: list[str], rate: float, stop: threading.Event) -> None:
    """Clicks of known users on known items at ``rate`` per second until ``stop``."""
    rng = random.Random(1)
    while not stop.wait(1 / rate):
        producer.send(rng.choice(users), rng.choice(items))


def trial(url: str, producer: Producer, users: list[str], number: int, args: argparse.Namespace) -> dict[str, Any]:
    """One new item: clicks from ``users``, then ask for the first user until the item is in
    /retrieve's and /recommend's top 100 (or ``--trial-timeout``)."""
    item = f"fresh-{number}-{uuid.uuid4().hex[:6]}"
    first = time.time()
    for _ in range(args.events_per_user):
        for user in users:
            producer.send(user, item)
    found: dict[str, Any] = {"item": item, "users": users, "first_event": first,
                             "retrieve_s": None, "recommend_s": None, "retrieve_sequence": None}  # fmt: skip
    session = requests.Session()
    asked: dict[str, Any] = {"user_id": users[0], "k": TOP_K}
    while time.time() - first < args.trial_timeout and (found["retrieve_s"] is None or found["recommend_s"] is None):
        for endpoint, body in (("retrieve", asked), ("recommend", {**asked, "exclude_seen": False})):
            if found[f"{endpoint}_s"] is not None:
                continue
            try:
                response = session.post(f"{url}/{endpoint}", json=body, timeout=30)
            except requests.RequestException:
                response = None
            if response is None or response.status_code != 200:  # the steady load counts failures; ask again
                found[f"{endpoint}_errors"] = found.get(f"{endpoint}_errors", 0) + 1
                continue
            answer = response.json()
            if item in {entry["item_id"] for entry in answer["items"]}:
                found[f"{endpoint}_s"] = round(time.time() - first, 3)
                found[f"{endpoint}_sequence"] = (answer["lineage"]["delta"] or {}).get("sequence")
        time.sleep(args.poll)
    return found


def delta_facts(settings: Settings, version: str, width: int) -> tuple[dict[int, int], dict[str, int]]:
    """Each delta's publish time (ms) and, per new item, the first delta that named it."""
    from training.streaming.deltas import MODEL_DELTAS_TABLE, DeltaPosition, ModelDeltaTable

    table = ModelDeltaTable(settings.table_uri(MODEL_DELTAS_TABLE))
    published: dict[int, int] = {}
    brought: dict[str, int] = {}
    for delta in table.after(DeltaPosition(settings.mlflow.registered_model, int(version)), width=width):
        published[delta.sequence] = delta.published_ms
        for item in delta.new_items:
            brought.setdefault(item, delta.sequence)
    return published, brought


def measure(settings: Settings, args: argparse.Namespace, built: dict[str, Any], home: Path) -> dict[str, Any]:
    from serving.deploy import base_url

    url = base_url(settings)
    ingest = Tail("ingest", cli("ingest"), home / "ingest.log")
    follow = Tail("follow", cli("train", "--follow", "--publish-every", str(args.publish_every)), home / "follow.log")
    producer = Producer(settings)
    stop = threading.Event()
    try:
        with phase("ingest stream and follow job start"):
            follow.wait_for("(Ctrl-C stops)", 300)
            time.sleep(10)  # the ingest stream's Spark session starts meanwhile
        rng = random.Random(args.seed)
        users, items = built["users"], built["items"]
        feeder = threading.Thread(target=background, args=(producer, users, items, args.background_rate, stop))
        feeder.start()
        sightings = SequenceSightings()
        trials: list[dict[str, Any]] = []

        def on_body(_: float, payload: bytes) -> None:
            delta = json.loads(payload)["lineage"]["delta"]
            sightings.saw(delta["sequence"] if delta else 0, time.time())

        async def side(_: float) -> None:
            import asyncio

            loop = asyncio.get_running_loop()
            ends = time.time() + args.duration - args.trial_timeout - 5
            for number in range(args.trials):
                if time.time() > ends:
                    log(f"out of time after {number} trials")
                    break
                chosen = rng.sample(users, args.users_per_trial)
                found = await loop.run_in_executor(None, trial, url, producer, chosen, number, args)
                log(f"trial {number}: {found['item']} /retrieve {found['retrieve_s']} s, "
                    f"/recommend {found['recommend_s']} s, lineage #{found['retrieve_sequence']}")  # fmt: skip
                trials.append(found)

        bodies = [json.dumps({"user_id": user}).encode() for user in rng.sample(users, 50)]
        spec = loadgen.LoadSpec(url=f"{url}/recommend", rate=args.rate, duration_s=args.duration, bodies=bodies)
        meter = CpuMeter(settings)
        with phase("measure"):
            began, before, follow_before = time.time(), meter.snapshot(), tree_cpu_seconds(follow.process)
            load = loadgen.run(spec, on_body=on_body, side=side)
            ended, after, follow_after = time.time(), meter.snapshot(), tree_cpu_seconds(follow.process)
        stop.set()
        feeder.join()
        published, brought = delta_facts(settings, built["base"]["version"], args.dim)
    finally:
        stop.set()
        producer.close()
        codes = {"follow": follow.stop(), "ingest": ingest.stop()}
    for found in trials:
        found["brought_by"] = brought.get(found["item"])
    roles = cpu_by_role(before, after)
    cores = psutil.cpu_count() or 1
    wall = ended - began
    follow_cores = (follow_after - follow_before) / wall
    serving_cores = sum(value for name, value in roles.items() if name.startswith(SERVING_ROLES))
    machine_cores = (after.machine_busy - before.machine_busy) / max(after.at - before.at, 1e-9)
    lags = publish_to_visible(published, sightings, began)
    return {
        "new_item": {**summarise_trials(trials), "per_trial": trials},
        "delta_publish_to_visible": {
            "s": spread(lags),
            "deltas_published_during_load": sum(began <= p / 1000 < ended for p in published.values()),
            "unseen": unseen_deltas(published, sightings, began, ended - 2),
            "failed_requests": load["errors"],
            "target_p95_s": TARGET_DELTA_P95_S,
            "met": bool(lags) and (percentile(lags, 95) or math.inf) <= TARGET_DELTA_P95_S and load["errors"] == 0,
        },
        "load": load,
        "cpu": {
            "seconds": round(wall, 1),
            "machine_cores": cores,
            "follow_job_cores": round(follow_cores, 3),
            "follow_job_share": round(follow_cores / cores, 3),
            "serving_cores": round(serving_cores, 3),
            "serving_share": round(serving_cores / cores, 3),
            "machine_busy_cores": round(machine_cores, 2),
            "by_role_cores": roles,
            "serving_p99_ms": load["p99_ms"],
            "follow_learned": learned_rate(follow.lines, began, ended),
            "background_events_per_s": args.background_rate,
        },
        "exit_codes": codes,
        "follow_log_tail": [line for _, line in follow.lines[-5:]],
    }


def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    env = {"STREAMREC_TOPIC": "bench-freshness", "STREAMREC_REGISTERED_MODEL": "bench-freshness-retrieval",
           "STREAMREC_MLFLOW_EXPERIMENT": "bench-freshness"}  # fmt: skip
    settings = private_settings(home, **env)
    result = header("freshness", args, [args.seed])
    load_before = loads()
    started = time.perf_counter()
    try:
        built = pipeline(settings, args)
        result["setup"] = {key: built[key] for key in ("synthetic", "base")}
        result.update(measure(settings, args, built, home))
    finally:
        shutdown(settings)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_before_after"] = [load_before, loads()]
    write_result(args.out, result)
    return result


def summarise(result: dict[str, Any]) -> None:
    new, delta, cpu = result["new_item"], result["delta_publish_to_visible"], result["cpu"]
    print(json.dumps({key: new[key] for key in new if key != "per_trial"}, indent=1))
    print(json.dumps(delta, indent=1))
    print(json.dumps({key: cpu[key] for key in cpu if key != "by_role_cores"}, indent=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    parser.add_argument("--trials", type=int, help="new items, one after the other")
    parser.add_argument("--duration", type=float, help="seconds of load, background events and trials")
    parser.add_argument("--users", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--publish-every", type=float, default=5.0)
    parser.add_argument("--users-per-trial", type=int, default=3)
    parser.add_argument("--events-per-user", type=int, default=3)
    parser.add_argument("--trial-timeout", type=float, default=90.0)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between a trial's asks")
    parser.add_argument("--rate", type=float, default=5.0, help="/recommend requests per second of the steady load")
    parser.add_argument("--background-rate", type=float, default=20.0, help="known users' clicks per second")
    parser.add_argument("--out", type=Path, default=RESULT)
    return with_preset(parser.parse_args(argv), QUICK, FULL)


def main() -> None:
    from infra.cli import quiet_library_logs

    quiet_library_logs()
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # run `finally`: stop the cluster
    run_in_private_home("freshness", parse_args(), run, summarise)


if __name__ == "__main__":
    main()
