"""The bookkeeping of benchmarks.serve.replica_kill: which failures belong to a kill, the /healthz
recovery time, latency per part of a trial and the summary over trials (no service)."""

from __future__ import annotations

from benchmarks.serve.replica_kill import Request, healthz_recovery, latency_ms, summarise_trials, trial_figures


def answered(sent: float, latency_s: float, outcome: str = "200") -> Request:
    return Request(scheduled=sent, sent=sent, ended=sent + latency_s, outcome=outcome)


def probe(sent: float, status: str, replicas: dict[str, int]) -> Request:
    return Request(sent, sent, sent + 0.01, "200", {"status": status, "replicas": replicas})


def test_healthz_ok_counts_only_after_it_said_degraded() -> None:
    probes = [
        probe(9.0, "ok", {"RUNNING": 2}),
        probe(11.0, "ok", {"RUNNING": 2}),  # after the kill, before Ray Serve noticed: not a recovery
        probe(14.0, "degraded", {"RUNNING": 1, "STARTING": 1}),
        probe(16.0, "ok", {"RUNNING": 1}),  # ok but one replica short: not yet
        probe(18.0, "ok", {"RUNNING": 2}),
    ]
    assert healthz_recovery(probes, killed_at=10.0, replicas=2) == {
        "healthz_degraded_s": 4.0,
        "healthz_ok_again_s": 8.0,
    }
    assert healthz_recovery(probes[:2], killed_at=10.0, replicas=2) == {
        "healthz_degraded_s": None,
        "healthz_ok_again_s": None,
    }


def test_failures_near_the_kill_are_told_from_later_ones_and_latency_is_split_by_part() -> None:
    done = [answered(t / 10, 0.01) for t in range(0, 100)]  # 0 .. 9.9 s, 10 ms each
    done += [answered(t / 10, 0.1) for t in range(100, 200)]  # 10 .. 19.9 s: recovery, 100 ms each
    done += [answered(t / 10, 0.02) for t in range(200, 300)]  # 20 .. 29.9 s: after, 20 ms each
    done += [answered(9.9, 0.05, "ConnectionError"), answered(10.6, 0.01, "500"), answered(15.0, 0.01, "502")]
    done.append(answered(30.5, 0.01, "500"))  # after the window's end: another trial's
    figures = trial_figures(done, [], (0.0, 10.0, 20.0, 30.0), grace_s=1.0, replicas=2)
    assert figures["sent"] == 303
    assert figures["failed"] == 3
    assert figures["failed_sent_within_grace_of_kill"] == 2
    assert figures["failed_other"] == 1
    assert figures["failed_outcomes"] == ["500", "502", "ConnectionError"]
    assert figures["replicas_running_again_s"] == 10.0
    latency = figures["latency"]
    assert (latency["before"]["answered"], latency["recovery"]["answered"], latency["after"]["answered"]) == (
        100,
        100,
        100,
    )
    assert latency["before"]["p50_ms"] == 10.0
    assert latency["recovery"]["p99_ms"] == 100.0
    assert latency["after"]["p50_ms"] == 20.0


def test_latency_counts_from_the_scheduled_time() -> None:
    late = Request(scheduled=1.0, sent=1.5, ended=1.6, outcome="200")
    assert latency_ms([late]) == {"answered": 1, "p50_ms": 600.0, "p99_ms": 600.0}
    assert latency_ms([]) == {"answered": 0, "p50_ms": None, "p99_ms": None}


def test_the_summary_spreads_each_figure_over_the_trials_and_skips_missing_ones() -> None:
    def trial(failed: int, running_s: float, ok_s: float | None) -> dict:
        part = {"p50_ms": 10.0, "p99_ms": 50.0}
        return {
            "sent": 100,
            "failed": failed,
            "failed_sent_within_grace_of_kill": failed,
            "failed_other": 0,
            "new_replica_actor_s": 1.0,
            "replicas_running_again_s": running_s,
            "healthz_degraded_s": 5.0,
            "healthz_ok_again_s": ok_s,
            "latency": {"before": part, "recovery": part, "after": part},
        }

    summary = summarise_trials([trial(1, 12.0, 13.0), trial(0, 14.0, None), trial(3, 20.0, 21.0)])
    assert summary["trials"] == 3
    assert summary["failed"] == {"total": 4, "median": 1, "min": 0, "max": 3, "of": 3}
    assert summary["replicas_running_again_s"] == {"median": 14.0, "min": 12.0, "max": 20.0, "of": 3}
    assert summary["healthz_ok_again_s"] == {"median": 17.0, "min": 13.0, "max": 21.0, "of": 2}
    assert summary["recovery_p99_ms"]["median"] == 50.0
