"""The one settings object of streamrec.

Every setting is read from, in order of precedence: keyword arguments, environment
variables named ``STREAMREC_<FIELD>``, the YAML file named by ``STREAMREC_CONFIG`` (or
``./streamrec.yaml`` when it exists), then the defaults below. The same code runs on the
local mini-cluster and on real clusters by changing these values only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

COMPONENTS = ("kafka", "mlflow", "ray", "ray-worker", "spark-master", "spark-worker", "dagster")
CLUSTER_PROFILE_COMPONENTS = ("ray-worker", "spark-master", "spark-worker")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
DEFAULT_CONFIG_FILE = Path("streamrec.yaml")


class Settings(BaseSettings):
    """Typed settings shared by every streamrec package."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="forbid")

    home: Path = Field(Path(".streamrec"), description="Holds the lake, checkpoints, pids and logs.")
    profile: Literal["local", "cluster"] = Field(
        "local",
        description="local: one Ray node and in-process Spark. cluster: `up` also starts a Ray worker node and a "
        "Spark standalone master and worker, and jobs use spark:// (multi-process clusters, as on real machines).",
    )
    lake_uri: str = Field("", description="Root of the Delta tables; default <home>/lake. Any object-store URI.")
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    topic: str = Field("user-actions", description="Topic of user-action events.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of the topic when streamrec creates it.")
    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow tracking server.")
    ray_address: str = Field("127.0.0.1:6379", description="Ray GCS address (host:port) or ray:// client URI.")
    ray_dashboard_port: int = Field(8265, description="Dashboard port of the local Ray head.")
    ray_client_port: int = Field(10001, description="Ray client server port of the local Ray head.")
    ray_num_cpus: int = Field(0, ge=0, description="CPUs the local Ray head offers; 0 = this machine's cores.")
    ray_auth: Literal["token", "disabled"] = Field(
        "token", description="Ray token authentication of the local head and of every client; disabled = none."
    )
    ray_auth_token_file: str = Field(
        "", description="File holding the Ray token; default <home>/ray/auth_token (made by `up` for the local head)."
    )
    spark_master: str = Field("local[*]", description="Spark master URL: local[*], spark://, yarn or k8s://.")
    spark_driver_memory: str = Field("4g", description="Driver memory of local Spark sessions.")
    spark_shuffle_partitions: int = Field(8, ge=1, description="spark.sql.shuffle.partitions of streamrec jobs.")

    # Cluster profile: the extra processes `up` starts -------------------------------
    ray_worker_num_cpus: int = Field(1, ge=1, description="CPUs of the separately started Ray worker node.")
    spark_master_port: int = Field(7077, description="Port of the local Spark standalone master.")
    spark_master_webui_port: int = Field(8080, description="Web UI (and JSON status) port of the local Spark master.")
    spark_worker_webui_port: int = Field(8081, description="Web UI port of the local Spark worker.")
    spark_worker_cores: int = Field(1, ge=1, description="Cores the local Spark worker offers to executors.")
    spark_worker_memory: str = Field("2g", description="Memory the local Spark worker offers to executors.")
    serve_host: str = Field("127.0.0.1", description="Ray Serve HTTP host.")
    serve_port: int = Field(8000, description="Ray Serve HTTP port.")
    dagster_port: int = Field(3000, description="Dagster webserver port.")
    dagster_host: str = Field("127.0.0.1", description="Dagster webserver host (not loopback = an external Dagster).")
    dagster_enabled: bool = Field(
        False,
        description="`streamrec up` also starts Dagster (webserver + daemon, `dagster dev -m workflows.definitions`) "
        "and `streamrec up dagster` may name it. Off by default: the test suite's session cluster does not need it.",
    )
    dagster_steps: Literal["in_process", "ray_job"] = Field(
        "in_process",
        description="How the workflows run ingest and feature builds: in the Dagster run's own process, or as Ray "
        "jobs on the cluster of ray_address (training always runs on Ray Train workers).",
    )
    dagster_job_command: str = Field(
        "",
        description="Command line prefix that runs the streamrec CLI inside a Ray job; default: the Python of the "
        "Dagster process with `-m infra.cli` (right when the Ray head shares this machine's environment).",
    )
    external: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Components to check but never start, even on loopback (e.g. kafka,mlflow).",
    )
    start_timeout_s: float = Field(90.0, gt=0, description="How long `up` waits for each component.")

    # Ingestion settings ---------------------------------------------------------------
    ingest_max_event_bytes: int = Field(
        65_536, ge=64, description="Kafka records whose value is larger than this are quarantined."
    )
    ingest_future_tolerance_s: float = Field(
        3_600.0, ge=0, description="Events whose ts lies this far beyond their Kafka record timestamp are quarantined."
    )
    ingest_max_records_per_trigger: int = Field(
        250_000, ge=1, description="Most Kafka records one ingest micro-batch reads (maxRecordsPerTrigger)."
    )
    ingest_trigger_interval_s: float = Field(
        1.0, ge=0, description="Micro-batch trigger interval of `streamrec ingest`, in seconds."
    )
    ingest_starting_offsets: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new ingest stream (no checkpoint yet) starts in each partition."
    )

    # Features settings ----------------------------------------------------------------
    features_max_len: int = Field(
        200, ge=1, description="Events kept per user in features/user_sequences (the last ones, in event order)."
    )

    # Training settings ----------------------------------------------------------------
    train_workers: int = Field(2, ge=1, description="Ray Train workers of `streamrec train` (--workers overrides).")
    train_cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each Ray Train worker reserves.")
    train_use_gpu: bool = Field(False, description="One GPU per worker: NCCL, bf16 autocast, Adam on the item table.")
    train_max_failures: int = Field(
        2, ge=0, description="Worker failures a run recovers from, each time from its last checkpoint."
    )
    train_storage: str = Field(
        "", description="Ray Train run storage (checkpoints); default <home>/checkpoints. Any URI."
    )
    mlflow_experiment: str = Field("streamrec", description="MLflow experiment of training runs.")
    registered_model: str = Field("streamrec-retrieval", description="MLflow registered model of retrieval models.")
    registered_ranking_model: str = Field(
        "streamrec-ranking", description="MLflow registered model of ranking models (`streamrec train-ranking`)."
    )

    # Serving settings -----------------------------------------------------------------
    serve_model_alias: str = Field(
        "production", description="MLflow alias of the registered model that serving follows (and `promote` moves)."
    )
    serve_replicas: int = Field(1, ge=1, description="Replicas of the recommender deployment (each holds the model).")
    serve_history_shards: int = Field(
        0,
        ge=0,
        description="Online-history shards, each a deployment of its own; shard i owns the topic's partitions p "
        "with p % shards == i. 0: each recommender replica holds the whole history itself (no hop per request; "
        "memory and Kafka reads once per replica).",
    )
    serve_exact_max_items: int = Field(
        50_000,
        ge=1,
        description="Catalogues up to this size are searched exactly (FAISS flat); larger ones by HNSW "
        "(at 100k items HNSW finds 0.995 of the exact top 100 at under half the CPU: docs/serving.md).",
    )
    serve_hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (M) for large catalogues.")
    serve_hnsw_ef_search: int = Field(
        128,
        ge=8,
        description="HNSW efSearch: candidates visited per query (at 100k items recall@100 0.995 at 128, "
        "0.998 at 256 for 1.8x the search CPU: docs/serving.md).",
    )
    serve_max_k: int = Field(1_000, ge=1, description="Largest k a request may ask for.")
    serve_max_history_items: int = Field(1_000, ge=1, description="Most items a request body's history may hold.")
    serve_max_body_bytes: int = Field(65_536, ge=256, description="Largest request body; larger ones answer 413.")
    serve_max_ongoing_requests: int = Field(
        256,
        ge=1,
        description="Requests one replica works on at once; high, so a burst waits in the replica's batch "
        "queue (larger batches) instead of the router backing off from a full replica (docs/serving.md).",
    )
    serve_max_queued_requests: int = Field(
        128, ge=1, description="Requests waiting per deployment handle; beyond this serving answers 503."
    )
    serve_batch_max_size: int = Field(32, ge=1, description="Most queries encoded together (@serve.batch).")
    serve_batch_wait_s: float = Field(
        0.0,
        ge=0,
        description="How long a batch waits to fill, in seconds; 0: it takes what queued while the last one ran.",
    )
    serve_model_poll_s: float = Field(2.0, gt=0, description="How often replicas check the model alias, in seconds.")
    serve_rank_candidates: int = Field(
        200, ge=1, description="Candidates /recommend retrieves and ranks when a ranking model serves."
    )
    serve_rank_max_candidates: int = Field(1_000, ge=1, description="Most candidates one /rank request may give.")
    serve_blend_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "like": 1.0, "purchase": 2.0, "skip": -1.0, "dislike": -2.0},
        description="How /recommend blends the ranker's task probabilities into one score (negative tasks "
        "subtract); tasks the served ranker lacks are ignored. JSON in the environment.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("STREAMREC_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"STREAMREC_CONFIG names {config_file}, which does not exist")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        elif DEFAULT_CONFIG_FILE.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=DEFAULT_CONFIG_FILE))
        return tuple(sources)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        # Absolute, so subprocesses and Ray workers with another cwd see the same place.
        return home.expanduser().resolve()

    @field_validator("external", mode="before")
    @classmethod
    def _split_external(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("external")
    @classmethod
    def _known_components(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown components {unknown}; known: {list(COMPONENTS)}")
        return value

    @model_validator(mode="after")
    def _cluster_profile_spark(self) -> Settings:
        # The cluster profile's jobs use the standalone master `up` starts, unless told otherwise.
        if self.profile == "cluster" and self.spark_master.startswith("local"):
            self.spark_master = f"spark://127.0.0.1:{self.spark_master_port}"
        return self

    # Derived locations -------------------------------------------------------------
    @property
    def lake(self) -> str:
        """Root URI (or local path) of the Delta lake."""
        return self.lake_uri or str(self.home / "lake")

    def table_uri(self, name: str) -> str:
        """URI of the Delta table ``name`` (e.g. ``bronze/events``) inside the lake."""
        return f"{self.lake.rstrip('/')}/{name}"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """Pid files of the processes `streamrec up` started."""
        return self.home / "run"

    @property
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def dagster_home(self) -> Path:
        """DAGSTER_HOME of the local Dagster: its dagster.yaml, SQLite storage, run logs."""
        return self.home / "dagster"

    @property
    def ray_token_path(self) -> Path:
        """File of the Ray authentication token (never the user's ~/.ray/auth_token by default)."""
        if self.ray_auth_token_file:
            return Path(self.ray_auth_token_file).expanduser().resolve()
        return self.home / "ray" / "auth_token"

    # Addresses ---------------------------------------------------------------------
    @property
    def kafka_hosts(self) -> list[tuple[str, int]]:
        return [_host_port(server, 9092) for server in self.kafka_bootstrap.split(",")]

    @property
    def ray_gcs(self) -> tuple[str, int] | None:
        """(host, port) of the Ray GCS, or None for a ``ray://`` client address."""
        if "://" in self.ray_address:
            return None
        return _host_port(self.ray_address, 6379)

    @property
    def ray_dashboard_url(self) -> str:
        """HTTP root of the Ray dashboard (its REST APIs): the cluster's host, the dashboard port."""
        host = _host_port(self.ray_address, 6379)[0]
        return f"http://{host}:{self.ray_dashboard_port}"

    @property
    def dagster_url(self) -> str:
        """HTTP root of the Dagster webserver (UI and GraphQL)."""
        return f"http://{self.dagster_host}:{self.dagster_port}"

    def is_local(self, component: str) -> bool:
        """Whether `streamrec up` starts ``component`` here (loopback and not marked external)."""
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}")
        if component in self.external:
            return False
        if component == "kafka":
            return len(self.kafka_hosts) == 1 and self.kafka_hosts[0][0] in LOOPBACK_HOSTS
        if component == "mlflow":
            parsed = urlparse(self.mlflow_tracking_uri)
            return parsed.scheme in ("http", "https") and parsed.hostname in LOOPBACK_HOSTS
        if component == "dagster":
            return self.dagster_host in LOOPBACK_HOSTS
        if component in CLUSTER_PROFILE_COMPONENTS and self.profile != "cluster":
            return False
        if component in ("spark-master", "spark-worker"):
            return self.spark_on_this_machine and self.spark_master.startswith("spark://")
        gcs = self.ray_gcs
        return gcs is not None and gcs[0] in LOOPBACK_HOSTS

    @property
    def spark_on_this_machine(self) -> bool:
        """Whether Spark's executors run here: ``local[*]`` or a standalone master on loopback."""
        if self.spark_master.startswith("local"):
            return True
        return self.spark_master.startswith("spark://") and _host_port(self.spark_master, 7077)[0] in LOOPBACK_HOSTS


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    address = address.strip()
    if "://" in address:
        address = address.split("://", 1)[1]
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    return host, int(port)


def get_settings(**overrides: Any) -> Settings:
    """Read the settings now (environment and YAML are read on every call)."""
    return Settings(**overrides)
