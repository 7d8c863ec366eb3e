"""The Dagster definitions of streamrec: `dagster dev -m workflows.definitions` (what
`streamrec up` runs for Dagster). Only composes: assets, checks, jobs, schedules, sensors, and
the resources built from the streamrec settings.

Runs execute their steps in the run's own process (``in_process_executor``), one after another:
every job is a chain, each heavy step already runs in a process of its own (a Spark job, a Ray
job), and Dagster's default multiprocess executor spends a fresh interpreter and an import of these
definitions (about 3-4 s here) on every step of every run."""

from __future__ import annotations

import dagster as dg

from infra.settings import get_settings
from workflows.assets import ALL_ASSETS
from workflows.checks import ALL_CHECKS
from workflows.follow import model_deltas
from workflows.jobs import ALL_JOBS
from workflows.resources import resources_from_settings
from workflows.schedules import ALL_SCHEDULES
from workflows.sensors import ALL_SENSORS

defs = dg.Definitions(
    assets=[*ALL_ASSETS, model_deltas],
    asset_checks=ALL_CHECKS,
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=resources_from_settings(get_settings()),
    executor=dg.in_process_executor,
)
