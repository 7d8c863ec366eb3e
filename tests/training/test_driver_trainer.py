"""What the driver's TorchTrainer hands Ray Train's controller and its workers (``training.common.driver``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import cloudpickle

from features.reader import FeatureVersions
from infra.settings import get_settings
from tests.pipelinedata import tiny_config
from training.common.driver import torch_trainer
from training.retrieval.worker import TrainJob

SEEN: list[dict[str, Any]] = []


def record(loop_config: dict[str, Any]) -> None:
    """A stand-in entry point that keeps what it was given."""
    SEEN.append(loop_config)


def _trainer(home: Path) -> tuple[Any, TrainJob]:
    job = TrainJob(get_settings(home=home), tiny_config(), FeatureVersions(item_vocab=1, user_sequences=1), "run-1")
    return torch_trainer(record, job, workers=1, storage=str(home / "ray"), run_name="run"), job


def test_the_controller_is_not_handed_the_job(tmp_path: Path) -> None:
    # Ray Train's controller actor unpickles its train_run_context when it starts; a job in it made
    # the controller import the worker module (torch, torchrec, fbgemm, pyarrow, deltalake, mlflow).
    trainer, job = _trainer(tmp_path)
    pickled = cloudpickle.dumps(trainer.train_run_context)
    assert type(job).__module__.encode() not in pickled
    assert job.run_id.encode() not in pickled


def test_the_entry_point_gets_the_job_as_its_loop_config(tmp_path: Path) -> None:
    trainer, job = _trainer(tmp_path)
    SEEN.clear()
    trainer.train_loop_per_worker()
    assert SEEN == [{"job": job}]
