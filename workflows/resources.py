"""Dagster resources of streamrec, built from the one settings object (``infra.settings``).

* ``StreamrecResource``: the Settings every step, sensor and check runs with. The addresses
  (home and lake, broker and topic, MLflow and its registered model, Ray, Spark) are fields of
  their own, so the Dagster UI shows them; every other setting travels in ``other_settings``.
* ``StepRunner``: how ingest and feature builds (ranking_examples included) run: ``in_process`` (in the Dagster run's
  process) or ``ray_job`` (a `streamrec` command as a Ray job on the cluster of the
  settings). Training always runs on Ray Train workers; its driver is light.
* ``QualityThresholds``: the limits of the asset checks.
* ``PromotionPolicy``: the gate's metric and margin (``workflows.promotion``);
  ``RankingPromotionPolicy``: the ranking model's (validation click AUC, +0.002 absolute).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from pydantic import Field

from infra.settings import Settings
from workflows.promotion import FRESHNESS_GATE, RANKING_GATE, GatePolicy

if TYPE_CHECKING:
    from features.ranking import RankingSpec

Log = Callable[[str], None]

# Settings shown as fields of their own in the Dagster UI (and overridable in the launchpad).
ADDRESS_SETTINGS = (
    "home",
    "lake_uri",
    "kafka_bootstrap",
    "topic",
    "mlflow_tracking_uri",
    "mlflow_experiment",
    "registered_model",
    "serve_model_alias",
    "ray_address",
    "ray_dashboard_port",
    "spark_master",
)


class StreamrecResource(dg.ConfigurableResource):
    """The streamrec settings of the workflow: lake, broker, MLflow, Ray and Spark access."""

    home: str = Field(description="STREAMREC_HOME: lake, checkpoints, logs.")
    lake_uri: str = Field(default="", description="Root of the Delta tables ('' = <home>/lake).")
    kafka_bootstrap: str = Field(description="Kafka bootstrap servers.")
    topic: str = Field(description="Topic of user-action events.")
    mlflow_tracking_uri: str = Field(description="MLflow tracking server (and model registry).")
    mlflow_experiment: str = Field(description="MLflow experiment of training runs.")
    registered_model: str = Field(description="Registered retrieval model the gate promotes versions of.")
    serve_model_alias: str = Field(description="The alias serving follows (production).")
    ray_address: str = Field(description="Ray cluster: GCS host:port or ray:// URI.")
    ray_dashboard_port: int = Field(description="Port of the Ray dashboard (job API, state API).")
    spark_master: str = Field(description="Spark master of the ingest and full feature builds.")
    other_settings: str = Field(default="{}", description="Every other streamrec setting, as JSON.")

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamrecResource:
        """The resource that reproduces ``settings`` exactly."""
        values = settings.flat_dump(mode="json")
        shown = {name: values.pop(name) for name in ADDRESS_SETTINGS}
        return cls(**shown, other_settings=json.dumps(values, sort_keys=True))

    def settings(self) -> Settings:
        """The Settings object the streamrec functions take."""
        values = {name: getattr(self, name) for name in ADDRESS_SETTINGS}
        return Settings(**json.loads(self.other_settings), **values)


@dataclass(frozen=True)
class StepOutcome:
    """What a heavy step reported: its summary and, for a Ray job, the job's id and log."""

    summary: dict[str, Any] = field(default_factory=dict)
    ray_job_id: str | None = None
    seconds: float | None = None

    def metadata(self) -> dict[str, Any]:
        found: dict[str, Any] = {"ran_as": "ray_job" if self.ray_job_id else "in_process"}
        if self.ray_job_id:
            found["ray_job_id"] = self.ray_job_id
        if self.seconds is not None:
            found["seconds"] = round(self.seconds, 1)
        return found


class StepRunner(dg.ConfigurableResource):
    """Runs ingest and feature builds in this process or as Ray jobs (``mode``)."""

    mode: Literal["in_process", "ray_job"] = Field(
        default="in_process", description="in_process: in the Dagster run's process; ray_job: a Ray job on the cluster."
    )
    poll_s: float = Field(default=2.0, description="How often a Ray job's status and log are read.")
    timeout_s: float = Field(default=3600.0, description="A Ray job running longer is stopped and the step fails.")
    log_tail_lines: int = Field(default=40, description="Lines of a failed job's log shown with the failure.")

    @classmethod
    def from_settings(cls, settings: Settings) -> StepRunner:
        return cls(mode=settings.dagster.steps)

    def ingest(self, settings: Settings, log: Log) -> StepOutcome:
        """`streamrec ingest --until-idle`: everything on the topic now lands in bronze/quarantine/silver."""
        if self.mode == "ray_job":
            result = self._ray_job(settings, ["ingest", "--until-idle"], "ingest", log)
            return StepOutcome(result.last_json("batches") or {}, result.job_id, result.seconds)
        from ingestion.stream import run_ingest

        stats = run_ingest(settings, until_idle=True, report=lambda item: log(str(item)))
        return StepOutcome(json.loads(stats.to_json()), seconds=stats.seconds)

    def build_features(
        self, settings: Settings, log: Log, full: bool = False, ranking: RankingSpec | None = None
    ) -> StepOutcome:
        """`streamrec features build --incremental` (``full``: without it): the feature tables catch up
        with silver; with ``ranking``, features/ranking_examples too (``--ranking``)."""
        if self.mode == "ray_job":
            from workflows.ray_jobs import tail

            args = ["features", "build", "--json"] if full else ["features", "build", "--incremental", "--json"]
            if ranking is not None:
                args += ["--ranking", "--ranking-window-s", str(ranking.window_ms / 1000),
                         "--ranking-max-len", str(ranking.max_len)]  # fmt: skip
            result = self._ray_job(settings, args, "features", log)
            summary = result.last_json("silver_version")  # the one JSON line `--json` prints
            if summary is None:
                raise dg.Failure(
                    description=f"`streamrec {' '.join(args)}` (Ray job {result.job_id}) printed no JSON outcome",
                    metadata={
                        "ray_job_id": result.job_id,
                        "log_tail": dg.MetadataValue.md(f"```\n{tail(result.logs, self.log_tail_lines)}\n```"),
                    },
                )
            return StepOutcome(summary, result.job_id, result.seconds)
        from features.build import build

        return StepOutcome(build(settings, incremental=not full, log=log, ranking=ranking).summary())

    def _ray_job(self, settings: Settings, args: list[str], step: str, log: Log) -> Any:
        from workflows.ray_jobs import RayJobError, run_ray_job

        try:
            return run_ray_job(
                settings, args, step=step, log=log, poll_s=self.poll_s, timeout_s=self.timeout_s,
                tail_lines=self.log_tail_lines,
            )  # fmt: skip
        except RayJobError as error:
            raise dg.Failure(
                description=str(error).splitlines()[0],
                metadata={
                    "ray_job_id": error.job_id,
                    "status": error.status,
                    "log_tail": dg.MetadataValue.md(f"```\n{error.tail}\n```"),
                },  # fmt: skip
            ) from error


class QualityThresholds(dg.ConfigurableResource):
    """Limits of the asset checks (``workflows.checks``)."""

    quarantine_max_rate: float = Field(default=0.05, description="Most quarantine rows / all ingested records.")
    silver_max_age_hours: float = Field(default=48.0, description="Oldest the newest silver event may be, in hours.")
    user_sequences_min_ratio: float = Field(
        default=0.9, description="Fewest user_sequences rows vs the previous version."
    )
    user_sequences_max_ratio: float = Field(
        default=2.0, description="Most user_sequences rows vs the previous version."
    )


class PromotionPolicy(dg.ConfigurableResource):
    """The promotion gate (``workflows.promotion``): ``freshness`` (the loop's default) or ``margin``."""

    kind: Literal["freshness", "margin"] = Field(
        default=FRESHNESS_GATE.kind,
        description="freshness: a candidate trained on newer data passes unless worse than production by more "
        "than `tolerance` on the most recent window (else the margin rule); margin: it must beat production's "
        "validation metric by `margin`.",
    )
    metric: str = Field(default="ndcg_10", description="Metric compared (hr_10, ndcg_10, mrr, ...).")
    margin: float = Field(
        default=0.01, ge=0, description="Required gain: a fraction of production's value, or absolute."
    )
    margin_kind: Literal["relative", "absolute"] = Field(
        default="relative",
        description="relative: candidate > production x (1 + margin); absolute: > production + margin.",
    )
    tolerance: float = Field(
        default=FRESHNESS_GATE.tolerance, ge=0, lt=1, description="freshness: the largest relative loss allowed."
    )
    window_hours: float = Field(
        default=FRESHNESS_GATE.window_hours, gt=0, description="freshness: the most recent window, in hours."
    )
    min_window_targets: int = Field(
        default=FRESHNESS_GATE.min_window_targets,
        ge=1,
        description="freshness: the fewest target events a window must hold to judge on (fewer: refused).",
    )

    def policy(self) -> GatePolicy:
        return GatePolicy(
            metric=self.metric,
            margin=self.margin,
            margin_kind=self.margin_kind,
            kind=self.kind,
            tolerance=self.tolerance,
            window_hours=self.window_hours,
            min_window_targets=self.min_window_targets,
        )


class RankingPromotionPolicy(PromotionPolicy):
    """The ranking model's gate (``ranking_promotion``): validation click AUC by default."""

    kind: Literal["freshness", "margin"] = Field(
        default="margin", description="The ranking gate compares validation metrics (the margin rule) only."
    )

    metric: str = Field(
        default=RANKING_GATE.metric, description="Validation metric compared (auc_click, gauc_click, auc_like, ...)."
    )
    margin: float = Field(
        default=RANKING_GATE.margin, ge=0, description="Required gain: a fraction of production's value, or absolute."
    )
    margin_kind: Literal["relative", "absolute"] = Field(
        default=RANKING_GATE.margin_kind,
        description="relative: candidate > production x (1 + margin); absolute: > production + margin.",
    )


def streamrec_resource_config(settings: Settings) -> dict[str, Any]:
    """The run config (``resources`` part) that points a run's ``streamrec`` resource at
    ``settings`` (a demo's own topic and lake, say), whatever settings the code server loaded."""
    resource = StreamrecResource.from_settings(settings)
    return {"streamrec": {"config": {name: getattr(resource, name) for name in StreamrecResource.model_fields}}}


def resources_from_settings(settings: Settings) -> dict[str, Any]:
    """Every resource of the definitions, from ``settings``."""
    return {
        "streamrec": StreamrecResource.from_settings(settings),
        "steps": StepRunner.from_settings(settings),
        "quality": QualityThresholds(),
        "promotion_policy": PromotionPolicy(),
        "ranking_promotion_policy": RankingPromotionPolicy(),
    }
