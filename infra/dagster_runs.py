"""Runs of Dagster jobs launched on the running instance through its webserver's GraphQL API,
followed to their end, and what they materialised read back: how `streamrec demo` runs its loop
round and the gate of its candidate as Dagster runs that the UI shows (their steps, asset
materialisations and metadata), not as in-process calls.

The webserver's run launcher starts the run in a process of its own, with the code server's
definitions; the run config given here can set the ``streamrec`` resource, so the run reads
the same lake, topic and registry as the caller (infra never imports workflows: the caller
builds the run config).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.dagster_automation import DagsterApiError, graphql
from infra.settings import Settings

JOBS_QUERY = """{ repositoriesOrError { __typename
  ... on PythonError { message }
  ... on RepositoryConnection { nodes { name location { name } jobs { name } } } } }"""
LAUNCH_RUN = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on PythonError { message }
  ... on Error { message } } }"""
RUN_QUERY = """query($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { status stepStats { stepKey status } }
  ... on Error { message } } }"""
MATERIALIZATIONS_QUERY = """query($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { assetMaterializations { assetKey { path } metadataEntries { __typename label
    ... on TextMetadataEntry { text }
    ... on MarkdownMetadataEntry { mdStr }
    ... on JsonMetadataEntry { jsonString }
    ... on BoolMetadataEntry { boolValue }
    ... on IntMetadataEntry { intRepr }
    ... on FloatMetadataEntry { floatRepr }
    ... on UrlMetadataEntry { url }
    ... on PathMetadataEntry { path } } } }
  ... on Error { message } } }"""
ENDED = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass(frozen=True)
class RunEnd:
    """How a run ended: its status, and the steps that did not succeed (key: status)."""

    run_id: str
    status: str
    failed_steps: dict[str, str]

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCESS"


def run_url(settings: Settings, run_id: str) -> str:
    """The run's page in the Dagster UI."""
    return f"{settings.dagster.url}/runs/{run_id}"


def launch_run(
    settings: Settings, job: str, run_config: Mapping[str, Any], tags: Mapping[str, str] | None = None
) -> str:
    """Launch ``job`` with ``run_config`` (and the run ``tags``) on the running Dagster; the run id.
    Raises DagsterApiError naming why Dagster refused (no such job, config errors, ...)."""
    location, repository = _job_location(settings, job)
    params: dict[str, Any] = {
        "selector": {"repositoryLocationName": location, "repositoryName": repository, "jobName": job},
        "runConfigData": run_config,
    }
    if tags:
        params["executionMetadata"] = {"tags": [{"key": key, "value": value} for key, value in tags.items()]}
    answer = graphql(settings, LAUNCH_RUN, {"params": params})["launchRun"]
    if answer.get("__typename") == "LaunchRunSuccess":
        return str(answer["run"]["runId"])
    reasons = [error["message"] for error in answer.get("errors") or []] or [answer.get("message") or "?"]
    raise DagsterApiError(f"Dagster refused to launch {job} ({answer.get('__typename')}): {'; '.join(reasons)[:2000]}")


def wait_for_run(
    settings: Settings,
    run_id: str,
    timeout_s: float,
    *,
    interval_s: float = 2.0,
    on_change: Callable[[str], None] | None = None,
) -> RunEnd:
    """Poll the run until it ends (success, failure or cancellation); ``on_change(status)`` on
    each new status. Raises TimeoutError after ``timeout_s`` (the run goes on in Dagster)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        found = graphql(settings, RUN_QUERY, {"id": run_id})["runOrError"]
        if found.get("__typename") != "Run":
            raise DagsterApiError(f"Dagster run {run_id}: {found.get('message') or found.get('__typename')}")
        status = str(found["status"])
        if status != last and on_change is not None:
            on_change(status)
        last = status
        if status in ENDED:
            failed = {step["stepKey"]: step["status"] for step in found.get("stepStats") or []}
            return RunEnd(run_id, status, {key: value for key, value in failed.items() if value != "SUCCESS"})
        if time.monotonic() > deadline:
            url = run_url(settings, run_id)
            raise TimeoutError(f"Dagster run {run_id} still {status} after {timeout_s:.0f} s: {url}")
        time.sleep(interval_s)


def run_materializations(settings: Settings, run_id: str) -> dict[str, dict[str, Any]]:
    """The metadata each asset materialisation of the run recorded, by asset key (``a/b``; the
    last one where an asset was materialised twice): text, JSON (parsed), booleans, numbers,
    URLs and paths; a null entry reads None, kinds without a plain value (tables, ...) are left out."""
    found = graphql(settings, MATERIALIZATIONS_QUERY, {"id": run_id})["runOrError"]
    if found.get("__typename") != "Run":
        raise DagsterApiError(f"Dagster run {run_id}: {found.get('message') or found.get('__typename')}")
    return {
        "/".join(event["assetKey"]["path"]): {
            entry["label"]: _metadata_value(entry)
            for entry in event["metadataEntries"]
            if entry["__typename"] in METADATA_VALUES
        }
        for event in found["assetMaterializations"]
    }


METADATA_VALUES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "TextMetadataEntry": lambda entry: entry["text"],
    "MarkdownMetadataEntry": lambda entry: entry["mdStr"],
    "JsonMetadataEntry": lambda entry: json.loads(entry["jsonString"]),
    "BoolMetadataEntry": lambda entry: entry["boolValue"],
    # The reprs, not intValue and floatValue: those are null for an int beyond 32 bits and for NaN or infinity.
    "IntMetadataEntry": lambda entry: int(entry["intRepr"]),
    "FloatMetadataEntry": lambda entry: float(entry["floatRepr"]),
    "UrlMetadataEntry": lambda entry: entry["url"],
    "PathMetadataEntry": lambda entry: entry["path"],
    "NullMetadataEntry": lambda entry: None,
}


def _metadata_value(entry: dict[str, Any]) -> Any:
    return METADATA_VALUES[entry["__typename"]](entry)


def _job_location(settings: Settings, job: str) -> tuple[str, str]:
    """(code location, repository) of the repository that defines ``job``."""
    repositories = graphql(settings, JOBS_QUERY)["repositoriesOrError"]
    if repositories.get("__typename") != "RepositoryConnection":
        raise DagsterApiError(f"Dagster could not list its repositories: {repositories.get('message', '?')}")
    for repository in repositories["nodes"]:
        if any(found["name"] == job for found in repository["jobs"]):
            return repository["location"]["name"], repository["name"]
    raise DagsterApiError(f"no code location of the Dagster at {settings.dagster.url} defines the job {job}")


TERMINATE_RUN = """mutation($id: String!) { terminateRun(runId: $id, terminatePolicy: SAFE_TERMINATE) { __typename
  ... on TerminateRunFailure { message }
  ... on PythonError { message }
  ... on Error { message } } }"""


def terminate_run(settings: Settings, run_id: str) -> None:
    """Ask Dagster to terminate the run (the UI's Terminate, SAFE_TERMINATE): the run goes to
    CANCELING and its process gets an interrupt, which a long-running op may catch to stop its
    work cleanly (``workflows.follow``), or the run ends CANCELED. Returns once Dagster accepted;
    ``wait_for_run`` follows it to its end. Raises DagsterApiError naming why Dagster refused
    (no such run, already ended, ...)."""
    answer = graphql(settings, TERMINATE_RUN, {"id": run_id})["terminateRun"]
    if answer.get("__typename") != "TerminateRunSuccess":
        reason = (answer.get("message") or answer.get("__typename") or "?").strip()
        raise DagsterApiError(f"Dagster refused to terminate run {run_id}: {reason}")
