"""The typed configuration a serving application is built from (``serving.app.build_app``).

It is made on the driver from the settings (``ServeConfig.from_settings``; for the model the
serving alias names, ``production_config``) and bound into every deployment, so replicas read
the same values wherever Ray places them, and the history shards bootstrap from the feature
versions the served model was trained on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from features.tables import ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE, recorded_state
from infra.settings import Settings
from serving.errors import ServeError
from serving.registry import served_version
from training.common import tracking
from training.retrieval.io import read_info

APP_NAME = "streamrec"


class ServeConfig(BaseModel):
    """Everything the deployments of one serving application need."""

    model_config = ConfigDict(frozen=True)

    settings: dict[str, Any] = Field(description="The Settings of the driver that built the app (JSON form).")
    bootstrap_versions: dict[str, int] = Field(
        description="Feature table versions the history shards bootstrap from (those the served model read)."
    )
    history_max_len: int = Field(ge=1, description="Events kept per user in the online history.")

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap_versions: dict[str, int], history_max_len: int) -> ServeConfig:
        missing = {ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE} - set(bootstrap_versions)
        if missing:
            raise ValueError(f"bootstrap versions lack {sorted(missing)}")
        return cls(
            settings=settings.model_dump(mode="json"),
            bootstrap_versions=dict(bootstrap_versions),
            history_max_len=history_max_len,
        )

    def make_settings(self) -> Settings:
        """The driver's Settings again (inside a replica)."""
        return Settings(**self.settings)

    @property
    def user_sequences_version(self) -> int:
        return self.bootstrap_versions[USER_SEQUENCES_TABLE]

    @property
    def item_vocab_version(self) -> int:
        return self.bootstrap_versions[ITEM_VOCAB_TABLE]


def production_config(settings: Settings) -> ServeConfig:
    """The ServeConfig of the version the serving alias names: the feature versions it was
    trained on (the history shards bootstrap from exactly those) and their history length."""
    version = served_version(settings)
    if version is None:
        raise ServeError(
            f"{settings.mlflow.registered_model} has no {settings.serve.model_alias!r} version: "
            "promote one first (`streamrec promote --version N`)"
        )
    with tracking.downloaded_version(settings, version) as directory:
        versions = read_info(directory).feature_versions
    state = recorded_state(settings.table_uri(USER_SEQUENCES_TABLE), versions[USER_SEQUENCES_TABLE])
    if state is None:
        raise ServeError(f"{USER_SEQUENCES_TABLE} v{versions[USER_SEQUENCES_TABLE]} records no build state")
    return ServeConfig.from_settings(settings, versions, history_max_len=state[1])
