"""Job records: what a run computes (config, feature versions, MLflow run, warm start), saved
in the run's Ray Train storage folder so `streamrec train --resume NAME` repeats exactly the same job."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs

from training.common.errors import TrainingError

JOB_FILE = "streamrec_job.json"


def write_job(storage: str, run_name: str, record: dict[str, Any]) -> None:
    """Save the job record of run ``run_name`` in its Ray Train storage folder."""
    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    filesystem.create_dir(f"{root}/{run_name}", recursive=True)
    with filesystem.open_output_stream(f"{root}/{run_name}/{JOB_FILE}") as stream:
        stream.write(json.dumps(record, indent=2).encode())


def read_job(storage: str, run_name: str) -> dict[str, Any]:
    """The job record of run ``run_name``; a TrainingError when there is none."""
    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    path = f"{root}/{run_name}/{JOB_FILE}"
    if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        raise TrainingError(f"no run named {run_name!r} under {storage} (missing {JOB_FILE})")
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read())
