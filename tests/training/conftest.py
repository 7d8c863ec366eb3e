"""Fixtures of the training tests: the session's trained pipeline (tests/pipelinedata.py): its
lake, its two-worker HSTU run and model names, on the session's real Ray head and MLflow server."""

from __future__ import annotations

import pytest
from pipelinedata import TrainedPipeline

from infra.settings import Settings
from training.retrieval.runner import TrainOutcome


@pytest.fixture(scope="session")
def settings(trained_pipeline: TrainedPipeline) -> Settings:
    """Settings of the training tests: the pipeline's lake, checkpoints and model names (2 workers,
    one retry), the session cluster. Tests that change the lake work on a copy."""
    return trained_pipeline.settings


@pytest.fixture(scope="session")
def hstu_run(trained_pipeline: TrainedPipeline) -> TrainOutcome:
    """The pipeline's 2-worker HSTU run (row-wise sharded item table), registered in MLflow."""
    return trained_pipeline.run
