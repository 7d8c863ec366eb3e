"""Ray token authentication: the local head, the probe and every client use streamrec's token.

The cluster tests run `streamrec up ray` / `status` / a Ray task / `down` as a user would, on
private ports with a private HOME where ~/.ray/auth_token already exists (any earlier local
``ray.init()`` leaves one, and Ray then turns authentication on for `ray start`): none may read
or change the user's token. Where there is none, token authentication works and creates none:
tests/infra/test_cluster_lifecycle.py's `up` / `status` / Ray task / `down` (token auth, a HOME
of its own) checks that, so one Ray cycle here covers the token.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from infra import ray_access
from infra.processes import free_port
from infra.settings import Settings

STREAMREC = str(Path(sys.executable).parent / "streamrec")
USER_TOKEN = "0" * 64  # a token some other local Ray cluster of the user made

RAY_TASK = """
import ray
from infra import ray_access
from infra.settings import get_settings
try:
    ray_access.connect(get_settings(), log_to_driver=False)
except ray_access.RayAccessError as error:
    print(f"refused: {error}")
    raise SystemExit(3)
square = ray.remote(lambda x: x * x)
print(sum(ray.get([square.remote(i) for i in range(10)])))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    user_home = tmp_path / "user-home"
    user_home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(user_home),
        "STREAMREC_HOME": str(tmp_path / "streamrec-home"),
        "STREAMREC_RAY_ADDRESS": f"127.0.0.1:{free_port()}",
        "STREAMREC_RAY_DASHBOARD_PORT": str(free_port()),
        "STREAMREC_RAY_CLIENT_PORT": str(free_port()),
        "STREAMREC_RAY_NUM_CPUS": "1",
        "COLUMNS": "200",
    }
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "STREAMREC_RAY_AUTH_TOKEN_FILE"):
        env.pop(name, None)  # as on a user's machine: nothing set by hand
    env.update(extra)
    return env


def _settings(env: dict[str, str]) -> Settings:
    values = {key[len("STREAMREC_") :].lower(): value for key, value in env.items() if key.startswith("STREAMREC_")}
    values.setdefault("ray_auth_token_file", "")  # as in ``env``: not the test session's token file
    return Settings(**values)


def _run(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=240)


def _ray_task(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run(env, sys.executable, "-c", RAY_TASK)


def _nodes_status(settings: Settings, headers: dict[str, str] | None = None) -> int:
    return requests.get(f"{settings.ray.dashboard_url}/api/v0/nodes", headers=headers, timeout=10).status_code


@pytest.mark.integration  # starts Ray through the CLI: no service fixture
def test_token_cluster_up_status_task_down_beside_a_user_token(tmp_path: Path) -> None:
    env = _env(tmp_path)
    settings = _settings(env)
    user_token_file = Path(env["HOME"]) / ".ray" / "auth_token"
    user_token_file.parent.mkdir()
    user_token_file.write_text(USER_TOKEN)
    try:
        started = _run(env, STREAMREC, "up", "ray")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "token auth" in started.stdout

        token_file = settings.ray_token_path
        assert token_file.is_relative_to(settings.home)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) == 64 and token != USER_TOKEN

        status = _run(env, STREAMREC, "status", "ray", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)[0]["healthy"]

        # The dashboard refuses anyone without the token, and accepts streamrec's.
        assert _nodes_status(settings) == 401
        assert _nodes_status(settings, {"Authorization": f"Bearer {token}"}) == 200

        task = _ray_task(env)
        assert task.returncode == 0, task.stdout + task.stderr
        assert task.stdout.strip().splitlines()[-1] == "285"

        # A client with the wrong token gets one line naming the setting, at once.
        wrong = tmp_path / "wrong-token"
        wrong.write_text("f" * 64)
        bad_env = {**env, "STREAMREC_RAY_AUTH_TOKEN_FILE": str(wrong)}
        refused = _ray_task(bad_env)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "authentication failed" in refused.stdout and ray_access.TOKEN_SETTING in refused.stdout
        probe = _run(bad_env, STREAMREC, "status", "ray")
        assert probe.returncode == 1
        assert "authentication" in " ".join(probe.stdout.split())
    finally:
        stopped = _run(env, STREAMREC, "down", "ray")
    assert stopped.returncode == 0, stopped.stderr
    assert user_token_file.read_text() == USER_TOKEN  # the user's own token is untouched


@pytest.mark.integration  # starts Ray through the CLI: no service fixture
def test_authentication_can_be_turned_off(tmp_path: Path) -> None:
    env = _env(tmp_path, STREAMREC_RAY_AUTH="disabled")
    settings = _settings(env)
    try:
        started = _run(env, STREAMREC, "up", "ray")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "no auth" in started.stdout
        assert not settings.ray_token_path.exists()
        assert _nodes_status(settings) == 200
        task = _ray_task(env)
        assert task.returncode == 0, task.stdout + task.stderr
        assert task.stdout.strip().splitlines()[-1] == "285"
    finally:
        _run(env, STREAMREC, "down", "ray")
    assert not (Path(env["HOME"]) / ".ray").exists()


def test_local_token_is_private_and_kept(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, ray_auth_token_file="")  # the default place, not the session's file
    path = ray_access.create_local_token(settings)
    assert path == tmp_path / "ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert ray_access.create_local_token(settings).read_text() == first  # never rotated behind the user's back
    assert ray_access.auth_headers(settings) == {"Authorization": f"Bearer {first}"}


def test_missing_token_names_the_setting(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, ray_auth_token_file=str(tmp_path / "nowhere"))
    with pytest.raises(ray_access.RayAuthenticationError, match=ray_access.TOKEN_SETTING):
        ray_access.auth_headers(settings)


def test_process_environment_follows_the_setting(tmp_path: Path) -> None:
    token_env = ray_access.ray_environment(Settings(home=tmp_path, ray_auth_token_file=""))
    assert token_env == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray" / "auth_token"),
        "RAY_AUTH_TOKEN": None,  # a token in the caller's environment would win over the file
    }
    disabled = Settings(home=tmp_path, ray_auth="disabled")
    assert ray_access.ray_environment(disabled)["RAY_AUTH_MODE"] == "disabled"
    assert ray_access.auth_headers(disabled) == {}


def test_dashboard_url_of_an_external_cluster() -> None:
    settings = Settings(ray_address="ray://head.example.com:10001", ray_dashboard_port=8265)
    assert settings.ray.dashboard_url == "http://head.example.com:8265"
