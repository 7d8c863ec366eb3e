"""The one settings object of streamrec.

Every setting is read from, in order of precedence: keyword arguments, environment
variables named ``STREAMREC_<FLAT_NAME>``, the YAML file named by ``STREAMREC_CONFIG`` (or
``./streamrec.yaml`` when it exists), then the defaults below. The same code runs on the
local mini-cluster and on real clusters by changing these values only.

The settings come in sections (``settings.serve.port``, ``settings.kafka.topic``); each
setting also has one flat name, its section's prefix and its field name (``serve_port``,
``STREAMREC_SERVE_PORT``), apart from the few in ``FLAT_EXCEPTIONS`` (``topic``,
``registered_model``, ...). Keyword arguments and YAML may use the flat names, the nested
form (``serve: {port: 8001}``), or both; the environment uses the flat names.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

COMPONENTS = ("kafka", "mlflow", "ray", "ray-worker", "spark-master", "spark-worker", "dagster")
CLUSTER_PROFILE_COMPONENTS = ("ray-worker", "spark-master", "spark-worker")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
DEFAULT_CONFIG_FILE = Path("streamrec.yaml")
ENV_PREFIX = "STREAMREC_"


# How an exact FAISS index stores its rows (serving.catalog.build_index).
IndexCodec = Literal["flat", "fp16"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    """The broker and the topic of user-action events."""

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    topic: str = Field("user-actions", description="Topic of user-action events.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of the topic when streamrec creates it.")

    @property
    def hosts(self) -> list[tuple[str, int]]:
        return [_host_port(server, 9092) for server in self.bootstrap.split(",")]


class LakeSettings(_Section):
    """Where the Delta tables live."""

    uri: str = Field("", description="Root of the Delta tables; default <home>/lake. Any object-store URI.")


class MlflowSettings(_Section):
    """The tracking server and the names training runs and models are filed under."""

    tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow tracking server.")
    experiment: str = Field("streamrec", description="MLflow experiment of training runs.")
    registered_model: str = Field("streamrec-retrieval", description="MLflow registered model of retrieval models.")
    registered_ranking_model: str = Field(
        "streamrec-ranking", description="MLflow registered model of ranking models (`streamrec train-ranking`)."
    )


class RaySettings(_Section):
    """The Ray cluster: its address, the local head's ports and CPUs, authentication."""

    address: str = Field("127.0.0.1:6379", description="Ray GCS address (host:port) or ray:// client URI.")
    dashboard_port: int = Field(8265, description="Dashboard port of the local Ray head.")
    client_port: int = Field(10001, description="Ray client server port of the local Ray head.")
    num_cpus: int = Field(0, ge=0, description="CPUs the local Ray head offers; 0 = this machine's cores.")
    auth: Literal["token", "disabled"] = Field(
        "token", description="Ray token authentication of the local head and of every client; disabled = none."
    )
    auth_token_file: str = Field(
        "", description="File holding the Ray token; default <home>/ray/auth_token (made by `up` for the local head)."
    )
    worker_num_cpus: int = Field(
        1, ge=1, description="CPUs of the separately started Ray worker node (cluster profile)."
    )

    @property
    def gcs(self) -> tuple[str, int] | None:
        """(host, port) of the Ray GCS, or None for a ``ray://`` client address."""
        if "://" in self.address:
            return None
        return _host_port(self.address, 6379)

    @property
    def dashboard_url(self) -> str:
        """HTTP root of the Ray dashboard (its REST APIs): the cluster's host, the dashboard port."""
        host = _host_port(self.address, 6379)[0]
        return f"http://{host}:{self.dashboard_port}"


class SparkSettings(_Section):
    """The Spark master of streamrec jobs, and the standalone processes of the cluster profile."""

    master: str = Field("local[*]", description="Spark master URL: local[*], spark://, yarn or k8s://.")
    driver_memory: str = Field("4g", description="Driver memory of local Spark sessions.")
    shuffle_partitions: int = Field(8, ge=1, description="spark.sql.shuffle.partitions of streamrec jobs.")
    # Cluster profile: the extra processes `up` starts.
    master_port: int = Field(7077, description="Port of the local Spark standalone master.")
    master_webui_port: int = Field(8080, description="Web UI (and JSON status) port of the local Spark master.")
    worker_webui_port: int = Field(8081, description="Web UI port of the local Spark worker.")
    worker_cores: int = Field(1, ge=1, description="Cores the local Spark worker offers to executors.")
    worker_memory: str = Field("2g", description="Memory the local Spark worker offers to executors.")

    @property
    def on_this_machine(self) -> bool:
        """Whether Spark's executors run here: ``local[*]`` or a standalone master on loopback."""
        if self.master.startswith("local"):
            return True
        return self.master.startswith("spark://") and _host_port(self.master, 7077)[0] in LOOPBACK_HOSTS


class DagsterSettings(_Section):
    """The Dagster webserver and how the workflows run their heavy steps."""

    port: int = Field(3000, description="Dagster webserver port.")
    host: str = Field("127.0.0.1", description="Dagster webserver host (not loopback = an external Dagster).")
    enabled: bool = Field(
        True,
        description="`streamrec up` also starts Dagster (webserver + daemon, `dagster dev -m workflows.definitions`), "
        "like the rest of the mini-cluster, and `streamrec up dagster` may name it. Off: `up` leaves it out (the "
        "test suite's session cluster does, to save its start); a started one still shows in `status` and `down`.",
    )
    continual: bool = Field(
        False,
        description="`streamrec up` also turns the loop on: the schedules and sensors tagged `streamrec/loop` (ingest "
        "every 15 minutes, the hourly warm start, the silver and registered-model sensors, the follow-job sensor), as "
        "`up --continual` does. "
        "Off: `up` leaves them as they are (stopped on a new instance; the state is kept in the instance storage).",
    )
    steps: Literal["in_process", "ray_job"] = Field(
        "in_process",
        description="How the workflows run ingest and feature builds: in the Dagster run's own process, or as Ray "
        "jobs on the cluster of ray.address (training always runs on Ray Train workers).",
    )
    job_command: str = Field(
        "",
        description="Command line prefix that runs the streamrec CLI inside a Ray job; default: the Python of the "
        "Dagster process with `-m infra.cli` (right when the Ray head shares this machine's environment).",
    )

    @property
    def url(self) -> str:
        """HTTP root of the Dagster webserver (UI and GraphQL)."""
        return f"http://{self.host}:{self.port}"


class IngestSettings(_Section):
    """The Kafka -> bronze stream: what it quarantines and how it reads."""

    max_event_bytes: int = Field(
        65_536, ge=64, description="Kafka records whose value is larger than this are quarantined."
    )
    future_tolerance_s: float = Field(
        3_600.0, ge=0, description="Events whose ts lies this far beyond their Kafka record timestamp are quarantined."
    )
    max_records_per_trigger: int = Field(
        250_000, ge=1, description="Most Kafka records one ingest micro-batch reads (maxRecordsPerTrigger)."
    )
    trigger_interval_s: float = Field(
        1.0, ge=0, description="Micro-batch trigger interval of `streamrec ingest`, in seconds."
    )
    starting_offsets: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new ingest stream (no checkpoint yet) starts in each partition."
    )


class FeaturesSettings(_Section):
    """The feature tables built from silver."""

    max_len: int = Field(
        200, ge=1, description="Events kept per user in features/user_sequences (the last ones, in event order)."
    )


class TrainSettings(_Section):
    """Ray Train resources and recovery of training runs."""

    workers: int = Field(2, ge=1, description="Ray Train workers of `streamrec train` (--workers overrides).")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each Ray Train worker reserves.")
    use_gpu: bool = Field(False, description="One GPU per worker: NCCL, bf16 autocast, Adam on the item table.")
    max_failures: int = Field(
        2, ge=0, description="Worker failures a run recovers from, each time from its last checkpoint."
    )
    storage: str = Field("", description="Ray Train run storage (checkpoints); default <home>/checkpoints. Any URI.")
    follow_item_headroom: int = Field(
        10_000,
        ge=0,
        description="`train --follow`: item-table rows beyond the base version's items, taken by items first seen "
        "after it (indices up to the base's items + this); when used up, the next full version resizes.",
    )
    follow_max_steps: int = Field(
        50, ge=1, description="`train --follow`: most optimizer steps per round of new silver/events versions."
    )
    follow_replay_ratio: float = Field(
        1.0, ge=0, description="`train --follow`: replayed sequences of other users per sequence with new events."
    )
    follow_poll_s: float = Field(
        1.0, gt=0, description="`train --follow`: how often it looks for new silver/events versions, in seconds."
    )


class ServeSettings(_Section):
    """The Ray Serve application: HTTP, replicas, search, limits, batching, ranking."""

    host: str = Field("127.0.0.1", description="Ray Serve HTTP host.")
    port: int = Field(8000, description="Ray Serve HTTP port.")
    ingress: Literal["haproxy", "python"] = Field(
        "haproxy",
        description="What answers on host:port: haproxy (Ray Serve's HAProxy ingress, forwarding straight to each "
        "replica's own HTTP server; several times the throughput of the Python proxy on 2 cores: docs/serving.md) "
        "or python (Ray Serve's Python HTTP proxy). Set in the Ray nodes' environment: takes effect when the Ray "
        "head starts.",
    )
    model_alias: str = Field(
        "production", description="MLflow alias of the registered model that serving follows (and `promote` moves)."
    )
    replicas: int = Field(1, ge=1, description="Replicas of the recommender deployment (each holds the model).")
    history_shards: int = Field(
        0,
        ge=0,
        description="Online-history shards, each a deployment of its own; shard i owns the topic's partitions p "
        "with p % shards == i. 0: each recommender replica holds the whole history itself (no hop per request; "
        "memory and Kafka reads once per replica).",
    )
    exact_max_items: int = Field(
        50_000,
        ge=1,
        description="Catalogues up to this size are searched exactly (FAISS flat); larger ones by HNSW "
        "(at 100k items HNSW finds 0.995 of the exact top 100 at under half the CPU: docs/serving.md).",
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (M) for large catalogues.")
    hnsw_ef_search: int = Field(
        128,
        ge=8,
        description="HNSW efSearch: candidates visited per query (at 100k items recall@100 0.995 at 128, "
        "0.998 at 256 for 1.8x the search CPU: docs/serving.md).",
    )
    prefix_dims: int | None = Field(
        None,
        ge=0,
        description="Two-stage retrieval (Matryoshka): index the first prefix_dims dims of each item vector "
        "(normalised) and rescore the best `rescore` at the full width. Unset: the smallest width >= 16 the "
        "served model was trained with (--matryoshka-dims) where the index is exact, off for HNSW and other "
        "models; 0: off; a width: that one "
        "(a model not trained with it is refused at load, the previous version serving: docs/serving.md).",
    )
    prefix_codec: IndexCodec = Field(
        "fp16",
        description="Two-stage retrieval: how an exact prefix index stores each prefix: fp16 (half the bytes a "
        "scan reads) or flat (float32). Candidates are rescored at the full width either way (docs/serving.md).",
    )
    rescore: int = Field(
        1_000,
        ge=0,
        description="Two-stage retrieval: candidates per query the prefix index returns, rescored at the full "
        "width (at least the k + exclusions asked for).",
    )
    max_k: int = Field(1_000, ge=1, description="Largest k a request may ask for.")
    max_history_items: int = Field(1_000, ge=1, description="Most items a request body's history may hold.")
    max_body_bytes: int = Field(65_536, ge=256, description="Largest request body; larger ones answer 413.")
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description="Requests one replica works on at once; high, so a burst waits in the replica's batch "
        "queue (larger batches) instead of the router backing off from a full replica (docs/serving.md).",
    )
    max_queued_requests: int = Field(
        128,
        ge=1,
        description="Requests waiting per replica (haproxy ingress) or per deployment handle (python ingress) "
        "beyond the ongoing ones; beyond this serving answers 503.",
    )
    batch_max_size: int = Field(32, ge=1, description="Most queries encoded together (@serve.batch).")
    batch_wait_s: float = Field(
        0.0,
        ge=0,
        description="How long a batch waits to fill, in seconds; 0: it takes what queued while the last one ran.",
    )
    model_poll_s: float = Field(2.0, gt=0, description="How often replicas check the model alias, in seconds.")
    delta_poll_s: float = Field(
        1.0,
        ge=0,
        description="How often replicas read new model deltas of the served version (models/deltas), in seconds; "
        "0: deltas are not applied (docs/serving.md, Applying model deltas).",
    )
    delta_rebuild_fraction: float = Field(
        0.25,
        gt=0,
        description="HNSW: rebuild the index beside the request path once the nodes of items re-added by deltas "
        "(hidden from searches) exceed this fraction of the items.",
    )
    lrurec_state_users: int = Field(
        100_000,
        ge=0,
        description="An LRURec model answers stored users from their live recurrent state, advanced by one step "
        "per new event (serving.user_state); each replica keeps the states of at most this many users, least "
        "recently asked for dropped first (about 2 KB each at dim 50, 2 blocks). 0: no states, LRURec re-encodes "
        "the last max_len events per request as the other models do (docs/serving.md).",
    )
    rank_candidates: int = Field(
        200, ge=1, description="Candidates /recommend retrieves and ranks when a ranking model serves."
    )
    rank_max_candidates: int = Field(1_000, ge=1, description="Most candidates one /rank request may give.")
    blend_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "like": 1.0, "purchase": 2.0, "skip": -1.0, "dislike": -2.0},
        description="How /recommend blends the ranker's task probabilities into one score (negative tasks "
        "subtract); tasks the served ranker lacks are ignored. JSON in the environment.",
    )


SECTIONS: dict[str, type[BaseModel]] = {
    "kafka": KafkaSettings,
    "lake": LakeSettings,
    "mlflow": MlflowSettings,
    "ray": RaySettings,
    "spark": SparkSettings,
    "dagster": DagsterSettings,
    "ingest": IngestSettings,
    "features": FeaturesSettings,
    "train": TrainSettings,
    "serve": ServeSettings,
}
# Flat names that are not <section>_<field> (they predate the sections).
FLAT_EXCEPTIONS: dict[str, tuple[str, str]] = {
    "topic": ("kafka", "topic"),
    "topic_partitions": ("kafka", "topic_partitions"),
    "registered_model": ("mlflow", "registered_model"),
    "registered_ranking_model": ("mlflow", "registered_ranking_model"),
}
TOP_LEVEL = ("home", "profile", "external", "start_timeout_s")
ENV_NONE = "null"  # how an environment variable says None


class Settings(BaseSettings):
    """Typed settings shared by every streamrec package: a few top-level ones and a section per
    part of the platform (``settings.serve.port``)."""

    model_config = SettingsConfigDict(extra="forbid")

    home: Path = Field(Path(".streamrec"), description="Holds the lake, checkpoints, pids and logs.")
    profile: Literal["local", "cluster"] = Field(
        "local",
        description="local: one Ray node and in-process Spark. cluster: `up` also starts a Ray worker node and a "
        "Spark standalone master and worker, and jobs use spark:// (multi-process clusters, as on real machines).",
    )
    external: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Components to check but never start, even on loopback (e.g. kafka,mlflow).",
    )
    start_timeout_s: float = Field(90.0, gt=0, description="How long `up` waits for each component.")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    dagster: DagsterSettings = Field(default_factory=DagsterSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    features: FeaturesSettings = Field(default_factory=FeaturesSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Every source yields the nested form, so pydantic-settings' deep merge keeps the
        # precedence per setting: an environment variable overrides one key of a YAML section.
        # "null" in a variable is None: an unset optional setting (serve.prefix_dims) travels to the
        # processes streamrec starts (infra.components.settings_environment) as that.
        env = EnvSettingsSource(_flat_settings(), env_prefix=ENV_PREFIX, env_parse_none_str=ENV_NONE)
        sources: list[PydanticBaseSettingsSource] = [_Nested(init_settings), _Nested(env)]
        config_file = os.environ.get("STREAMREC_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"STREAMREC_CONFIG names {config_file}, which does not exist")
            sources.append(_Nested(YamlConfigSettingsSource(settings_cls, yaml_file=config_file)))
        elif DEFAULT_CONFIG_FILE.is_file():
            sources.append(_Nested(YamlConfigSettingsSource(settings_cls, yaml_file=DEFAULT_CONFIG_FILE)))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, values: Any) -> Any:
        # Settings.model_validate(...) takes the flat names too, not only the sources.
        return nest(values) if isinstance(values, Mapping) else values

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
        if self.profile == "cluster" and self.spark.master.startswith("local"):
            self.spark.master = f"spark://127.0.0.1:{self.spark.master_port}"
        return self

    def updated(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (flat or nested names) applied, like ``model_copy(update=...)``
        (not validated); a section not named is shared with this object."""
        update: dict[str, Any] = {}
        for name, value in nest(changes).items():
            section = getattr(self, name)
            update[name] = section.model_copy(update=value) if isinstance(section, BaseModel) else value
        return self.model_copy(update=update)

    def flat_dump(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """Every setting under its flat name (``serve_port``), as the environment names them."""
        nested = self.model_dump(mode=mode)
        return {
            flat: nested[name] if section is None else nested[section][name]
            for flat, (section, name) in flat_names().items()
        }

    # Derived locations -------------------------------------------------------------
    @property
    def lake_root(self) -> str:
        """Root URI (or local path) of the Delta lake."""
        return self.lake.uri or str(self.home / "lake")

    def table_uri(self, name: str) -> str:
        """URI of the Delta table ``name`` (e.g. ``bronze/events``) inside the lake."""
        return f"{self.lake_root.rstrip('/')}/{name}"

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
        if self.ray.auth_token_file:
            return Path(self.ray.auth_token_file).expanduser().resolve()
        return self.home / "ray" / "auth_token"

    def is_local(self, component: str) -> bool:
        """Whether `streamrec up` starts ``component`` here (loopback and not marked external)."""
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}")
        if component in self.external:
            return False
        if component == "kafka":
            hosts = self.kafka.hosts
            return len(hosts) == 1 and hosts[0][0] in LOOPBACK_HOSTS
        if component == "mlflow":
            parsed = urlparse(self.mlflow.tracking_uri)
            return parsed.scheme in ("http", "https") and parsed.hostname in LOOPBACK_HOSTS
        if component == "dagster":
            return self.dagster.host in LOOPBACK_HOSTS
        if component in CLUSTER_PROFILE_COMPONENTS and self.profile != "cluster":
            return False
        if component in ("spark-master", "spark-worker"):
            return self.spark.on_this_machine and self.spark.master.startswith("spark://")
        gcs = self.ray.gcs
        return gcs is not None and gcs[0] in LOOPBACK_HOSTS


@cache
def flat_names() -> dict[str, tuple[str | None, str]]:
    """Each flat setting name (``serve_port``; ``STREAMREC_SERVE_PORT`` in the environment) ->
    (section, field); section None for the top-level settings."""
    names: dict[str, tuple[str | None, str]] = {name: (None, name) for name in TOP_LEVEL}
    exceptions = {target: flat for flat, target in FLAT_EXCEPTIONS.items()}
    for section, model in SECTIONS.items():
        for field in model.model_fields:
            names[exceptions.get((section, field), f"{section}_{field}")] = (section, field)
    return names


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each flat name moved into its section (``serve_port: 1`` ->
    ``serve: {port: 1}``); section objects become dicts. Unknown names are refused with the
    closest known ones."""
    names = flat_names()
    nested: dict[str, Any] = {}
    errors: list[InitErrorDetails] = []

    def put(section: str | None, field: str, value: Any, given: str) -> None:
        target = nested if section is None else nested.setdefault(section, {})
        if field in target:
            errors.append(_error("setting_given_twice", "{name}: the same setting is given twice", given, value))
        target[field] = value

    for key, value in values.items():
        lowered = str(key).lower()
        if lowered in SECTIONS:
            if isinstance(value, BaseModel):
                value = value.model_dump()
            if not isinstance(value, Mapping):
                nested[lowered] = value  # the section's own validation refuses it
                continue
            fields = SECTIONS[lowered].model_fields
            for field, field_value in value.items():
                if field in fields:
                    put(lowered, field, field_value, f"{lowered}.{field}")
                else:
                    errors.append(_unknown(f"{lowered}.{field}", field_value, fields))
        elif lowered in names:
            section, field = names[lowered]
            put(section, field, value, str(key))
        else:
            errors.append(_unknown(str(key), value, [*names, *SECTIONS]))
    if errors:
        raise ValidationError.from_exception_data("Settings", errors)
    return nested


def _unknown(name: str, value: Any, known: Iterable[str]) -> InitErrorDetails:
    closest = difflib.get_close_matches(name.rpartition(".")[2], list(known), n=3)
    hint = f"; closest: {', '.join(closest)}" if closest else ""
    return _error("unknown_setting", "no setting {name}" + hint, name, value)


def _error(kind: str, message: str, name: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(kind, message, {"name": name}), loc=tuple(name.split(".")), input=value
    )


class _Nested(PydanticBaseSettingsSource):
    """Another source's values in the nested form."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(Settings)
        self.inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, "", False  # unused: __call__ reads the inner source

    def __call__(self) -> dict[str, Any]:
        return nest(self.inner())


@cache
def _flat_settings() -> type[BaseSettings]:
    """A model with one field per flat name, for pydantic-settings' environment source: it
    parses each variable as it always did (JSON for dicts, ``external`` left to its validator)."""
    fields: dict[str, Any] = {}
    for flat, (section, name) in flat_names().items():
        info = (Settings if section is None else SECTIONS[section]).model_fields[name]
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[flat] = (annotation, None)  # NoDecode is in the metadata
    return create_model("FlatSettings", __base__=BaseSettings, **fields)


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
