"""MLflow bookkeeping on the session's real tracking server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from infra.settings import Settings, get_settings
from training.common import tracking


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


def test_ui_links_open_the_model_training_view(mini_cluster: Settings) -> None:
    # MLflow 3.17's UI opens any experiment in its GenAI traces overview unless the link (or the
    # user's saved toggle) names the model-training view; seen in headless Chromium.
    settings = get_settings(mlflow_experiment=f"tracking-test-{uuid.uuid4().hex[:8]}")
    run_id = tracking.start_run(settings, "ui-link", params={}, tags={}, feature_versions={})
    experiment = tracking.client(settings).get_experiment_by_name(settings.mlflow.experiment)
    base = settings.mlflow.tracking_uri.rstrip("/")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING_KIND
    assert tracking.ui_url(settings) == f"{base}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert tracking.ui_url(settings, run_id) == (
        f"{base}/#/experiments/{experiment.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    )
