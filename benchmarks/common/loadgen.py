"""An open-loop HTTP load generator (asyncio + aiohttp) without coordinated omission.

Request i is scheduled at ``start + i / rate`` whatever happened to earlier requests, and its
latency is measured from that *scheduled* time to the end of its response body: a server
that stalls makes every request scheduled during the stall late, and each of them counts
the wait (a closed loop would send fewer requests instead and hide the stall). Requests in
flight are bounded (``max_in_flight``; one scheduled beyond it is dropped and counted as an
error) and so is the total time (``duration_s + timeout_s``; requests still unfinished then
are cancelled and counted). The generator's own lateness (how far behind schedule a request
was handed to aiohttp) is reported too, so a saturated client is visible as such.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OnBody = Callable[[float, bytes], None]  # (arrival time, loop clock; response body) of each 200
Side = Callable[[float], Coroutine[Any, Any, Any]]  # an async function run beside the load from its start time


@dataclass(frozen=True)
class LoadSpec:
    url: str
    rate: float  # requests per second
    duration_s: float
    bodies: Sequence[bytes]  # request i sends bodies[i % len(bodies)] (JSON)
    max_in_flight: int = 2_000
    connections: int = 256  # aiohttp connection pool size
    timeout_s: float = 10.0  # per request, from when it is handed to aiohttp


def run(spec: LoadSpec, on_body: OnBody | None = None, side: Side | None = None) -> dict[str, Any]:
    """Run ``spec`` open loop; ``side(start)`` runs beside it (e.g. a promotion); returns the figures."""
    return asyncio.run(_run(spec, on_body, side))


async def _run(spec: LoadSpec, on_body: OnBody | None, side: Side | None) -> dict:
    import aiohttp

    loop = asyncio.get_running_loop()
    total = max(1, round(spec.rate * spec.duration_s))
    latencies: list[float] = []
    lateness = np.zeros(total)
    errors: Counter[str] = Counter()
    state = {"in_flight": 0, "last_done": 0.0}
    load_before = os.getloadavg()
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=spec.connections)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time() + 0.05
        side_task = asyncio.create_task(side(start)) if side else None

        async def one(body: bytes, scheduled: float) -> None:
            try:
                async with session.post(spec.url, data=body, headers=headers) as response:
                    payload = await response.read()
                    now = loop.time()
                    if response.status == 200:
                        latencies.append(now - scheduled)
                        if on_body is not None:
                            on_body(now, payload)
                    else:
                        errors[f"http_{response.status}"] += 1
            except TimeoutError:
                errors["timeout"] += 1
            except aiohttp.ClientError as error:
                errors[error.__class__.__name__] += 1
            finally:
                state["in_flight"] -= 1
                state["last_done"] = max(state["last_done"], loop.time())

        tasks = []
        for i in range(total):
            scheduled = start + i / spec.rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness[i] = max(0.0, loop.time() - scheduled)
            if state["in_flight"] >= spec.max_in_flight:
                errors["client_in_flight_limit"] += 1
                continue
            state["in_flight"] += 1
            tasks.append(asyncio.create_task(one(spec.bodies[i % len(spec.bodies)], scheduled)))
        last_scheduled = start + (total - 1) / spec.rate
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.1, last_scheduled + spec.timeout_s - loop.time()))
            for task in pending:
                task.cancel()
            if pending:
                errors["unfinished_at_deadline"] += len(pending)
                await asyncio.gather(*pending, return_exceptions=True)
        if side_task is not None:
            await side_task
    ended = max(state["last_done"], last_scheduled)
    ok = len(latencies)
    ms = np.asarray(latencies) * 1000.0
    return {
        "url": spec.url,
        "target_qps": spec.rate,
        "duration_s": spec.duration_s,
        "scheduled": total,
        "ok": ok,
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "achieved_qps": round(ok / max(ended - start, 1e-9), 1),
        "p50_ms": _pct(ms, 50),
        "p95_ms": _pct(ms, 95),
        "p99_ms": _pct(ms, 99),
        "max_ms": round(float(ms.max()), 2) if ok else None,
        "client_lateness_p99_ms": round(float(np.percentile(lateness, 99)) * 1000, 2),
        "load_before": [round(value, 2) for value in load_before],
        "load_after": [round(value, 2) for value in os.getloadavg()],
        "at": time.strftime("%H:%M:%S"),
    }


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def keeps_up(result: dict[str, Any]) -> bool:
    """No errors and at least 95% of the target rate achieved."""
    return result["errors"] == 0 and result["achieved_qps"] >= 0.95 * result["target_qps"]


def holds(result: dict[str, Any], p99_limit_ms: float) -> bool:
    """Kept up, and p99 under ``p99_limit_ms``."""
    return keeps_up(result) and result["p99_ms"] is not None and result["p99_ms"] < p99_limit_ms


def summary_line(result: dict[str, Any]) -> str:
    """One log line of a run's figures, with the CPU usage ``CpuMeter.usage`` added to them."""
    top = ", ".join(f"{name} {ms}" for name, ms in list(result["cpu_ms_per_request"].items())[:3])
    return (
        f"{result['achieved_qps']:.0f}/s p50 {result['p50_ms']} p95 {result['p95_ms']} p99 {result['p99_ms']} ms, "
        f"{result['errors']} errors {result['errors_by_kind'] or ''}; CPU ms/request "
        f"{result['cpu_ms_per_request_total']} ({top}), machine busy {result['machine_busy_cores']} cores"
    )
