"""The Dagster definitions of streamrec: `dagster dev -m workflows.definitions` (what
`streamrec up` runs for Dagster). Only composes: assets, checks, jobs, schedules, sensors, and
the resources built from the streamrec settings."""

from __future__ import annotations

import dagster as dg

from infra.settings import get_settings
from workflows.assets import ALL_ASSETS
from workflows.checks import ALL_CHECKS
from workflows.jobs import ALL_JOBS
from workflows.resources import resources_from_settings
from workflows.schedules import ALL_SCHEDULES
from workflows.sensors import ALL_SENSORS

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=resources_from_settings(get_settings()),
)
