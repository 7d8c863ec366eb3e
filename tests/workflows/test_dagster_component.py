"""`streamrec up dagster`: the Dagster component of the mini-cluster (webserver + daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import yaml

from infra import cluster
from infra.components import DagsterWorkflows, all_components, settings_environment
from infra.processes import free_port, group_members, port_in_use, read_record
from infra.settings import Settings, get_settings

JOBS_QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name
  jobs { name } schedules { name scheduleState { status } } sensors { name sensorState { status } } } } } }"""


def test_dagster_is_started_only_when_enabled(tmp_path: Path) -> None:
    off = get_settings(home=tmp_path)
    assert "dagster" not in [component.name for component in all_components(off)]
    on = get_settings(home=tmp_path, dagster_enabled=True)
    assert [component.name for component in all_components(on)][-1] == "dagster"
    assert on.is_local("dagster")
    assert not get_settings(home=tmp_path, dagster_host="dagster.internal").is_local("dagster")
    assert not get_settings(home=tmp_path, external=["dagster"]).is_local("dagster")


def test_the_component_runs_dagster_dev_on_its_own_instance(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path, dagster_enabled=True, dagster_port=3999, topic="t-env")
    component = DagsterWorkflows(settings)
    command = component.command()
    assert command[1:4] == ["dev", "-m", "workflows.definitions"]
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "3999"]
    assert component.ports() == [("127.0.0.1", 3999)]
    component.prepare()
    instance = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert instance["storage"] == {"sqlite": {"base_dir": str(settings.dagster_home / "storage")}}
    environment = component.environment()
    assert environment["DAGSTER_HOME"] == str(settings.dagster_home)
    assert environment["STREAMREC_TOPIC"] == "t-env"


def test_settings_environment_reproduces_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings(home=tmp_path, external=["kafka", "mlflow"], train_use_gpu=True, topic="x")
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert get_settings() == settings


@pytest.mark.slow
def test_up_starts_dagster_that_answers_and_down_stops_it(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path, dagster_enabled=True, dagster_port=free_port())
    try:
        (state,) = cluster.up(settings, ["dagster"])
        assert state.healthy and "daemon healthy" in state.detail, state
        answer = requests.post(f"{settings.dagster_url}/graphql", json={"query": JOBS_QUERY}, timeout=30).json()
        (repository,) = answer["data"]["repositoriesOrError"]["nodes"]
        assert {"ingest_job", "features_job", "promotion_job", "warm_start_training_job"} <= {
            job["name"] for job in repository["jobs"]
        }
        assert {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]} == {
            "hourly_warm_start_training": "STOPPED",
            "daily_full_retraining": "STOPPED",
            "ingest_every_15_minutes": "STOPPED",
        }
        assert {s["name"] for s in repository["sensors"]} == {"silver_events_sensor", "registered_model_sensor"}
        assert (settings.dagster_home / "storage").is_dir()  # SQLite instance storage of its own
        again = cluster.up(settings, ["dagster"])  # idempotent: nothing started twice
        assert again[0].pid == state.pid and "already running" in again[0].detail
        # `status` and `down` see a running Dagster even with the setting off.
        assert "dagster" in [component.name for component in all_components(_disabled(settings))]
    finally:
        record = read_record(settings.run_dir / "dagster.pid")
        stopped = cluster.down(_disabled(settings), ["dagster"])
    assert record is not None and stopped == [f"dagster (pid {record.pid})"]
    assert group_members(record.pid) == []  # webserver, daemon and code server stopped with it
    assert not port_in_use("127.0.0.1", settings.dagster_port)


def _disabled(settings: Settings) -> Settings:
    return settings.model_copy(update={"dagster_enabled": False})


def test_infra_never_imports_workflows() -> None:
    source = "\n".join(path.read_text() for path in Path(__file__).parents[2].joinpath("infra").glob("*.py"))
    assert "import workflows" not in source and "from workflows" not in source
