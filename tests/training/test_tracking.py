"""MLflow bookkeeping on the session's real tracking server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from infra.settings import Settings, get_settings
from training import tracking


def test_runs_on_two_lakes_each_show_their_own_feature_tables(mini_cluster: Settings, tmp_path: Path) -> None:
    # The same table names and versions in two lakes: MLflow must not show one lake's source for the other.
    experiment = f"tracking-test-{uuid.uuid4().hex[:8]}"
    versions = {"features/item_vocab": 0, "features/user_sequences": 1}
    sources = {}
    for lake in ("lake-a", "lake-b"):
        settings = get_settings(lake_uri=str(tmp_path / lake), mlflow_experiment=experiment)
        run_id = tracking.start_run(settings, lake, params={}, tags={}, feature_versions=versions)
        run = tracking.client(settings).get_run(run_id)
        sources[lake] = {
            item.dataset.name: json.loads(item.dataset.source)["path"] for item in run.inputs.dataset_inputs
        }
    for lake in ("lake-a", "lake-b"):
        assert sources[lake] == {
            f"{table}@v{version}": f"{tmp_path / lake}/{table}" for table, version in versions.items()
        }
