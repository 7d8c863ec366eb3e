"""Synthetic user-action events with real sequential structure (no Kafka needed).

The model (see docs/ingestion.md for the full description):

* Items have Zipf popularity (item ``i<k>`` has rank k) and each belongs to one of
  ``clusters`` latent topics. Every item has a few fixed *successors* in its cluster
  ("people who took this next took that").
* Users have activity of their own (some are heavy, most light) and a small set of
  interest clusters that *drift*: at a session start, with probability ``drift``, one
  interest is replaced by a random cluster.
* A session picks a current cluster from the user's interests and shows items one by
  one: mostly the successor of the previous item or a popular item of the current cluster
  (clicked, viewed, liked, shared, purchased, or only seen as an impression), sometimes
  an off-interest item (skipped, disliked or only seen). Now and then the session
  switches to another of the user's clusters.
* Sessions of many users interleave on one clock; ``ts`` grows strictly across the whole
  stream, and ``generate_events`` yields events in that order.

A drifting catalogue (off by default; ``SyntheticConfig.drifting()`` gives the documented
churn, docs/ingestion.md argues it): only ``initial_item_share`` of the items exist at the
start, the rest launch at a steady rate over the span, and each item's popularity follows a
life cycle, its Zipf weight times ``lifecycle_weight``: a linear rise over ``rise_hours``
after launch, then a decay with ``half_life_days`` (``evergreen_share`` of the items never
decay). The items that exist at the start launched before it at the same rate. Sessions
draw items by their weight at the session's start (recomputed every simulated hour), follow
a successor only once it has launched, and no event names an item before its launch.
``item_launches`` records each item's launch time and whether it is evergreen.

So next-item prediction from a user's recent items beats item popularity by far, which
is what sequential recommenders (SASRec, HSTU) must show on it.

Responses (what a user does with a shown item), the ground truth of ranking:

* Default (``funnel=False``): one event per shown item, whose action depends only on
  whether the item is on-interest (``action_weights``: impression 22%, click 30%, view 26%,
  like 10%, share 4%, purchase 8%) or off-interest (skip 55%, dislike 15%, impression 30%).
  A ranker can learn no more than on- vs off-interest from it, and a like never comes with a
  click (docs/ranking.md measures what that allows).
* ``funnel=True``: every shown item is an ``impression`` first, then maybe a click or view
  (engagement), then maybe a like/share and a purchase, or a skip/dislike instead. The
  engagement probability depends on the item's relation to the user and session
  (``FUNNEL_ENGAGE``: successor of the previous engaged item > other item of the session's
  cluster > off-interest), on the user's past response to the same item (engaged before:
  x ``FUNNEL_REPEAT_ENGAGE``; skipped or disliked before: x ``FUNNEL_REJECTED_ENGAGE``) and on
  the item's fixed appeal (log-normal, drawn once per item); likes depend on the relation,
  purchases on whether the user had engaged with the item before. ``Truth`` records every
  probability used, so the best achievable AUC of each task can be computed.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DAY_MS = 86_400_000
SURFACES: tuple[str, ...] = ("home", "search", "related", "notifications")


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic event model; the defaults make a small, learnable catalogue."""

    users: int = 1_000
    items: int = 5_000
    events: int = 100_000
    seed: int = 0
    clusters: int = 50
    zipf_alpha: float = 1.05  # item popularity ~ 1 / rank**alpha
    user_zipf_alpha: float = 0.6  # user activity ~ 1 / rank**alpha (a random rank per user)
    interests_per_user: int = 3
    drift: float = 0.1  # P(one interest is replaced) at each session start
    mean_session_events: float = 12.0
    follow_successor: float = 0.6  # P(next on-interest item is a successor of the previous)
    successors_per_item: int = 3
    switch_cluster: float = 0.08  # P(switching to another interest inside a session)
    off_interest: float = 0.12  # P(an off-interest item is shown)
    span_days: float = 28.0  # session starts spread over this much time (none later)
    start_ms: int | None = None  # first session start; default: now - span_days - 1 day
    id_prefix: str = ""  # event_id prefix; default "s<seed>-<start_ms>"
    funnel: bool = False  # impression first, then a response drawn from the funnel model (module docstring)
    initial_item_share: float = 1.0  # items that exist at the start; the rest launch at a steady rate over the span
    half_life_days: float = 0.0  # popularity halves this often after the rise; 0 = no decay
    rise_hours: float = 0.0  # popularity rises linearly to its peak over this long after launch; 0 = at once
    evergreen_share: float = 0.0  # items whose popularity never decays
    action_weights: dict[str, float] = field(
        default_factory=lambda: {
            "impression": 0.22,
            "click": 0.30,
            "view": 0.26,
            "like": 0.10,
            "share": 0.04,
            "purchase": 0.08,
        }
    )  # response to an on-interest item; off-interest items get skip/dislike/impression

    def __post_init__(self) -> None:
        for name in ("users", "items", "clusters", "interests_per_user", "successors_per_item"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.events < 0:
            raise ValueError("events must be >= 0")
        if self.interests_per_user > self.clusters:
            raise ValueError("interests_per_user must be <= clusters")
        if self.mean_session_events < 1:
            raise ValueError("mean_session_events must be >= 1")
        for name in ("drift", "follow_successor", "switch_cluster", "off_interest"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.span_days <= 0:
            raise ValueError("span_days must be > 0")
        if not 0.0 < self.initial_item_share <= 1.0:
            raise ValueError("initial_item_share must lie in (0, 1]")
        if not 0.0 <= self.evergreen_share <= 1.0:
            raise ValueError("evergreen_share must lie in [0, 1]")
        for name in ("half_life_days", "rise_hours"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    @classmethod
    def drifting(cls, **overrides: Any) -> SyntheticConfig:
        """The documented drifting catalogue (``DRIFTING``, argued in docs/ingestion.md), ``overrides`` on top."""
        return cls(**{**DRIFTING, **overrides})

    @property
    def static_catalogue(self) -> bool:
        """Every item exists from the start with a constant popularity (the stream before launches existed)."""
        return self.initial_item_share >= 1.0 and self.half_life_days == 0 and self.rise_hours == 0


DRIFTING: dict[str, float] = {
    "initial_item_share": 0.5,  # over the default 28 days: 1/56 of the catalogue launches per day
    "half_life_days": 2.0,
    "rise_hours": 6.0,
    "evergreen_share": 0.05,
}
"""The drifting catalogue's default churn (docs/ingestion.md says why these values)."""
LIFECYCLE_STEP_MS = 3_600_000  # item weights are recomputed once per simulated hour


@dataclass(frozen=True)
class ItemLaunch:
    """When an item launched (epoch ms; before the stream's start for the items that exist then)."""

    item: str
    launch_ms: int
    evergreen: bool


class _Lifecycle:
    """Launch times and popularity life cycles of the items (a generator of its own, so the
    stream's draws stay as they were when the catalogue is static)."""

    def __init__(self, config: SyntheticConfig, start_ms: int) -> None:
        rng = random.Random(config.seed * 1_000_003 + 29)
        self.start_ms = start_ms
        order = list(range(config.items))
        rng.shuffle(order)
        initial = max(1, round(config.items * config.initial_item_share))
        span_ms = config.span_days * DAY_MS
        launched_later = config.items - initial
        # Launches per ms; the items that exist at the start launched at the same rate before it
        # (within one span when nothing launches later).
        gap = span_ms / launched_later if launched_later else span_ms / initial
        self.launch_ms = [0] * config.items
        for position, item in enumerate(order[:initial]):
            self.launch_ms[item] = start_ms - int((position + rng.random()) * gap)
        for position, item in enumerate(order[initial:]):
            self.launch_ms[item] = start_ms + int((position + 0.5) * gap)  # a steady rate
        self.evergreen = [rng.random() < config.evergreen_share for _ in range(config.items)]
        self.rise_ms = config.rise_hours * 3_600_000
        self.half_life_ms = config.half_life_days * DAY_MS

    def weight(self, item: int, now_ms: int) -> float:
        """The item's popularity factor at ``now_ms``: 0 before launch, peak 1."""
        age = now_ms - self.launch_ms[item]
        if age < 0:
            return 0.0
        if age < self.rise_ms:
            return max(age / self.rise_ms, 1e-3)
        if self.half_life_ms == 0 or self.evergreen[item]:
            return 1.0
        return 0.5 ** ((age - self.rise_ms) / self.half_life_ms)


def _pick(cum: list[float], rng: random.Random) -> int:
    """An index drawn with probability proportional to its weight (``cum``: cumulative weights);
    weight-0 entries are never drawn."""
    return bisect.bisect_right(cum, rng.random() * cum[-1])


class _Catalogue:
    """Items: popularity, cluster membership, successors; users: activity weights."""

    def __init__(self, config: SyntheticConfig, rng: random.Random, lifecycle: _Lifecycle | None = None) -> None:
        self.cluster_of = [rng.randrange(config.clusters) for _ in range(config.items)]
        popularity = [1.0 / (rank + 1) ** config.zipf_alpha for rank in range(config.items)]
        self.popularity = popularity
        self.lifecycle = lifecycle
        self.weights = popularity
        self.refreshed_for: int | None = None  # the lifecycle step (hours since the start) the weights are of
        self.global_cum = list(itertools.accumulate(popularity))
        members: list[list[int]] = [[] for _ in range(config.clusters)]
        for item, cluster in enumerate(self.cluster_of):
            members[cluster].append(item)
        # An empty cluster (tiny catalogues) borrows the globally most popular item.
        self.members = [m or [0] for m in members]
        self.member_cum = [list(itertools.accumulate(popularity[i] for i in m)) for m in self.members]
        self.successors = [self._successors(item, config.successors_per_item, rng) for item in range(config.items)]
        user_ranks = list(range(config.users))
        rng.shuffle(user_ranks)
        self.user_cum = list(itertools.accumulate(1.0 / (r + 1) ** config.user_zipf_alpha for r in user_ranks))

    def refresh(self, now_ms: int) -> None:
        """Drifting catalogue: the item weights (popularity x life cycle) at the start of the
        simulated hour of ``now_ms``, hours counted from the stream's start (so a stream whose
        clock starts later is the same stream, shifted); an item not launched by then weighs 0."""
        if self.lifecycle is None:
            return
        start = self.lifecycle.start_ms
        step = (now_ms - start) // LIFECYCLE_STEP_MS
        if step == self.refreshed_for:
            return
        self.refreshed_for = step
        at = start + step * LIFECYCLE_STEP_MS
        weight = self.lifecycle.weight
        self.weights = [p * weight(item, at) for item, p in enumerate(self.popularity)]
        self.global_cum = list(itertools.accumulate(self.weights))
        self.member_cum = [list(itertools.accumulate(self.weights[i] for i in m)) for m in self.members]

    def live(self, item: int) -> bool:
        """Whether ``item`` may be shown now (it has launched)."""
        return self.weights[item] > 0

    def _successors(self, item: int, count: int, rng: random.Random) -> list[int]:
        cluster = self.cluster_of[item]
        candidates = [self.in_cluster(cluster, rng) for _ in range(count * 3)]
        picked = [c for c in dict.fromkeys(candidates) if c != item][:count]
        return picked or [self.members[cluster][0]]

    def in_cluster(self, cluster: int, rng: random.Random) -> int:
        cum = self.member_cum[cluster]
        if cum[-1] <= 0:  # drifting catalogue: nothing of the cluster has launched yet
            return self.any_item(rng)
        return self.members[cluster][_pick(cum, rng)]

    def any_item(self, rng: random.Random) -> int:
        return _pick(self.global_cum, rng)

    def successor(self, previous: int, rng: random.Random) -> int | None:
        """A successor of ``previous``. Drifting catalogue: one that has launched, by current
        weight, and followed only with probability its life-cycle factor (a stale link is
        seldom taken), else None."""
        if self.lifecycle is None:
            return rng.choice(self.successors[previous])
        candidates = [item for item in self.successors[previous] if self.live(item)]
        if not candidates:
            return None
        item = rng.choices(candidates, [self.weights[item] for item in candidates])[0]
        return item if rng.random() < self.weights[item] / self.popularity[item] else None

    def user(self, rng: random.Random) -> int:
        cum = self.user_cum
        return bisect.bisect_left(cum, rng.random() * cum[-1])


FUNNEL_ENGAGE: dict[str, float] = {"successor": 0.65, "session": 0.35, "interest": 0.25, "off": 0.04}
"""Funnel mode: P(click or view) of a shown item by its relation (before appeal and past response)."""
FUNNEL_REPEAT_ENGAGE = 0.6  # engaged with the item before: fatigue
FUNNEL_REJECTED_ENGAGE = 0.2  # skipped or disliked it before
FUNNEL_APPEAL_SIGMA = 0.2  # item appeal = exp(N(0, sigma)), fixed per item
FUNNEL_LIKE = {"successor": 0.45, "session": 0.25, "interest": 0.25, "off": 0.1}  # P(like or share | engaged)
FUNNEL_PURCHASE = (0.05, 0.35)  # P(purchase | engaged): first engagement with the item, a repeat
FUNNEL_NEGATIVE = {"off": (0.55, 0.15), "on": (0.12, 0.02)}  # (P(skip), P(dislike)) when not engaged


@dataclass(frozen=True)
class Truth:
    """Funnel mode: the probabilities behind one shown item and its outcome (``_Generator.truth``)."""

    user: str
    item: str
    ts: int  # of its impression (before the stream's strict-ts bump)
    relation: str  # successor, session, interest or off
    past: str  # "", "engaged" or "rejected": the user's last response to this item
    engage: float
    like: float  # P(like or share) = engage * P(like | engaged)
    purchase: float
    skip: float
    dislike: float
    actions: tuple[str, ...]  # what the user then did (after the impression), in order


_Shown = tuple[int, int, str, int | None, str]  # (ts, item, action, dwell_ms, surface)


class _Generator:
    """Interleaves user sessions on one clock and yields their events in time order."""

    def __init__(self, config: SyntheticConfig, record_truth: bool = False) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.start_ms = config.start_ms if config.start_ms is not None else default_start_ms(config.span_days)
        lifecycle = None if config.static_catalogue else _Lifecycle(config, self.start_ms)
        self.catalogue = _Catalogue(config, self.rng, lifecycle)
        self.id_prefix = config.id_prefix or f"s{config.seed}-{self.start_ms}"
        self.interests: dict[int, list[int]] = {}
        self.busy_until: dict[int, int] = {}
        actions = config.action_weights
        self.positive_actions = list(actions)
        self.positive_cum = list(itertools.accumulate(actions.values()))
        self.end_ms = self.start_ms + int(config.span_days * DAY_MS)  # no session starts later
        self.truth: list[Truth] | None = [] if record_truth else None
        self.past: dict[int, dict[int, str]] = {}  # funnel: user -> item -> "engaged" | "rejected"
        self.appeal: list[float] = []
        if config.funnel:  # its own generator, so the shared stream of draws stays as it is
            appeal_rng = random.Random(config.seed * 1_000_003 + 17)
            self.appeal = [math.exp(appeal_rng.gauss(0.0, FUNNEL_APPEAL_SIGMA)) for _ in range(config.items)]

    def user_interests(self, user: int) -> list[int]:
        rng, config = self.rng, self.config
        interests = self.interests.get(user)
        if interests is None:
            interests = rng.sample(range(config.clusters), config.interests_per_user)
            self.interests[user] = interests
        elif rng.random() < config.drift:
            outside = rng.randrange(config.clusters)
            if outside not in interests:
                interests[rng.randrange(len(interests))] = outside
        return interests

    def session(self, user: int, start: int) -> list[_Shown]:
        """(ts, item, action, dwell_ms, surface) of one session, in time order."""
        rng, config, catalogue = self.rng, self.config, self.catalogue
        interests = self.user_interests(user)
        weights = [1.0 / (rank + 1) for rank in range(len(interests))]  # first interest dominates
        cluster = rng.choices(interests, weights)[0]
        # Geometric on 1, 2, ... with mean mean_session_events.
        stop = 1.0 / config.mean_session_events
        length = 1 if stop >= 1.0 else 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - stop))
        surface = rng.choice(SURFACES)
        ts, previous = start, None
        out: list[_Shown] = []
        for _ in range(length):
            if len(interests) > 1 and rng.random() < config.switch_cluster:
                cluster = rng.choice([c for c in interests if c != cluster])
                previous = None
            if rng.random() < config.off_interest:
                item = catalogue.any_item(rng)
                for _retry in range(3):
                    if catalogue.cluster_of[item] not in interests:
                        break
                    item = catalogue.any_item(rng)
                if config.funnel:
                    in_cluster = catalogue.cluster_of[item]
                    relation = (
                        "off" if in_cluster not in interests else "session" if in_cluster == cluster else "interest"
                    )
                    ts, _ = self._respond(user, item, relation, ts, surface, out)
                    continue
                draw = rng.random()
                if draw < 0.55:
                    action, dwell = "skip", int(rng.uniform(200, 2_500))
                elif draw < 0.70:
                    action, dwell = "dislike", int(rng.uniform(500, 5_000))
                else:
                    action, dwell = "impression", None
                out.append((ts, item, action, dwell, surface))
            else:
                follow = previous is not None and rng.random() < config.follow_successor
                linked = catalogue.successor(previous, rng) if follow and previous is not None else None
                if linked is not None:
                    item, item_surface = linked, "related"
                else:
                    item = catalogue.in_cluster(cluster, rng)
                    item_surface = surface
                if config.funnel:
                    successor = previous is not None and item in catalogue.successors[previous]
                    ts, engaged = self._respond(
                        user, item, "successor" if successor else "session", ts, item_surface, out
                    )
                    if engaged:
                        previous = item
                    continue
                index = bisect.bisect_left(self.positive_cum, rng.random() * self.positive_cum[-1])
                action = self.positive_actions[min(index, len(self.positive_actions) - 1)]
                dwell = None if action == "impression" else int(rng.lognormvariate(9.5, 0.8))  # ~13 s median
                out.append((ts, item, action, dwell, item_surface))
                if action != "impression":
                    previous = item
            ts += (dwell or 0) + int(rng.lognormvariate(8.5, 1.0)) + 1  # think time ~5 s median
        return out

    def _respond(
        self,
        user: int,
        item: int,
        relation: str,
        ts: int,
        surface: str,
        out: list[_Shown],
    ) -> tuple[int, bool]:
        """Funnel mode: the impression of ``item`` and the user's response, appended to ``out``;
        returns (ts of the session's next item, whether the user engaged)."""
        rng = self.rng
        past = self.past.setdefault(user, {})
        before = past.get(item, "")
        engage = FUNNEL_ENGAGE[relation] * self.appeal[item]
        engage *= {"": 1.0, "engaged": FUNNEL_REPEAT_ENGAGE, "rejected": FUNNEL_REJECTED_ENGAGE}[before]
        engage = min(engage, 0.95)
        like = FUNNEL_LIKE[relation]
        purchase = FUNNEL_PURCHASE[before == "engaged"]
        skip, dislike = FUNNEL_NEGATIVE["off" if relation == "off" else "on"]
        first = len(out)
        out.append((ts, item, "impression", None, surface))
        ts += int(rng.lognormvariate(7.6, 0.6)) + 1  # reaction time ~2 s median
        engaged = rng.random() < engage
        if engaged:
            past[item] = "engaged"
            dwell = int(rng.lognormvariate(9.5, 0.8))  # ~13 s median
            out.append((ts, item, "view" if rng.random() < 0.45 else "click", dwell, surface))
            ts += dwell
            if rng.random() < like:
                ts += int(rng.uniform(300, 3_000))
                out.append((ts, item, "like" if rng.random() < 0.7 else "share", int(rng.uniform(300, 3_000)), surface))
            if rng.random() < purchase:
                ts += int(rng.lognormvariate(9.0, 0.5))
                out.append((ts, item, "purchase", int(rng.uniform(2_000, 20_000)), surface))
        else:
            draw = rng.random()
            if draw < skip:
                past[item] = "rejected"
                out.append((ts, item, "skip", int(rng.uniform(200, 2_500)), surface))
            elif draw < skip + dislike:
                past[item] = "rejected"
                out.append((ts, item, "dislike", int(rng.uniform(500, 5_000)), surface))
        if self.truth is not None:
            probabilities = (engage, engage * like, engage * purchase, (1 - engage) * skip, (1 - engage) * dislike)
            actions = tuple(shown[2] for shown in out[first + 1 :])
            self.truth.append(Truth(f"u{user}", f"i{item}", out[first][0], relation, before, *probabilities, actions))
        return ts + int(rng.lognormvariate(8.5, 1.0)) + 1, engaged  # think time ~5 s median

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng, config = self.rng, self.config
        heap: list[tuple[int, int, int, int, str, int | None, str]] = []
        next_start = float(self.start_ms)
        generated = 0  # events of the sessions started so far
        sequence = itertools.count()
        last_ts = self.start_ms - 1
        emitted = 0
        while emitted < config.events:
            if generated < config.events and (not heap or next_start <= heap[0][0]):
                user = self.catalogue.user(rng)
                start = max(int(next_start), self.busy_until.get(user, 0) + 1)
                self.catalogue.refresh(start)
                events = self.session(user, start)
                self.busy_until[user] = events[-1][0]
                for ts, item, action, dwell, surface in events:
                    heapq.heappush(heap, (ts, next(sequence), user, item, action, dwell, surface))
                generated += len(events)
                # Poisson session starts, paced so the remaining sessions fill the remaining span.
                sessions_left = max(1.0, (config.events - generated) / config.mean_session_events)
                mean_gap = max(self.end_ms - next_start, 1.0) / sessions_left
                next_start = min(next_start + rng.expovariate(1.0 / mean_gap), float(self.end_ms))
                continue
            ts, _, user, item, action, dwell, surface = heapq.heappop(heap)
            last_ts = max(ts, last_ts + 1)  # strictly increasing across the stream
            event: dict[str, Any] = {
                "event_id": f"{self.id_prefix}-{emitted}",
                "user_id": f"u{user}",
                "item_id": f"i{item}",
                "action": action,
                "ts": last_ts,
                "surface": surface,
            }
            if dwell is not None:
                event["dwell_ms"] = dwell
            yield event
            emitted += 1


def default_start_ms(span_days: float) -> int:
    """The clock's default start: ``span_days`` + 1 day ago, so the stream ends about a day
    before now (the last sessions run on)."""
    return int(time.time() * 1000) - int((span_days + 1) * DAY_MS)


def item_launches(config: SyntheticConfig) -> list[ItemLaunch]:
    """Each item's launch time and life cycle kind (the truth behind a drifting catalogue; a
    static one launched every item one span before the start). Set ``start_ms`` to fix the clock."""
    start_ms = config.start_ms if config.start_ms is not None else default_start_ms(config.span_days)
    lifecycle = _Lifecycle(config, start_ms)
    return [
        ItemLaunch(f"i{item}", lifecycle.launch_ms[item], lifecycle.evergreen[item]) for item in range(config.items)
    ]


def generate_events(config: SyntheticConfig) -> Iterator[dict[str, Any]]:
    """Contract events (dicts) of the synthetic model, strictly increasing in ``ts``.

    Deterministic for a given config (set ``start_ms`` to fix the clock as well); events
    without ``dwell_ms`` (impressions) omit the key.
    """
    return iter(_Generator(config))


def events_between_days(config: SyntheticConfig, after_day: float | None, until_day: float) -> Iterator[dict[str, Any]]:
    """The events of ``config``'s stream from the end of its day ``after_day`` (None: its start)
    to the end of day ``until_day`` (days counted from ``start_ms``, which must be set), so a
    stream can be replayed a day at a time."""
    if config.start_ms is None:
        raise ValueError("events_between_days needs the stream's start_ms (its clock) set")
    low = -1 if after_day is None else config.start_ms + int(after_day * DAY_MS)
    high = config.start_ms + int(until_day * DAY_MS)
    for event in generate_events(config):  # strictly increasing in ts
        if event["ts"] > high:
            return
        if event["ts"] > low:
            yield event
