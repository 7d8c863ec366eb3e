"""`make demo`: the streamrec loop end to end on the local mini-cluster.

Starts the mini-cluster, streams synthetic user actions (a few of them malformed) into
Kafka, ingests them exactly once into bronze/quarantine/silver, brings the feature tables
(ranking examples included) up to date, trains the popularity baseline, SASRec and HSTU on
Ray Train, registers the models in MLflow, serves the better one (by validation NDCG@10)
with Ray Serve, shows a few users' recommendations and how a new action changes them, trains
the multi-task ranker on Ray Train (next to the popularity ranking baseline), promotes it and
shows /recommend ranked by it, then runs one round of the loop as a Dagster run (new events,
features, training from production, the promotion gate: `loop_job`, which the UI shows) and,
on the day after, the gate of its candidate as a second one (`promotion_job`, as the
registered-model sensor requests it), while a client keeps asking for recommendations, and
prints what every stage made.
Each stage names the `streamrec` command that does the same by hand. Running it again sends the very same events again:
bronze records the re-sent records, silver keeps one copy of each event, the features
stay as they were and training runs once more.

    .venv/bin/streamrec demo [--events 200000] [--epochs 15] [--ranking-epochs 2] [--workers 2]   (`make demo`)
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from deltalake import DeltaTable
from rich.table import Table

from features.build import build as build_features
from features.ranking import RankingSpec
from features.tables import RANKING_EXAMPLES_TABLE
from infra import cluster
from infra.cli import quiet_library_logs, ray_dashboard_line
from infra.console import make_console
from infra.dagster_automation import DagsterApiError
from infra.dagster_runs import launch_run, run_materializations, run_url, wait_for_run
from infra.polling import wait_until
from infra.settings import Settings, get_settings
from ingestion.checkpoints import set_aside_checkpoint_of_empty_topic
from ingestion.day_feed import produce_days, send_days
from ingestion.producer import encode_event, produce, with_bad_records
from ingestion.schema import BRONZE_TABLE, QUARANTINE_TABLE, SILVER_TABLE
from ingestion.stream import run_ingest
from ingestion.synthetic import DAY_MS, SyntheticConfig, default_start_ms, events_between_days
from serving.deploy import base_url, deploy, health
from serving.registry import promote
from training.common import tracking
from training.ranking.runner import train_ranking_popularity
from training.retrieval.config import TrainConfig
from training.retrieval.popularity import train_popularity
from training.retrieval.runner import train
from workflows.demo_options import DemoOptions
from workflows.lineage import split_rows
from workflows.promotion import Comparison, pending_candidate
from workflows.resources import streamrec_resource_config
from workflows.rounds import WARM_START_TRAIN, RankingOptions, train_ranker
from workflows.sensors import pending_request

console = make_console(highlight=False)
LOOP_RUN_TIMEOUT_S = 1_800.0  # the round's Dagster run: ingest, features and a warm start
GATE_RUN_TIMEOUT_S = 900.0  # the gate's Dagster run: both models evaluated on the newest day
METRICS = ("hr_10", "ndcg_10", "hr_50", "ndcg_50", "mrr")
PROTOCOLS = {"filtered": "test_", "all": "test_all_"}  # label: MLflow key prefix
RANKING_COLUMNS = {  # column: (popularity key, ranker key)
    "val AUC click": ("val_auc_click", "best_val_auc_click"),
    "test AUC click": ("test_auc_click", "test_auc_click"),
    "test GAUC click": ("test_gauc_click", "test_gauc_click"),
    "test AUC like": ("test_auc_like", "test_auc_like"),
    "test AUC purchase": ("test_auc_purchase", "test_auc_purchase"),
}


def run_demo(args: DemoOptions) -> None:
    """Run every stage once and print a summary of what each made."""
    quiet_library_logs()
    # The loop round runs as a Dagster run, so the demo starts Dagster even where it is switched off.
    settings = get_settings(dagster_enabled=True)
    started = time.monotonic()

    _stage(1, "local mini-cluster", "streamrec up")
    for state in cluster.up(settings):
        console.print(f"{state.name:7} {state.mode:8} {state.address:28} {state.detail}")

    _stage(2, f"produce {args.events:,} synthetic events", f"streamrec produce synthetic --events {args.events}")
    kept = set_aside_checkpoint_of_empty_topic(settings)
    if kept:
        console.print(f"the topic is new (broker restarted): ingest starts over; old checkpoint kept at {kept}")
    stream = _stream(settings, args)
    records = with_bad_records(events_between_days(stream, None, STREAM_DAYS), args.bad_fraction, settings, args.seed)
    sent = produce(records, settings, total=args.events, description="synthetic events")
    console.print(f"sent {sent.sent:,} records ({sent.invalid:,} malformed) at {sent.rate:,.0f}/s")

    _stage(3, "ingest into bronze, quarantine and silver (exactly once)", "streamrec ingest --until-idle")
    ingested = run_ingest(settings, until_idle=True, report=lambda line: console.print(str(line), markup=False))
    console.print(f"ingested {ingested.records:,} records in {ingested.seconds:.1f}s")
    console.print(_lake_table(settings))

    _stage(4, "feature tables (ranking examples too)", "streamrec features build --incremental --ranking")
    # The ranking examples in the same build: a new lake's first build is a full (Spark) one either way.
    report = build_features(
        settings, incremental=True, log=lambda line: console.print(line, markup=False), ranking=RankingSpec()
    )
    console.print(f"feature versions: {report.versions()}")

    _stage(5, "training on Ray Train (sharded item table), tracked in MLflow", "streamrec train --model hstu")
    results: dict[str, dict[str, float]] = {}
    versions: dict[str, str] = {}
    results["popularity"] = train_popularity(settings, args.train_config("hstu"))  # its evaluation options
    for kind in ("sasrec", "hstu"):
        outcome = train(settings, args.train_config(kind), workers=args.workers, log=console.print)
        results[kind], versions[kind] = outcome.metrics, outcome.model_version

    _stage(6, "summary", "streamrec evaluate latest")
    console.print(_metrics_table(results, versions))
    console.print(
        f"registered model {settings.mlflow.registered_model}: HSTU is version {versions['hstu']}, "
        f"SASRec version {versions['sasrec']}"
    )

    best = max(versions, key=lambda kind: results[kind]["best_val_ndcg_10"])  # chosen on validation, never test
    _stage(
        7,
        f"serve {best} (best validation NDCG@10)",
        f"streamrec promote --version {versions[best]}; streamrec serve up",
    )
    promote(settings, versions[best])
    health = deploy(settings)
    console.print(
        f"serving version {health['model']['version']} ({health['model']['items']:,} items, "
        f"{health['model']['index']} index) at {base_url(settings)}"
    )
    users = _busiest_users(settings, 2)
    for user in users:
        console.print(_recommendations_table(user, _recommend(settings, user)))

    _stage(8, "a new action changes the recommendations", "streamrec produce ... ; streamrec recommend --user U")
    assert stream.start_ms is not None
    _show_live_update(settings, users[0], at_ms=stream.start_ms + int(STREAM_DAYS * DAY_MS) + 1_000)

    _stage(
        9,
        "a multi-task ranker on Ray Train, served after retrieval",
        f"streamrec features build --incremental --ranking; streamrec train-ranking --epochs {args.ranking_epochs}; "
        f"streamrec promote --model {settings.mlflow.registered_ranking_model} --version V (dagster job ranking_job)",
    )
    _ranking_stage(settings, args, users[0])

    _stage(
        10,
        "two more days, a warm-start round, the freshness gate",
        "dagster job launch -j loop_job -m workflows.definitions (the hourly schedule's job); the gate of the "
        "waiting candidate: a run of promotion_job, as the registered_model_sensor requests it",
    )
    _warm_start_round(settings, args, users[0])
    _closing_lines(settings, started)


def _closing_lines(settings: Settings, started: float) -> None:
    """Where to look next (the UIs, how to sign in to Ray's, the API, the lake) and the demo's time."""
    console.print(f"MLflow UI: {tracking.ui_url(settings)}")
    console.print(ray_dashboard_line(settings))  # as `streamrec up` prints it
    console.print(f"serving API: {base_url(settings)}/docs   lake: {settings.lake_root}")
    console.print(f"demo finished in {time.monotonic() - started:.0f}s; the cluster keeps running (`streamrec down`)")


def _recommend(settings: Settings, user: str, k: int = 5) -> dict[str, Any]:
    response = requests.post(f"{base_url(settings)}/recommend", json={"user_id": user, "k": k}, timeout=30)
    response.raise_for_status()
    return dict(response.json())


def _busiest_users(settings: Settings, count: int) -> list[str]:
    """The users with the most events in silver (their recommendations are the most telling)."""
    users = DeltaTable(settings.table_uri(SILVER_TABLE)).to_pyarrow_dataset().to_table(columns=["user_id"])
    counts = users.group_by("user_id").aggregate([("user_id", "count")]).sort_by([("user_id_count", "descending")])
    return [str(user) for user in counts["user_id"][:count].to_pylist()]


def _recommendations_table(user: str, answer: dict[str, Any]) -> Table:
    """The items of a /recommend answer; with a ranker served, each task's probability too."""
    history = answer["lineage"]["history"]
    models = ", ".join(f"{name} v{version}" for name, version in answer["lineage"]["model_version"].items())
    tasks = list(answer["items"][0].get("scores") or {}) if answer["items"] else []
    ranked = "; score: the ranker's task probabilities blended" if tasks else ""
    table = Table(
        title=f"/recommend for {user}",
        caption=f"history: {history['events']} events, Kafka partition {history['partition']} "
        f"offset {history['offset']}; models: {models}{ranked}",
        min_width=60,
    )
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    for task in tasks:
        table.add_column(task, justify="right")
    for rank, item in enumerate(answer["items"], start=1):
        scores = item.get("scores") or {}
        table.add_row(str(rank), item["item_id"], f"{item['score']:.3f}", *(f"{scores[task]:.3f}" for task in tasks))
    return table


def _show_live_update(settings: Settings, user: str, at_ms: int, timeout_s: float = 10.0) -> None:
    """Produce a dislike of the user's top item and show /recommend without it, timed. The
    dislike is stamped ``at_ms``, on the stream's clock (the end of its first days, the demo's
    "now"): stamped with the wall clock, a day after the stream, it became the newest event the
    round's candidate trained on, and the freshness gate's window after it held no event."""
    before = _recommend(settings, user)
    top = before["items"][0]["item_id"]
    event = {"event_id": f"demo-{uuid.uuid4().hex}", "user_id": user, "item_id": top, "action": "dislike",
             "ts": at_ms}  # fmt: skip
    produce([encode_event(event)], settings, total=1, show_progress=False)
    sent = time.monotonic()
    while time.monotonic() - sent < timeout_s:
        after = _recommend(settings, user)
        if top not in [item["item_id"] for item in after["items"]]:
            console.print(f"/recommend for {user} {time.monotonic() - sent:.2f}s after a dislike of {top}:")
            console.print(_recommendations_table(user, after))
            return
        time.sleep(0.05)
    console.print(
        f"[red]{top} still recommended {timeout_s:.0f}s after the dislike: see `streamrec serve status`[/red]"
    )


def _ranking_stage(settings: Settings, args: DemoOptions, user: str) -> None:
    """Ranking examples up to date (stage 4 built them), the popularity baseline and a ranker,
    its promotion, /recommend ranked by it."""
    started = time.monotonic()
    report = build_features(settings, incremental=True, log=lambda line: None, ranking=RankingSpec())
    (update,) = [update for update in report.tables if update.table == RANKING_EXAMPLES_TABLE]
    splits = split_rows(settings, RANKING_EXAMPLES_TABLE, update.version)
    shown = ", ".join(f"{splits.get(split, 0):,} {split}" for split in ("train", "validation", "test"))
    change = f"{update.rows:,} rows written" if update.written else "up to date"
    console.print(f"{RANKING_EXAMPLES_TABLE} version {update.version} ({report.mode} build, {change}): {shown} rows")
    if report.fallback_reason:
        console.print(f"[dim]a full build because {report.fallback_reason}[/dim]")
    baseline = train_ranking_popularity(settings, log=lambda line: None)
    options = RankingOptions(args.ranking_config(), workers=args.workers)
    outcome = train_ranker(settings, options, log=console.print)
    console.print(_ranking_table(settings, outcome.model_version, outcome.metrics, baseline))

    name = settings.mlflow.registered_ranking_model
    promote(settings, outcome.model_version, model=name)
    promoted = time.monotonic()
    served = _wait_for_ranker(settings, outcome.model_version, timeout_s=60)
    if served is None:
        console.print(f"[red]{name} version {outcome.model_version} not served after 60s: see /healthz[/red]")
    else:
        console.print(
            f"serving {name} version {served['version']} ({', '.join(served['tasks'])}) next to "
            f"{settings.mlflow.registered_model}: /healthz showed it {time.monotonic() - promoted:.1f}s "
            "after the promotion"
        )
    answer = _recommend(settings, user)
    console.print(_recommendations_table(user, answer))
    lineage = json.dumps(answer["lineage"]["model_version"])
    console.print(f"/recommend lineage.model_version: {lineage}", soft_wrap=True, markup=False)
    console.print(f"ranking stage: {time.monotonic() - started:.0f}s")


def _wait_for_ranker(settings: Settings, version: str, timeout_s: float) -> dict[str, Any] | None:
    """The /healthz ``ranking`` object once it names ``version`` (None: not within ``timeout_s``)."""

    def served() -> dict[str, Any] | None:
        ranking = health(settings).get("ranking")
        return dict(ranking) if ranking and str(ranking["version"]) == version else None

    try:
        return wait_until(served, timeout_s, interval_s=0.2, what=f"/healthz to name ranking version {version}")
    except TimeoutError:
        return None


def _ranking_table(settings: Settings, version: str, metrics: dict[str, float], baseline: dict[str, float]) -> Table:
    table = Table(
        title="ranking: exposures with complete label windows",
        caption=f"ranker: {settings.mlflow.registered_ranking_model}, its epoch chosen on validation click AUC; "
        "GAUC: per-user AUC weighted by the user's exposures",
    )
    table.add_column("model", no_wrap=True, min_width=10)
    table.add_column("version")
    for column in RANKING_COLUMNS:
        table.add_column(column, justify="right")
    for model, shown, found, index in (
        ("popularity", "-", baseline, 0),
        ("ranker", version, metrics, 1),
    ):
        values = (found.get(keys[index]) for keys in RANKING_COLUMNS.values())
        table.add_row(model, shown, *("-" if value is None else f"{value:.4f}" for value in values))
    return table


def _warm_start_round(settings: Settings, args: DemoOptions, user: str) -> None:
    """The stream's next day and one round of the loop (``loop_job``) as a run of the running
    Dagster, as the hourly schedule starts it (its candidate waits for events after its data);
    the day after; and the gate on that day as a second run (``promotion_job``), as the
    registered-model sensor requests it: frozen vs updated model, while a client keeps asking."""
    stream = _stream(settings, args)
    sent = produce_days(settings, stream, STREAM_DAYS, STREAM_DAYS + 1, description="the next day's events")
    console.print(f"{sent:,} new events on the topic (day {STREAM_DAYS + 1:g}), ingested by the round's Dagster run")

    client = _SteadyClient(settings, user)
    client.start()
    try:
        config = args.train_config("hstu", epochs=min(args.epochs, WARM_START_TRAIN["epochs"]))  # production's kind
        _loop_round_in_dagster(settings, config, args.workers)
        traffic = "traffic while the candidate trained"
        sent = send_days(settings, stream, STREAM_DAYS + 1, STREAM_DAYS + 2, description=traffic, log=console.print)
        console.print(f"{sent:,} events of day {STREAM_DAYS + 2:g} ingested; feature versions now {_refresh(settings)}")
        gate = _gate_in_dagster(settings)
        if gate is not None and gate.promoted:
            client.wait_for_version(gate.candidate, timeout_s=60)
    finally:
        client.stop()
    if gate is not None and gate.comparison is not None and gate.comparison.window is not None:
        console.print(_frozen_vs_updated(gate.comparison))
    console.print(f"failed requests during the round: {client.failed} of {client.sent:,}")
    console.print(f"versions a client was served: {' -> '.join(client.versions) or '-'}")


def _loop_round_in_dagster(settings: Settings, config: TrainConfig, workers: int) -> None:
    """Launch ``loop_job`` (ingest, features, warm start, evaluation, gate) on the running Dagster
    with the demo's settings and training config, follow it to its end; print the candidate
    version it registered (which waits for the events after its data before the gate judges it)."""
    run_config = {
        "resources": streamrec_resource_config(settings),
        "ops": {"retrieval_model": {"config": {"train": config.model_dump(mode="json"), "workers": workers}}},
    }
    run_id = _run_in_dagster(settings, "loop_job", run_config, LOOP_RUN_TIMEOUT_S)
    candidate = pending_candidate(settings)
    if candidate is None:
        url = run_url(settings, run_id)
        raise DagsterApiError(f"the loop round registered no candidate that waits for the gate: {url}")
    console.print(f"the round registered candidate v{candidate}; its gate waits for the events after its data")


@dataclass(frozen=True)
class RecordedGate:
    """The gate's result as a ``promotion_job`` run recorded it: the decision (the metadata of its
    ``retrieval_promotion`` materialisation) and the comparison it judged (``retrieval_evaluation``'s;
    None when production moved in between and the gate compared again, see ``promotion.settle``)."""

    candidate: str
    label: str
    promoted: bool
    reason: str
    comparison: Comparison | None
    notes: str = ""

    @classmethod
    def from_materializations(cls, materialized: dict[str, dict[str, Any]]) -> RecordedGate:
        """From what the run materialised (``infra.dagster_runs.run_materializations``)."""
        missing = {"retrieval_evaluation", "retrieval_promotion"} - set(materialized)
        if missing:
            raise DagsterApiError(f"the gate's run did not materialise {', '.join(sorted(missing))}")
        decision = materialized["retrieval_promotion"]
        comparison = Comparison(**materialized["retrieval_evaluation"]["comparison"])
        judged = comparison.production_version == decision["production_before"]
        return cls(
            str(decision["candidate_version"]),
            str(decision["decision"]),
            bool(decision["promoted"]),
            str(decision["reason"]),
            comparison if judged else None,
            str(decision.get("notes") or ""),
        )


def _gate_in_dagster(settings: Settings) -> RecordedGate | None:
    """Launch ``promotion_job`` for the waiting candidate with the run config and tags the
    registered-model sensor requests (``workflows.sensors.pending_request``), on the demo's
    settings; follow it to its end and print the decision its run recorded (None: no candidate
    waits, the round's own gate settled it)."""
    request = pending_request(settings)
    if request is None:
        console.print("no candidate waits for the gate: the round's run settled it")
        return None
    run_config = {**request.run_config, "resources": streamrec_resource_config(settings)}
    run_id = _run_in_dagster(settings, "promotion_job", run_config, GATE_RUN_TIMEOUT_S, tags=request.tags)
    gate = RecordedGate.from_materializations(run_materializations(settings, run_id))
    notes = f" ({gate.notes})" if gate.notes else ""
    console.print(f"gate (pending v{gate.candidate}): {gate.label}: {gate.reason}{notes}")
    return gate


def _run_in_dagster(
    settings: Settings, job: str, run_config: dict[str, Any], timeout_s: float, tags: Mapping[str, str] | None = None
) -> str:
    """Launch ``job`` on the running Dagster, print its URL and statuses, follow it to its end; its
    run id. A run that did not succeed stops the demo, naming its failed steps and its page."""
    run_id = launch_run(settings, job, run_config, tags)
    console.print(f"Dagster run of {job}: {run_url(settings, run_id)}")
    end = wait_for_run(settings, run_id, timeout_s, on_change=lambda status: console.print(f"  run {status}"))
    if not end.succeeded:
        steps = ", ".join(f"{step} {status}" for step, status in end.failed_steps.items()) or "no step failed"
        raise DagsterApiError(f"the Dagster run of {job} ended {end.status} ({steps}): {run_url(settings, run_id)}")
    return run_id


def _refresh(settings: Settings) -> dict[str, int]:
    """An incremental feature build; the feature versions after it."""
    return build_features(settings, incremental=True, log=lambda line: None).versions()


WINDOW_COLUMNS = {
    "NDCG@10": "window_ndcg_10",
    "HR@10": "window_hr_10",
    "NDCG@10 on new items": "window_new_ndcg_10",
    "targets it cannot score": "window_unknown_target_share",
}


def _frozen_vs_updated(comparison: Comparison) -> Table:
    """Production (frozen since its training) and the round's candidate on the day neither trained
    on, as the gate compared them."""
    window = comparison.window or {}
    table = Table(
        title=f"the newest day, {window.get('targets', 0):,} target events neither model trained on",
        caption="time-ordered: each event predicted from the user's history up to it, over the items that "
        "existed then; seen items filtered; new items: launched after production's data (only the updated "
        "model can know them)",
    )
    table.add_column("model")
    table.add_column("version")
    for column in WINDOW_COLUMNS:
        table.add_column(column, justify="right")
    for model, version, metrics in (
        ("frozen (production)", comparison.production_version, comparison.production_metrics or {}),
        ("updated (warm start)", comparison.candidate_version, comparison.candidate_metrics),
    ):
        values = (metrics.get(key) for key in WINDOW_COLUMNS.values())
        table.add_row(model, f"v{version}", *("-" if value is None else f"{value:.4f}" for value in values))
    return table


class _SteadyClient:
    """Asks /recommend for one user every 50 ms in a thread; counts failures and served versions."""

    def __init__(self, settings: Settings, user: str) -> None:
        self.settings, self.user = settings, user
        self.sent = self.failed = 0
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def wait_for_version(self, version: str, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):  # the caller reports the versions seen
            wait_until(
                lambda: self.versions and self.versions[-1] == version,
                timeout_s,
                interval_s=0.1,
                what=f"/recommend to answer with version {version}",
            )

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.wait(0.05):
                self.sent += 1
                try:
                    response = session.post(
                        f"{base_url(self.settings)}/recommend", json={"user_id": self.user}, timeout=30
                    )
                    response.raise_for_status()
                except requests.RequestException:
                    self.failed += 1
                    continue
                version = response.json()["lineage"]["model_version"][self.settings.mlflow.registered_model]
                if not self.versions or self.versions[-1] != version:
                    self.versions.append(version)


def _stage(number: int, title: str, command: str) -> None:
    console.rule(f"{number}. {title}")
    console.print(f"[dim]by hand: {command}[/dim]")


STREAM_DAYS = SyntheticConfig.span_days  # the stream the first models learn from; the round adds two more days


def _stream(settings: Settings, args: DemoOptions) -> SyntheticConfig:
    """The demo's stream: a drifting catalogue (items launch and fade, docs/ingestion.md) over
    ``STREAM_DAYS`` plus two days: the round's new events and the traffic while it trains."""
    days = STREAM_DAYS + 2
    return SyntheticConfig.drifting(
        users=args.users,
        items=args.items,
        events=round(args.events * days / STREAM_DAYS),
        seed=args.seed,
        span_days=days,
        start_ms=_clock_start(settings, args.seed, days),
    )


def _clock_start(settings: Settings, seed: int, span_days: float) -> int:
    """The synthetic clock's start for ``seed``, fixed at its first run, so a later run sends
    the very same events (same event_ids): silver keeps one copy of each."""
    path = settings.home / "demo" / "synthetic-clock.json"
    starts = json.loads(path.read_text()) if path.exists() else {}
    key = f"drifting-{seed}"  # the static stream of earlier demos pinned "<seed>"
    if key not in starts:
        starts[key] = default_start_ms(span_days)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(starts))
    return int(starts[key])


def _lake_table(settings: Settings) -> Table:
    table = Table(title="lake tables")
    for column in ("table", "rows", "example"):
        table.add_column(column)
    lake = {name: DeltaTable(settings.table_uri(name)).to_pyarrow_dataset() for name in
            (BRONZE_TABLE, QUARANTINE_TABLE, SILVER_TABLE)}  # fmt: skip
    counts = {name: dataset.count_rows() for name, dataset in lake.items()}
    reasons = lake[QUARANTINE_TABLE].head(1, columns=["reason"])
    reason = reasons["reason"][0].as_py() if reasons.num_rows else ""
    table.add_row(BRONZE_TABLE, f"{counts[BRONZE_TABLE]:,}", "every valid record, with its Kafka offset")
    table.add_row(QUARANTINE_TABLE, f"{counts[QUARANTINE_TABLE]:,}", f"reason: {reason}")
    table.add_row(SILVER_TABLE, f"{counts[SILVER_TABLE]:,}", "deduplicated by event_id, ordered by user and ts")
    return table


def _metrics_table(results: dict[str, dict[str, float]], versions: dict[str, str]) -> Table:
    any_run = next(iter(results.values()))
    share = any_run["test_repeat_target_share"]
    table = Table(
        title="test split: leave-last-out, full catalogue",
        caption=f"filtered: the user's history is removed (as the HSTU reference), so the {share:.0%} of targets "
        f"the user had already consumed are misses (HR ceiling {1 - share:.2f}); all: nothing removed",
    )
    table.add_column("model", no_wrap=True)
    table.add_column("version")
    table.add_column("protocol", no_wrap=True)
    for name in METRICS:
        table.add_column(name, justify="right")
    for model, metrics in results.items():
        for label, prefix in PROTOCOLS.items():
            first = label == "filtered"
            table.add_row(
                model if first else "",
                versions.get(model, "-") if first else "",
                label,
                *(f"{metrics[prefix + name]:.4f}" for name in METRICS),
                end_section=not first,
            )
    return table
