"""The promotion gate: a candidate version gets the serving alias only if it passes a policy.

Both versions are evaluated *now*, at the *same* feature versions: the candidate's (the ones
it was trained on, from its model.json). Production is the version the serving alias
(``serve_model_alias``, ``production``) names. Two policies (``GatePolicy.kind``):

``margin``: both on the validation split; the candidate must beat production.

* no production version yet: the candidate is promoted (the first one);
* the candidate already is production: nothing changes;
* ``relative`` margin (default, 1%): promoted iff candidate > production x (1 + margin);
* ``absolute`` margin: promoted iff candidate > production + margin.

The comparison is strict, so a candidate that only ties production is refused. Relative is the
default because NDCG values depend on the catalogue and the data (a fixed absolute gain means
little when production scores 0.02 and a lot when it scores 0.4).

``freshness`` (``FRESHNESS_GATE``, the loop's default): a candidate trained on newer data than production
(a higher features/user_sequences version) is scored with production, time-ordered
(``training.retrieval.prequential``), on the positive events of the ``window_hours`` after the
candidate's data (``T`` = the newest event of its feature versions; the events of ``(T, T + W]``
at the newest feature versions): events neither model trained on, so neither is favoured. It is
promoted unless it is worse than production by more than ``tolerance`` (relative): candidate >=
production x (1 - tolerance). Freshness has a value of its own (new items, current
popularity) that a fixed validation split does not see, so it only has to hold its ground.
Right after training no such event exists yet: the gate refuses, saying it waits, and
``workflows.rounds.gate_pending`` judges the candidate again once newer events have landed (the
next round does it first). An empty window, one with fewer than ``min_window_targets`` target
events (too few to tell two models apart: three events gave NDCG 0.0000 to both), a window the
data cannot fill, or a candidate that knows none of the window's targets refuses with the
reason; a production model that knows none of them (all the targets are newer) loses to a
candidate that can score them. A candidate that is not trained on newer data has no freshness
to value: the margin rule judges it.

The decision, both values and the threshold (and the window) are logged to the candidate's
MLflow run (``gate_*`` metrics and tags); a refused candidate leaves the alias where it is.
Everything here is plain functions: the Dagster assets (``workflows.assets.promotion``) and
the demo call them.

One round from code::

    from workflows.promotion import GatePolicy, run_gate
    outcome = run_gate(settings, candidate_version, GatePolicy())   # evaluate, decide, log, promote

The ranking model (``settings.mlflow.registered_ranking_model``) goes through the same gate with
``task="ranking"``: both rankers are evaluated on the validation split of
features/ranking_examples at the candidate's versions, on validation click AUC by default
(``RANKING_GATE``: above production by 0.002, absolute; an AUC's floor is 0.5, not 0)::

    outcome = run_gate(settings, ranker_version, RANKING_GATE, task="ranking")
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from infra.settings import Settings

Task = Literal["retrieval", "ranking"]
PolicyKind = Literal["margin", "freshness"]

SPLIT = "validation"
PREFIX = "val_"  # the metric keys of the validation split (val_ndcg_10, ...)
WINDOW_PREFIX = "window_"  # the metric keys of a time-ordered window (window_ndcg_10, ...)


@dataclass(frozen=True)
class GatePolicy:
    """What a candidate must achieve: ``margin``: ``metric`` on validation above production by
    ``margin``; ``freshness``: trained on newer data, ``metric`` on the ``window_hours`` after the
    candidate's data not below production by more than ``tolerance`` (else the margin rule)."""

    metric: str = "ndcg_10"
    margin: float = 0.01
    margin_kind: Literal["relative", "absolute"] = "relative"
    kind: PolicyKind = "margin"
    tolerance: float = 0.05
    window_hours: float = 24.0
    min_window_targets: int = 200

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"the margin must not be negative, got {self.margin}")
        if self.margin_kind not in ("relative", "absolute"):
            raise ValueError(f"margin_kind must be relative or absolute, got {self.margin_kind!r}")
        if self.kind not in ("margin", "freshness"):
            raise ValueError(f"the policy kind must be margin or freshness, got {self.kind!r}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"the tolerance must lie in [0, 1), got {self.tolerance}")
        if self.window_hours <= 0:
            raise ValueError(f"window_hours must be > 0, got {self.window_hours}")
        if self.min_window_targets < 1:
            raise ValueError(f"min_window_targets must be >= 1, got {self.min_window_targets}")

    @property
    def key(self) -> str:
        """The metric's key among the validation metrics (``val_ndcg_10``)."""
        return PREFIX + self.metric

    @property
    def window_key(self) -> str:
        """The metric's key among a window's metrics (``window_ndcg_10``)."""
        return WINDOW_PREFIX + self.metric

    @property
    def window_ms(self) -> int:
        return int(self.window_hours * 3_600_000)

    def key_for(self, comparison: Comparison) -> str:
        """The key the comparison is judged on: the window's under freshness, else validation's."""
        return self.window_key if comparison.window is not None else self.key

    def threshold(self, production: float) -> float:
        """The value a candidate must exceed (margin rule)."""
        if self.margin_kind == "relative":
            return production * (1.0 + self.margin)
        return production + self.margin

    def freshness_threshold(self, production: float) -> float:
        """The value a fresher candidate must reach (freshness rule)."""
        return production * (1.0 - self.tolerance)

    def describe(self) -> str:
        gain = f"{self.margin:.0%}" if self.margin_kind == "relative" else f"+{self.margin:g}"
        margin = f"validation {self.metric} above production by {gain} ({self.margin_kind})"
        if self.kind == "margin":
            return margin
        return (
            f"freshness: trained on newer data and {self.metric} on the {self.window_hours:g} h after its data "
            f"not below production by more than {self.tolerance:.0%}; else {margin}"
        )


RANKING_GATE = GatePolicy(metric="auc_click", margin=0.002, margin_kind="absolute")
"""The ranking model's default gate: validation click AUC above production's by 0.002."""
FRESHNESS_GATE = GatePolicy(kind="freshness")
"""The loop's gate (the Dagster promotion assets, ``warm_start_round``): the freshness policy with its
defaults, a 24-hour window and a 5% tolerance on NDCG@10."""


@dataclass(frozen=True)
class Comparison:
    """Candidate and production evaluated on validation at the candidate's feature versions."""

    model: str
    candidate_version: str
    candidate_run_id: str
    feature_versions: dict[str, int]
    candidate_metrics: dict[str, float]
    production_version: str | None = None
    production_metrics: dict[str, float] | None = None
    task: Task = "retrieval"
    production_feature_versions: dict[str, int] | None = None
    window: dict[str, Any] | None = None  # freshness: start_ms, length_ms, targets (and error); metrics window_*

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Comparison:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on a comparison."""

    promote: bool
    label: Literal["first", "promoted", "refused", "unchanged"]
    reason: str
    candidate_value: float
    production_value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class GateOutcome:
    """What the gate did: the comparison, the decision and where the alias points afterwards."""

    comparison: Comparison
    decision: Decision
    policy: GatePolicy
    production_before: str | None
    production_after: str | None
    notes: list[str] = field(default_factory=list)


def decide(comparison: Comparison, policy: GatePolicy) -> Decision:
    """The gate's rule (see the module docstring); no side effects."""
    if comparison.window is not None:
        return _decide_freshness(comparison, policy)
    candidate = _metric(comparison.candidate_metrics, policy, "candidate")
    production_version = comparison.production_version
    if production_version is None or comparison.production_metrics is None:
        return Decision(True, "first", f"no {comparison.model} version is in production yet", candidate)
    production = _metric(comparison.production_metrics, policy, "production")
    if production_version == comparison.candidate_version:
        return Decision(
            False, "unchanged", f"version {production_version} already is production", candidate, production
        )
    threshold = policy.threshold(production)
    shown = f"{policy.metric} {candidate:.4f} vs production v{production_version} {production:.4f}"
    rule = policy.describe()
    if policy.kind == "freshness":
        rule = f"the margin rule of the freshness policy: the candidate is not trained on newer data; {rule}"
    if math.isnan(candidate) or math.isnan(production):
        return Decision(False, "refused", f"{shown}: a metric is NaN", candidate, production, threshold)
    if candidate > threshold:
        reason = f"{shown}: beats the threshold {threshold:.4f} ({rule})"
        return Decision(True, "promoted", reason, candidate, production, threshold)
    reason = f"{shown}: not above the threshold {threshold:.4f} ({rule}); the alias stays"
    return Decision(False, "refused", reason, candidate, production, threshold)


def _decide_freshness(comparison: Comparison, policy: GatePolicy) -> Decision:
    """The freshness rule on a comparison of the window after the candidate's data (``comparison.window``)."""
    window = comparison.window or {}
    key, nan = policy.window_key, math.nan
    where = f"the {policy.window_hours:g} h after the candidate's data"
    if window.get("start_ms") is not None:
        where += f" ({window['start_ms']}, {window['start_ms'] + window['length_ms']}]"
    if window.get("error"):
        return Decision(False, "refused", f"{where}: {window['error']}; the alias stays", nan)
    wait = "; the alias stays until events after the candidate's data fill it (gate_pending judges it again)"
    if not window.get("targets"):
        reason = f"{where} holds no positive event with a history: nothing to judge on{wait}"
        return Decision(False, "refused", reason, nan)
    if window["targets"] < policy.min_window_targets:
        reason = (
            f"{where} holds {window['targets']} target events, fewer than the {policy.min_window_targets} the policy "
            f"needs to tell two models apart (min_window_targets){wait}"
        )
        return Decision(False, "refused", reason, nan)
    if key not in comparison.candidate_metrics:
        reason = f"the candidate knows none of the {window['targets']} target items of {where}; the alias stays"
        return Decision(False, "refused", reason, nan)
    candidate = float(comparison.candidate_metrics[key])
    production_version = comparison.production_version
    if key not in (comparison.production_metrics or {}):
        reason = (
            f"{policy.metric} {candidate:.4f} on {where}; production v{production_version} knows none of its "
            f"{window['targets']} target items: the fresher candidate replaces it"
        )
        return Decision(True, "promoted", reason, candidate)
    production = float((comparison.production_metrics or {})[key])
    threshold = policy.freshness_threshold(production)
    shown = f"{policy.metric} {candidate:.4f} vs production v{production_version} {production:.4f} on {where}"
    if math.isnan(candidate) or math.isnan(production):
        return Decision(False, "refused", f"{shown}: a metric is NaN", candidate, production, threshold)
    if candidate >= threshold:
        reason = f"{shown}: trained on newer data and within the tolerance (>= {threshold:.4f}; {policy.describe()})"
        return Decision(True, "promoted", reason, candidate, production, threshold)
    drop = 1.0 - candidate / production if production else math.inf
    reason = (
        f"{shown}: worse than production by {drop:.1%}, more than the tolerance {policy.tolerance:.0%} "
        f"(below {threshold:.4f}); the alias stays"
    )
    return Decision(False, "refused", reason, candidate, production, threshold)


def _metric(metrics: dict[str, float], policy: GatePolicy, who: str) -> float:
    if policy.key not in metrics:
        raise ValueError(f"the {who}'s validation metrics have no {policy.key}; known: {sorted(metrics)}")
    return float(metrics[policy.key])


def evaluate_at(settings: Settings, version: str, versions: dict[str, int]) -> dict[str, float]:
    """Validation metrics (``val_*``) of registered ``version`` at feature ``versions``.

    Like ``training.retrieval.version_eval.evaluate_version``, but at the given feature versions rather
    than the model's own or the newest: the gate reads production at the candidate's.
    """
    from features.reader import FeatureVersions, load_examples
    from training.common import tracking
    from training.retrieval.evaluation import split_metrics, split_ranks
    from training.retrieval.io import read_info
    from training.retrieval.metrics import DEFAULT_KS
    from training.retrieval.retriever import Retriever

    with tracking.downloaded_version(settings, version) as directory:
        retriever = Retriever.from_directory(directory)
        info = read_info(directory)
    examples = load_examples(settings, SPLIT, FeatureVersions.from_dict(versions), max_len=info.encoder.max_len)
    return split_metrics(split_ranks(retriever, examples), DEFAULT_KS, PREFIX.rstrip("_"))


def evaluate_ranking_at(settings: Settings, version: str, versions: dict[str, int]) -> dict[str, float]:
    """Validation metrics (``val_auc_click``, ...) of registered ranker ``version`` at the
    ranking feature ``versions`` (features/ranking_examples and item_vocab)."""
    from features.ranking_reader import RankingVersions, load_ranking_examples
    from training.common import tracking
    from training.ranking.evaluation import evaluate, predict
    from training.ranking.io import RankingScorer

    with tracking.downloaded_version(settings, version, settings.mlflow.registered_ranking_model) as directory:
        scorer = RankingScorer.from_directory(directory)
    examples = load_ranking_examples(settings, SPLIT, RankingVersions.from_dict(versions), max_len=scorer.max_len)
    metrics, _ = evaluate(predict(scorer.score_batch, examples), scorer.tasks, PREFIX.rstrip("_"))
    return metrics


def model_name(settings: Settings, task: Task = "retrieval") -> str:
    """The registered model of ``task``."""
    return settings.mlflow.registered_ranking_model if task == "ranking" else settings.mlflow.registered_model


def model_feature_versions(settings: Settings, version: str, task: Task = "retrieval") -> dict[str, int]:
    """The feature versions registered ``version`` was trained on (its model.json or ranking.json)."""
    from training.common import tracking

    with tracking.downloaded_version(settings, version, model_name(settings, task)) as directory:
        if task == "ranking":
            from training.ranking.io import read_ranking_info

            return read_ranking_info(directory).feature_versions
        from training.retrieval.io import read_info

        return read_info(directory).feature_versions


def evaluate_window_at(
    settings: Settings,
    version: str,
    versions: dict[str, int],
    window_ms: int,
    start_ms: int | None = None,
    new_after_ms: int | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """(window, metrics) of registered ``version`` on the window of ``window_ms`` starting after
    ``start_ms`` (None: the most recent, ending at the newest event) at feature ``versions``;
    "new" items are those first seen after ``new_after_ms`` (default the window's start).

    The window is ``{start_ms, length_ms, targets}``, plus ``error`` when the data cannot give it;
    the metrics are ``window_*``: none when the window is empty, only the unknown-target share
    when the model knows none of its targets."""
    from features.reader import FeatureVersions
    from training.retrieval.prequential import NoOverlapError
    from training.retrieval.version_eval import evaluate_version_window

    window: dict[str, Any] = {"start_ms": start_ms, "length_ms": window_ms, "targets": 0}
    try:
        result, _ = evaluate_version_window(
            settings,
            version,
            start_ms,
            window_ms,
            versions=FeatureVersions.from_dict(versions),
            new_after_ms=new_after_ms,
        )
    except NoOverlapError as error:
        return {**window, "error": str(error)}, {WINDOW_PREFIX + "unknown_target_share": 1.0}
    except ValueError as error:
        return {**window, "error": str(error)}, {}
    return {**window, "start_ms": result.window.start_ms, "targets": result.targets}, result.metrics


def data_end_ms(settings: Settings, versions: dict[str, int]) -> int:
    """The newest event (epoch ms) of the user_sequences version in ``versions``: where a model
    trained on those versions stops knowing the stream."""
    from features.reader import FeatureVersions, read_sequences

    _, flat = read_sequences(settings, FeatureVersions.from_dict(versions).user_sequences)
    if len(flat.timestamps) == 0:
        raise ValueError(f"user_sequences version {versions} holds no events")
    return int(flat.timestamps.max())


def newest_feature_versions(settings: Settings) -> dict[str, int]:
    """The newest consistent feature versions (``features.reader.latest_versions``) as a dict."""
    from features.reader import latest_versions

    return latest_versions(settings).as_dict()


def trained_on_newer_data(candidate: dict[str, int], production: dict[str, int]) -> bool:
    """Whether the candidate's feature versions are newer than production's (user_sequences)."""
    from features.reader import FeatureVersions

    return FeatureVersions.from_dict(candidate).user_sequences > FeatureVersions.from_dict(production).user_sequences


def compare(
    settings: Settings, candidate_version: str, task: Task = "retrieval", policy: GatePolicy | None = None
) -> Comparison:
    """Evaluate the candidate and the current production version: under the freshness ``policy``,
    when the candidate is trained on newer data than production, on the window after the
    candidate's data at the newest feature versions; else on validation at the candidate's."""
    from serving.registry import served_version
    from training.common import tracking

    name = model_name(settings, task)
    evaluate = evaluate_ranking_at if task == "ranking" else evaluate_at
    run_id = tracking.client(settings).get_model_version(name, candidate_version).run_id or ""
    versions = model_feature_versions(settings, candidate_version, task)
    production = served_version(settings, name)
    if policy is not None and policy.kind == "freshness" and task == "retrieval" and production is not None:
        production_versions = model_feature_versions(settings, production, task)
        if production != candidate_version and trained_on_newer_data(versions, production_versions):
            # Events neither model trained on: those after the candidate's data, at the newest features.
            # New items: those launched after production's data, which only the candidate can know.
            start, latest = data_end_ms(settings, versions), newest_feature_versions(settings)
            new_after = data_end_ms(settings, production_versions)
            window, candidate_metrics = evaluate_window_at(
                settings, candidate_version, latest, policy.window_ms, start, new_after
            )
            window.update(feature_versions=latest, new_after_ms=new_after)
            production_metrics: dict[str, float] | None = {}
            if window["targets"] and "error" not in window:
                found, production_metrics = evaluate_window_at(
                    settings, production, latest, policy.window_ms, start, new_after
                )
                if "error" in found and not production_metrics.get(WINDOW_PREFIX + "unknown_target_share"):
                    window = {**window, "error": f"production: {found['error']}"}
            return Comparison(
                name,
                candidate_version,
                run_id,
                versions,
                candidate_metrics,
                production,
                production_metrics,
                task,
                production_versions,
                window,
            )
    candidate_metrics = evaluate(settings, candidate_version, versions)
    production_metrics = None
    if production is not None:
        same = production == candidate_version
        production_metrics = candidate_metrics if same else evaluate(settings, production, versions)
    return Comparison(
        name, candidate_version, run_id, versions, candidate_metrics, production, production_metrics, task
    )


def record(settings: Settings, comparison: Comparison, decision: Decision, policy: GatePolicy) -> None:
    """Log the comparison and the decision to the candidate's MLflow run (``gate_*``)."""
    from training.common import tracking

    if not comparison.candidate_run_id:
        return
    metrics = {f"gate_candidate_{key}": value for key, value in comparison.candidate_metrics.items()}
    for key, value in (comparison.production_metrics or {}).items():
        metrics[f"gate_production_{key}"] = value
    if decision.threshold is not None:
        metrics[f"gate_threshold_{policy.key_for(comparison)}"] = decision.threshold
    tracking.log_metrics(settings, comparison.candidate_run_id, metrics, step=0)
    tags = {
        "gate_decision": decision.label,
        "gate_promoted": str(decision.promote).lower(),
        "gate_reason": decision.reason[:5000],
        "gate_production_version": comparison.production_version or "",
        "gate_feature_versions": json.dumps(comparison.feature_versions, sort_keys=True),
        "gate_policy": json.dumps(asdict(policy), sort_keys=True),
    }
    if comparison.window is not None:
        tags["gate_window"] = json.dumps(comparison.window, sort_keys=True)[:5000]
    tracking.set_tags(settings, comparison.candidate_run_id, tags)


def settle(settings: Settings, comparison: Comparison, policy: GatePolicy) -> GateOutcome:
    """Decide on ``comparison``, log it to the candidate's run, and promote when it passes.

    When the alias moved since the comparison was made, the candidate is compared again with
    the version that serves now: the gate never judges against a stale production.
    """
    from serving.registry import promote, served_version

    notes = []
    before = served_version(settings, comparison.model)
    if before != comparison.production_version:
        notes.append(
            f"production moved from {comparison.production_version} to {before} since the evaluation: compared again"
        )
        comparison = compare(settings, comparison.candidate_version, comparison.task, policy)
    decision = decide(comparison, policy)
    record(settings, comparison, decision, policy)
    after = before
    if decision.promote:
        promote(settings, comparison.candidate_version, model=comparison.model)
        after = comparison.candidate_version
    return GateOutcome(comparison, decision, policy, before, after, notes)


def run_gate(
    settings: Settings, candidate_version: str, policy: GatePolicy | None = None, task: Task = "retrieval"
) -> GateOutcome:
    """One gate round: ``compare`` then ``settle`` (what the demo calls after training); the
    default policy is ``GatePolicy()`` (margin) for retrieval and ``RANKING_GATE`` for ranking."""
    policy = policy or (RANKING_GATE if task == "ranking" else GatePolicy())
    return settle(settings, compare(settings, candidate_version, task, policy), policy)


def pending_candidate(settings: Settings) -> str | None:
    """The retrieval version that waits for the freshness gate: the newest registered version
    when it is newer than production and trained on newer data (a candidate refused while no
    event after its data existed, or one refused on an older window); None when there is none
    (a version on production's data is a model production was chosen over, not a candidate)."""
    from serving.registry import served_version

    production, newest = served_version(settings), newest_version(settings)
    if production is None or newest is None or int(newest) <= int(production):
        return None
    newer = trained_on_newer_data(
        model_feature_versions(settings, newest), model_feature_versions(settings, production)
    )
    return newest if newer else None


def newest_version(settings: Settings, model: str | None = None) -> str | None:
    """The highest registered version of ``model`` (default ``settings.mlflow.registered_model``; None: none yet)."""
    versions = registered_versions(settings, model)
    return str(max(versions)) if versions else None


def registered_versions(settings: Settings, model: str | None = None) -> list[int]:
    """Every registered version number of ``model`` (default ``settings.mlflow.registered_model``)."""
    from training.common import tracking

    name = model or settings.mlflow.registered_model
    found = tracking.client(settings).search_model_versions(filter_string=f"name = '{name}'")
    return sorted(int(version.version) for version in found)


def outcome_metadata(outcome: GateOutcome) -> dict[str, Any]:
    """Flat metadata of a gate outcome (for the Dagster UI)."""
    decision = outcome.decision
    key = outcome.policy.key_for(outcome.comparison)
    metadata: dict[str, Any] = {
        "registered_model": outcome.comparison.model,
        "decision": decision.label,
        "promoted": decision.promote,
        "reason": decision.reason,
        "candidate_version": outcome.comparison.candidate_version,
        "candidate_run_id": outcome.comparison.candidate_run_id,
        "production_before": outcome.production_before,
        "production_after": outcome.production_after,
        f"candidate_{key}": decision.candidate_value,
        f"production_{key}": decision.production_value,
        "threshold": decision.threshold,
        "policy": outcome.policy.describe(),
        "feature_versions": outcome.comparison.feature_versions,
    }
    if outcome.comparison.window is not None:
        metadata["window"] = outcome.comparison.window
    if outcome.notes:
        metadata["notes"] = "; ".join(outcome.notes)
    return metadata
