"""The scaling sweep as an asset: ``streamrec sweep`` run from Dagster (docs/scaling.md).

``scaling_sweep`` trains the spec's trials as Ray Tune trials on the settings' Ray cluster (each
an ordinary training run, a child of one MLflow parent run), fits the scaling laws and logs them
with their plots to the parent run; its metadata links the parent run and shows the fitted
exponents and held-out errors. Nothing is registered or promoted. Materialise it from the UI
(or ``dagster asset materialize``) with the spec as its config; ``resume`` continues a stopped
sweep from its parent run without redoing finished trials.
"""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from workflows.resources import StreamrecResource


class ScalingSweepConfig(dg.Config):
    """A sweep: ``spec`` (a `streamrec sweep` spec file's fields, validated when the run starts)
    or ``resume``, the parent run id of a sweep to continue."""

    spec: dict[str, Any] = Field(
        default_factory=dict,
        description="The sweep spec, e.g. {encoders: [hstu, sasrec], dims: [16, 32, 64], blocks: [1, 2], "
        "data_fractions: [0.25, 0.5, 1.0], train: {epochs: 20}}; every field is optional (docs/scaling.md).",
    )
    resume: str = Field(default="", description="Continue the sweep with this MLflow parent run id instead.")


@dg.asset(
    deps=["item_vocab", "user_sequences"],
    group_name="training",
    kinds={"ray", "pytorch", "mlflow"},
    description="A scaling sweep on Ray Tune: trials under one MLflow parent run, the fitted laws and their plots.",
)
def scaling_sweep(
    context: AssetExecutionContext, config: ScalingSweepConfig, streamrec: StreamrecResource
) -> dg.MaterializeResult:
    from training.common import tracking
    from training.sweep.runner import prepare_sweep, run_sweep
    from training.sweep.spec import SweepError, parse_spec

    settings = streamrec.settings()
    if config.resume and config.spec:
        raise dg.Failure(description="scaling_sweep: give spec or resume, not both (resume reads its own spec)")
    try:
        spec = None if config.resume else parse_spec(config.spec)
        prepared = prepare_sweep(settings, spec, resume=config.resume or None)
        outcome = run_sweep(settings, prepared, log=context.log.info)
    except SweepError as error:
        raise dg.Failure(description=f"scaling_sweep: {error}") from error
    if outcome.failed:
        raise dg.Failure(
            description=f"scaling_sweep: {len(outcome.failed)} trial(s) failed ({', '.join(outcome.failed)}); "
            f"resume the sweep with config resume: {outcome.parent_run_id}",
            metadata={"mlflow_run": dg.MetadataValue.url(tracking.ui_url(settings, outcome.parent_run_id))},
        )
    metadata: dict[str, Any] = {
        "mlflow_parent_run_id": outcome.parent_run_id,
        "mlflow_run": dg.MetadataValue.url(tracking.ui_url(settings, outcome.parent_run_id)),
        "trials_finished": len(outcome.rows),
        "protocol": outcome.protocol,
    }
    for encoder, fits in outcome.fits.items():
        for fit in fits:
            if fit.skipped:
                metadata[f"{encoder}.{fit.law}"] = f"not fitted: {fit.skipped}"
                continue
            for constant in fit.constants:
                metadata[f"{encoder}.{fit.law}.{constant.name}"] = round(constant.value, 6)
            if fit.held_out is not None:
                metadata[f"{encoder}.{fit.law}.held_out_error"] = round(fit.held_out.mean_abs_rel_error, 6)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(outcome.parent_run_id))
