"""Schedules (UTC). They start stopped; `streamrec up --continual` turns on those tagged as the
loop's (``LOOP``), the UI or `dagster schedule start` any of them."""

from __future__ import annotations

import dagster as dg

from infra.dagster_automation import LOOP_TAG, LOOP_TAG_VALUE
from workflows.jobs import full_retraining_job, ingest_job, ranking_job, warm_start_training_job

# What `streamrec up --continual` turns on (a definition tag, which Dagster also puts on the
# schedule's runs). The daily retraining and ranking jobs stay a choice of their own: each is
# a long training on the machine's cores.
LOOP = {LOOP_TAG: LOOP_TAG_VALUE}

hourly_warm_start_training = dg.ScheduleDefinition(
    name="hourly_warm_start_training",
    job=warm_start_training_job,
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    tags=LOOP,
    description="Every hour: continue the production model on the latest features (a few epochs).",
)

daily_full_retraining = dg.ScheduleDefinition(
    name="daily_full_retraining",
    job=full_retraining_job,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    description="Every day at 03:30 UTC: train from scratch on the latest features.",
)

ingest_every_15_minutes = dg.ScheduleDefinition(
    name="ingest_every_15_minutes",
    job=ingest_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    tags=LOOP,
    description="Every 15 minutes: ingest until idle. Leave it off while a continuous `streamrec ingest` runs.",
)

daily_ranking_training = dg.ScheduleDefinition(
    name="daily_ranking_training",
    job=ranking_job,
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    description="Every day at 04:30 UTC: ranking examples, a ranker from scratch, its promotion gate.",
)

ALL_SCHEDULES = [hourly_warm_start_training, daily_full_retraining, ingest_every_15_minutes, daily_ranking_training]
