"""Malformed Kafka records of every kind validation rejects (for `--bad-fraction` and tests).

Each kind turns a good contract event into one bad record value (bytes, or None for a
record without a value). The event's ``event_id`` stays in the record where the kind
allows, so a person reading the quarantine can tell which event was damaged.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
_FUTURE_MS = 30 * 86_400_000


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _with(event: Event, **changes: Any) -> bytes:
    return _dumps({**event, **changes})


def _without(event: Event, rng: random.Random) -> bytes:
    name = rng.choice(["event_id", "user_id", "item_id", "action", "ts"])
    return _dumps({k: v for k, v in event.items() if k != name})


def _not_utf8(event: Event, rng: random.Random) -> bytes:
    raw = _dumps(event)
    cut = raw.index(b'"item_id":"') + len(b'"item_id":"')
    return raw[:cut] + b"\xff\xfe" + raw[cut:]


def _duplicate_field(event: Event, rng: random.Random) -> bytes:
    return b'{"event_id":"dup-' + event["event_id"].encode() + b'",' + _dumps(event)[1:]


def _oversize(limit: int) -> Callable[[Event, random.Random], bytes]:
    def make(event: Event, rng: random.Random) -> bytes:
        return _with(event, padding="x" * (limit + 1))

    return make


def malformed_kinds(max_event_bytes: int, now_ms: int) -> dict[str, Callable[[Event, random.Random], bytes | None]]:
    """Every kind of malformed record: name -> function(good event, rng) -> record value."""
    return {
        "no_value": lambda e, r: None,
        "oversize": _oversize(max_event_bytes),
        "not_utf8": _not_utf8,
        "not_json": lambda e, r: _dumps(e)[: -r.randint(2, 10)],
        "not_object": lambda e, r: _dumps(list(e.values())),
        "missing_field": _without,
        "null_field": lambda e, r: _with(e, **{r.choice(["user_id", "item_id", "action", "ts"]): None}),
        "wrong_type_str": lambda e, r: _with(e, ts=str(e["ts"])),
        "wrong_type_num": lambda e, r: _with(e, item_id=r.randint(1, 10**6)),
        "float_ts": lambda e, r: _with(e, ts=e["ts"] + 0.5),
        "duplicate_field": _duplicate_field,
        "empty_id": lambda e, r: _with(e, **{r.choice(["user_id", "item_id"]): r.choice(["", "  "])}),
        "unknown_action": lambda e, r: _with(e, action=r.choice(["clicked", "CLICK", "buy", ""])),
        "negative_ts": lambda e, r: _with(e, ts=-r.randint(1, 10**12)),
        "future_ts": lambda e, r: _with(e, ts=now_ms + _FUTURE_MS + r.randint(0, 10**9)),
        "negative_dwell": lambda e, r: _with(e, dwell_ms=-r.randint(1, 10**5)),
    }
