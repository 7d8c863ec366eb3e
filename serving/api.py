"""Request and response bodies of the serving API (DESIGN section 5); OpenAPI at /docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.streaming.deltas import DeltaPosition


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


class RankRequest(BaseModel):
    """POST /rank: candidates to score for a stored user (``user_id``) or a given history."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, min_length=1, max_length=256, description="A user whose history serving holds.")
    history: list[str] | None = Field(None, description="Item ids, oldest first; scored without any stored state.")
    candidates: list[str] = Field(min_length=1, description="Item ids to score (duplicates count once).")

    @model_validator(mode="after")
    def _one_source(self) -> RankRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id and history")
        return self


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(
        description="Retrieval: the model's score (cosine similarity, or the dot product for a model trained with "
        "scoring dot); ranked: the blend of the task probabilities (a candidate the ranker does not know keeps "
        "its retrieval place and score, without scores)."
    )
    scores: dict[str, float] | None = Field(None, description="Per-task probabilities (when a ranker scored it).")


class HistoryLineage(BaseModel):
    """Where the history a response used came from."""

    source: str = Field(description="online (the user's stored history), request (the body's) or none (cold start).")
    events: int = Field(description="Events of the history the model saw (after unknown items were dropped).")
    partition: int | None = Field(None, description="The user's Kafka partition.")
    offset: int | None = Field(None, description="Last offset of that partition applied to the history.")
    bootstrap_versions: dict[str, int] = Field(
        default_factory=dict, description="Feature table versions the online history was bootstrapped from."
    )


class DeltaLineage(BaseModel):
    """How far the retrieval model is along the model deltas of its registered version."""

    base_version: int = Field(description="The registered version the deltas apply to (the served version).")
    sequence: int = Field(description="The last delta applied (0: the registered version as it was registered).")
    checksum: str = Field(description="That delta's checksum ('' at 0): names it even after a drop and republish.")

    @classmethod
    def of(cls, position: DeltaPosition) -> DeltaLineage:
        return cls(base_version=position.base_version, sequence=position.sequence, checksum=position.checksum)


class Lineage(BaseModel):
    """What an answer was made from: model versions and runs, feature versions, Kafka position."""

    model_version: dict[str, str]
    model_run_id: dict[str, str]
    feature_versions: dict[str, int] = Field(
        description="Feature table versions the first model (retrieval; the ranker on /rank) was trained on."
    )
    ranking_feature_versions: dict[str, int] | None = Field(
        None, description="Those of the ranker, where /recommend ranked with it."
    )
    delta: DeltaLineage | None = Field(
        None, description="The retrieval model's base version and the last model delta applied (streaming updates)."
    )
    history: HistoryLineage


class RankResponse(BaseModel):
    """The known candidates, best blended score first, with each task's probability."""

    items: list[ScoredItem]
    unknown_candidates: list[str] = Field(description="Candidates the served ranker does not know (not scored).")
    unknown_items: int = Field(0, description="Items of the history the served ranker does not know (ignored).")
    lineage: Lineage


class ItemsResponse(BaseModel):
    items: list[ScoredItem]
    cold_start: bool = Field(description="True when the list is the popularity list (no usable history).")
    unknown_items: int = Field(0, description="Items of the history the served model does not know (ignored).")
    excluded: int = Field(0, description="Items left out: seen ones (exclude_seen) and recently skipped or disliked.")
    lineage: Lineage
