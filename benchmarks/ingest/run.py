"""Ingestion benchmark: Kafka -> bronze throughput against a bare kafka-python consumer, and freshness.

Starts its own Tansu broker (free port, temporary home), then in one run:
  1. produces N synthetic events (default 1M) to a topic of 4 partitions (producer rate reported);
  2. baseline: one bare kafka-python consumer reads the whole topic (records/s), before and
     again after step 3 (the ratio uses their mean, so load that changes meanwhile evens out);
  3. `streamrec ingest --until-idle` (in this process) from Kafka to bronze, silver included:
     sustained records/s = micro-batches after the first (which also starts Spark's Python
     workers and warms the JIT up), from its start to the last batch's end; the rate over all
     batches and the wall time with Spark's start beside it; the ratio of the sustained rate
     to the bare consumer's; CPU time per record of the whole process tree (JVM and Python
     workers included) next to the consumer's;
  4. freshness: while a streaming `ingest` runs, a producer sends events at a steady rate and
     a watcher polls bronze; freshness = time an event_id is visible in bronze - its send time
     (p50/p95/max).

    .venv/bin/python -m benchmarks.ingest [--events 1000000] [--rate 2000] [--seconds 30] [--out PATH]

Writes benchmarks/results/ingest.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from benchmarks.harness import RESULTS, header, loads, private_home, private_settings, shutdown, write_result
from infra import cluster
from infra.processes import tree_cpu_seconds
from infra.settings import Settings
from ingestion.producer import encode_event, open_producer, produce
from ingestion.schema import BRONZE_TABLE
from ingestion.stream import BatchReport, run_ingest
from ingestion.synthetic import SyntheticConfig, generate_events

RESULT = RESULTS / "ingest.json"
TARGETS = {"events_per_s": 50_000, "ratio_vs_bare_consumer": 0.6, "freshness_p95_s": 5.0}


def create_topic(settings: Settings) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(settings.kafka.topic, settings.kafka.topic_partitions, 1)])
    finally:
        admin.close()


def bare_consumer(settings: Settings) -> dict:
    """Records/s of one kafka-python consumer reading the whole topic (all partitions assigned)."""
    from kafka import KafkaConsumer, TopicPartition

    from ingestion.kafka_client import high_watermarks

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
    )  # fmt: skip
    ends = high_watermarks(consumer, settings.kafka.topic)
    tps = [TopicPartition(settings.kafka.topic, int(p)) for p in ends]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    total, target, value_bytes = 0, sum(ends.values()), 0
    started, cpu = time.perf_counter(), time.process_time()
    while total < target:
        for records in consumer.poll(timeout_ms=1000, max_records=50_000).values():
            total += len(records)
            value_bytes += sum(len(r.value) for r in records)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    consumer.close()
    return {
        "records": total, "seconds": round(seconds, 2), "records_per_s": round(total / seconds),
        "cpu_us_per_record": round(cpu / total * 1e6, 2), "value_mb": round(value_bytes / 1e6, 1),
    }  # fmt: skip


def ingest_throughput(settings: Settings) -> dict:
    """`ingest --until-idle` over the produced topic; per-batch timings and sustained rates."""
    batches: list[BatchReport] = []
    started, cpu = time.perf_counter(), tree_cpu_seconds()
    run_ingest(
        settings, until_idle=True, report=lambda item: batches.append(item) if isinstance(item, BatchReport) else None
    )
    wall, cpu = time.perf_counter() - started, tree_cpu_seconds() - cpu
    records = sum(b.records for b in batches)
    span = batches[-1].started + batches[-1].seconds - batches[0].started
    steady = batches[1:]  # the first micro-batch also starts Spark's Python workers and warms the JIT up
    steady_span = steady[-1].started + steady[-1].seconds - steady[0].started if steady else 0.0
    return {
        "records": records,
        "batches": len(batches),
        "max_records_per_trigger": settings.ingest.max_records_per_trigger,
        "wall_seconds_with_spark_start": round(wall, 2),
        "cpu_us_per_record_with_spark_start": round(cpu / records * 1e6, 2),
        "sustained_records_per_s": round(sum(b.records for b in steady) / steady_span) if steady else None,
        "all_batches_seconds": round(span, 2),
        "all_batches_records_per_s": round(records / span),
        "batch_steps_s": [
            {
                "records": b.records,
                "gap_before": round(b.started - (p.started + p.seconds), 2) if p else None,
                "read": round(b.read_s, 2),
                "validate": round(b.validate_s, 2),
                "write": round(b.write_s, 2),
            }
            for p, b in zip([None, *batches[:-1]], batches, strict=True)
        ],
    }


def freshness(settings: Settings, rate: float, seconds: float) -> dict:
    """Send events at ``rate``/s for ``seconds`` while ingest streams; when each shows up in bronze."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = threading.Event()
    ingest = threading.Thread(
        target=run_ingest,
        kwargs={"settings": settings, "duration_s": seconds + 30, "report": lambda item: None},
        daemon=True,
    )
    ingest.start()
    uri = settings.table_uri(BRONZE_TABLE)

    def watch() -> None:
        known: set[str] = set(DeltaTable(uri).file_uris()) if DeltaTable.is_deltatable(uri) else set()
        while not stop.is_set():
            if DeltaTable.is_deltatable(uri):
                files = set(DeltaTable(uri).file_uris())
                now = time.time()
                for path in files - known:
                    for event_id in pq.read_table(path, columns=["event_id"])["event_id"].to_pylist():
                        seen.setdefault(event_id, now)
                known = files
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(15)  # let the stream start and drain what is already on the topic
    producer = open_producer(settings)
    config = SyntheticConfig(users=5_000, items=20_000, events=int(rate * seconds), seed=7, id_prefix="fresh")
    started = time.time()
    for index, event in enumerate(generate_events(config)):
        delay = started + index / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        record = encode_event({**event, "ts": int(time.time() * 1000)})
        sent[event["event_id"]] = time.time()
        producer.send(settings.kafka.topic, key=record.key, value=record.value)
    producer.flush()
    deadline = time.time() + 30
    while time.time() < deadline and len(seen.keys() & sent.keys()) < len(sent):
        time.sleep(0.2)
    stop.set()
    lags = sorted(seen[e] - sent[e] for e in sent if e in seen)
    ingest.join(timeout=120)
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "sent": len(sent),
        "seen_in_bronze": len(lags),
        "trigger_interval_s": settings.ingest.trigger_interval_s,
        "p50_s": round(statistics.median(lags), 3),
        "p95_s": round(lags[int(0.95 * (len(lags) - 1))], 3),
        "max_s": round(lags[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--max-records-per-trigger", type=int, default=None, help="default: the setting")
    parser.add_argument("--rate", type=float, default=2_000, help="events/s of the freshness producer")
    parser.add_argument("--seconds", type=float, default=30, help="how long the freshness producer runs")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    # The synthetic events' seeds: 1 for the throughput topic, 7 for the freshness producer.
    result_header = header("ingest", args, seeds=[1, 7])
    load_before = loads()
    with private_home("ingest") as home:
        env = {"STREAMREC_TOPIC": "bench-throughput", "STREAMREC_TOPIC_PARTITIONS": str(args.partitions),
               "STREAMREC_LAKE_URI": str(home / "lake")}  # fmt: skip
        if args.max_records_per_trigger:
            env["STREAMREC_INGEST_MAX_RECORDS_PER_TRIGGER"] = str(args.max_records_per_trigger)
        settings = private_settings(home, **env)
        per_batch = settings.ingest.max_records_per_trigger
        if args.events <= per_batch:  # one micro-batch takes them all: no batch after the first to time
            parser.error(
                f"--events {args.events:,} fit in one micro-batch of {per_batch:,} records, so no sustained "
                "rate can be measured: give more events or a smaller --max-records-per-trigger"
            )
        result = measure(settings, args, home)
    result = {**result_header, **result}
    result["machine"]["load_average_1_5_15_min"] = {"before": load_before, "after": loads()}
    write_result(args.out, result)
    print(json.dumps({k: result[k] for k in ("ratio_vs_bare_consumer", "met")}))
    print(args.out)


def measure(settings: Settings, args: argparse.Namespace, home: Path) -> dict:
    """Produce, the bare consumer, ingest, the bare consumer again, freshness; their figures."""
    try:
        cluster.up(settings, ["kafka"])
        print(f"producing {args.events:,} events ...", flush=True)
        config = SyntheticConfig(users=20_000, items=50_000, events=args.events, seed=1)
        produced = produce(
            (encode_event(e) for e in generate_events(config)), settings, total=args.events, show_progress=False
        )
        print(f"produced at {produced.rate:,.0f}/s; bare consumer ...", flush=True)
        before = bare_consumer(settings)
        print(f"bare consumer {before['records_per_s']:,}/s; ingest ...", flush=True)
        ingest = ingest_throughput(settings)
        print(f"ingest sustained {ingest['sustained_records_per_s']:,}/s; bare consumer again ...", flush=True)
        after = bare_consumer(settings)
        print(f"bare consumer {after['records_per_s']:,}/s; freshness ...", flush=True)
        fresh_settings = settings.updated(topic="bench-freshness", lake_uri=str(home / "lake-fresh"))
        create_topic(fresh_settings)
        fresh = freshness(fresh_settings, args.rate, args.seconds)
    finally:
        shutdown(settings)
    # The baseline runs before and after ingest; their mean evens out load that changed meanwhile.
    baseline_rate = (before["records_per_s"] + after["records_per_s"]) / 2
    ratio = (ingest["sustained_records_per_s"] or 0) / baseline_rate
    return {
        "events": args.events,
        "partitions": args.partitions,
        "producer_records_per_s": produced.rate,
        "bare_consumer": {"before_ingest": before, "after_ingest": after, "mean_records_per_s": round(baseline_rate)},
        "ingest": ingest,
        "ratio_vs_bare_consumer": round(ratio, 3),
        "all_batches_ratio_vs_bare_consumer": round(ingest["all_batches_records_per_s"] / baseline_rate, 3),
        "freshness": fresh,
        "targets": TARGETS,
        "met": {
            "events_per_s": (ingest["sustained_records_per_s"] or 0) >= TARGETS["events_per_s"],
            "ratio_vs_bare_consumer": ratio >= TARGETS["ratio_vs_bare_consumer"],
            "freshness_p95_s": fresh["p95_s"] <= TARGETS["freshness_p95_s"],
        },
    }


if __name__ == "__main__":
    main()
