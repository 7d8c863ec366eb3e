"""Asset checks: quarantine rate, silver freshness, feature row-count drift.

Each check computes its figure with a plain function (tested directly) and compares it with
the limits of the ``quality`` resource (``QualityThresholds``).
"""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
from dataclasses import dataclass

import dagster as dg

from features.tables import USER_SEQUENCES_TABLE
from infra.settings import Settings
from ingestion.schema import BRONZE_TABLE, QUARANTINE_TABLE, SILVER_TABLE
from workflows.lineage import age_hours, delta_version, newest_event_ms, row_count
from workflows.resources import QualityThresholds, StreamrecResource

WARN = dg.AssetCheckSeverity.WARN  # freshness and drift warn; a quarantine rate above the limit is an error


@dataclass(frozen=True)
class QuarantineRate:
    quarantined: int
    valid: int

    @property
    def rate(self) -> float:
        total = self.quarantined + self.valid
        return self.quarantined / total if total else 0.0


def quarantine_rate_of(settings: Settings) -> QuarantineRate:
    """Quarantined records and valid (bronze) records ingested so far."""
    return QuarantineRate(row_count(settings, QUARANTINE_TABLE), row_count(settings, BRONZE_TABLE))


@dataclass(frozen=True)
class RowDrift:
    version: int | None
    rows: int
    previous_version: int | None
    previous_rows: int | None

    @property
    def ratio(self) -> float | None:
        if self.previous_rows is None:
            return None
        return self.rows / self.previous_rows if self.previous_rows else float("inf") if self.rows else 1.0


def row_drift_of(settings: Settings, table: str) -> RowDrift:
    """Rows of ``table`` at its latest version and at the version before it."""
    version = delta_version(settings, table)
    if version is None:
        return RowDrift(None, 0, None, None)
    rows = row_count(settings, table, version)
    if version == 0:
        return RowDrift(version, rows, None, None)
    return RowDrift(version, rows, version - 1, row_count(settings, table, version - 1))


@dg.asset_check(asset="quarantine_events", description="Quarantined records / all ingested records below a limit.")
def quarantine_rate(streamrec: StreamrecResource, quality: QualityThresholds) -> dg.AssetCheckResult:
    found = quarantine_rate_of(streamrec.settings())
    return dg.AssetCheckResult(
        passed=found.rate <= quality.quarantine_max_rate,
        metadata={
            "quarantine_rate": found.rate,
            "max_rate": quality.quarantine_max_rate,
            "quarantined": found.quarantined,
            "valid": found.valid,
        },
        description=f"{found.rate:.2%} of {found.quarantined + found.valid:,} ingested records were quarantined",
    )


@dg.asset_check(asset="silver_events", description="The newest silver event is younger than a limit.")
def silver_freshness(streamrec: StreamrecResource, quality: QualityThresholds) -> dg.AssetCheckResult:
    newest = newest_event_ms(streamrec.settings(), SILVER_TABLE)
    if newest is None:
        return dg.AssetCheckResult(passed=False, description="silver/events has no events yet", severity=WARN)
    age = age_hours(newest)
    return dg.AssetCheckResult(
        passed=age <= quality.silver_max_age_hours,
        severity=WARN,
        metadata={"newest_event_ts": newest, "age_hours": round(age, 3), "max_age_hours": quality.silver_max_age_hours},
        description=f"the newest silver event is {age:.1f} h old",
    )


@dg.asset_check(asset="user_sequences", description="user_sequences rows vs the previous version within a band.")
def user_sequences_row_drift(streamrec: StreamrecResource, quality: QualityThresholds) -> dg.AssetCheckResult:
    drift = row_drift_of(streamrec.settings(), USER_SEQUENCES_TABLE)
    band = (quality.user_sequences_min_ratio, quality.user_sequences_max_ratio)
    metadata = {
        "delta_version": drift.version,
        "rows": drift.rows,
        "previous_version": drift.previous_version,
        "previous_rows": drift.previous_rows,
        "min_ratio": band[0],
        "max_ratio": band[1],
    }
    if drift.version is None:
        return dg.AssetCheckResult(passed=False, severity=WARN, metadata=metadata, description="no table yet")
    ratio = drift.ratio
    if ratio is None:
        return dg.AssetCheckResult(passed=True, severity=WARN, metadata=metadata, description="first version")
    metadata["ratio"] = ratio
    return dg.AssetCheckResult(
        passed=band[0] <= ratio <= band[1],
        severity=WARN,
        metadata=metadata,
        description=f"{drift.rows:,} rows vs {drift.previous_rows:,} in version {drift.previous_version} "
        f"(x{ratio:.3f}; allowed {band[0]:g}..{band[1]:g})",
    )


ALL_CHECKS = [quarantine_rate, silver_freshness, user_sequences_row_drift]
