"""The one rule of how a query scores an item (``EncoderConfig.scoring``), for the loss, evaluation
and serving alike.

* ``cosine``: the score is the cosine similarity of the query and the item row: both are
  L2-normalised, and the loss divides the scores by its temperature (logits within ±1/temperature);
* ``dot``: the score is the dot product of the raw query and item row, and the loss takes it as the
  logit as it is (no temperature), as RecBole's SASRec does.

Either way a score is an inner product of two ``scored_vectors``, so an inner-product index over
the items' scored vectors ranks as training did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.common.config import Scoring


def scored_vectors(vectors: torch.Tensor, scoring: Scoring) -> torch.Tensor:
    """What the score is the inner product of, row by row (last dim): unit rows for cosine, the
    rows themselves for dot."""
    return F.normalize(vectors, dim=-1) if scoring == "cosine" else vectors


def logit_scale(scoring: Scoring, temperature: float) -> float:
    """The factor from a score to the loss's logit: 1 / temperature for cosine, 1 for dot."""
    return 1.0 / temperature if scoring == "cosine" else 1.0
