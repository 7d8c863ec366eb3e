"""Request and response bodies of the serving API (DESIGN section 5); OpenAPI at /docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetrieveRequest(BaseModel):
    """POST /retrieve: a stored user (``user_id``) or a given history of item ids, oldest first."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, min_length=1, max_length=256, description="A user whose history serving holds.")
    history: list[str] | None = Field(None, description="Item ids, oldest first; scored without any stored state.")
    k: int = Field(100, ge=1, description="How many items to return.")
    exclude_seen: bool = Field(False, description="Leave out items already in the history.")

    @model_validator(mode="after")
    def _one_source(self) -> RetrieveRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id and history")
        return self


class RecommendRequest(RetrieveRequest):
    """POST /recommend: like /retrieve, with seen items left out by default."""

    k: int = Field(10, ge=1, description="How many items to return.")
    exclude_seen: bool = Field(True, description="Leave out items already in the history.")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class HistoryLineage(BaseModel):
    """Where the history a response used came from."""

    source: str = Field(description="online (the user's stored history), request (the body's) or none (cold start).")
    events: int = Field(description="Events of the history the model saw (after unknown items were dropped).")
    partition: int | None = Field(None, description="The user's Kafka partition.")
    offset: int | None = Field(None, description="Last offset of that partition applied to the history.")
    bootstrap_versions: dict[str, int] = Field(
        default_factory=dict, description="Feature table versions the online history was bootstrapped from."
    )


class Lineage(BaseModel):
    """What an answer was made from: model versions and runs, feature versions, Kafka position."""

    model_version: dict[str, str]
    model_run_id: dict[str, str]
    feature_versions: dict[str, int] = Field(description="Feature table versions the model was trained on.")
    history: HistoryLineage


class ItemsResponse(BaseModel):
    items: list[ScoredItem]
    cold_start: bool = Field(description="True when the list is the popularity list (no usable history).")
    unknown_items: int = Field(0, description="Items of the history the served model does not know (ignored).")
    excluded: int = Field(0, description="Items left out: seen ones (exclude_seen) and recently skipped or disliked.")
    lineage: Lineage
