"""Next-item retrieval loss: sampled softmax with a not-to-recommend term.

Position t of a history predicts the event at t + 1. What the loss does with it depends on
that next event's action (``ingestion.schema``):

* POSITIVE_ACTIONS (click, view, like, share, purchase): a softmax term
  ``-log p(next item)`` where p is the softmax over cosine similarities / temperature of
  the next item against the candidate negatives;
* NEGATIVE_ACTIONS (skip, dislike): a not-to-recommend (unlikelihood) term
  ``-log(1 - p(next item))`` over the same candidates, weighted by ``ntr_weight``;
* impression: no term. An impression says the item was shown and nothing more, so it is
  neither something to recommend nor something to avoid; it still enters the history as
  an input token with its action type.

Candidates are shared by all positions of a batch: ``num_negatives`` uniform random items
plus ``in_batch_negatives`` target items of other positions in the same batch (drawn
uniformly from the batch's positive positions, so they follow item popularity).
Candidates equal to a position's own next item are masked out (no accidental hits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ingestion.schema import ACTION_IDS, NEGATIVE_ACTIONS, POSITIVE_ACTIONS

POSITIVE_IDS = torch.tensor(sorted(ACTION_IDS[action] for action in POSITIVE_ACTIONS))
NEGATIVE_IDS = torch.tensor(sorted(ACTION_IDS[action] for action in NEGATIVE_ACTIONS))


@dataclass(frozen=True)
class LossTerms:
    """The loss to minimise and what it is made of (for logging)."""

    total: torch.Tensor
    softmax: torch.Tensor
    not_to_recommend: torch.Tensor
    positives: int
    negatives: int


def retrieval_loss(
    hidden: torch.Tensor,
    history_emb: torch.Tensor,
    batch: dict[str, torch.Tensor],
    negative_ids: torch.Tensor,
    negative_emb: torch.Tensor,
    *,
    temperature: float,
    in_batch_negatives: int,
    ntr_weight: float,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """Loss of one batch: ``hidden`` and ``history_emb`` are (B, L, D) over ``batch``'s histories.

    ``batch`` holds ``item_indices``, ``action_ids``, ``lengths`` and ``valid`` (B rows, L
    columns); ``negative_ids`` (U,) are uniform random items with embeddings ``negative_emb``.
    """
    length = hidden.shape[1]
    item_indices, action_ids = batch["item_indices"][:, :length], batch["action_ids"][:, :length]
    lengths, valid = batch["lengths"], batch["valid"]
    has_next = torch.arange(length - 1, device=hidden.device).unsqueeze(0) < (lengths - 1).unsqueeze(1)
    has_next = has_next & valid.unsqueeze(1)
    next_actions = action_ids[:, 1:]
    positive = has_next & torch.isin(next_actions, POSITIVE_IDS.to(next_actions.device))
    negative = has_next & torch.isin(next_actions, NEGATIVE_IDS.to(next_actions.device))
    if ntr_weight == 0:
        negative = torch.zeros_like(negative)
    scored = positive | negative

    queries = F.normalize(hidden[:, :-1][scored].float(), dim=-1)
    targets = F.normalize(history_emb[:, 1:][scored].float(), dim=-1)
    target_ids = item_indices[:, 1:][scored]
    is_positive = positive[scored]

    candidate_ids, candidate_emb = negative_ids, negative_emb.float()
    positive_ids, positive_emb = target_ids[is_positive], targets[is_positive]
    if in_batch_negatives and len(positive_ids):
        draw = torch.randint(len(positive_ids), (in_batch_negatives,), generator=generator).to(hidden.device)
        candidate_ids = torch.cat([candidate_ids, positive_ids[draw]])
        candidate_emb = torch.cat([candidate_emb, positive_emb[draw]])
    candidate_emb = F.normalize(candidate_emb, dim=-1)

    target_logits = (queries * targets).sum(-1, keepdim=True) / temperature
    candidate_logits = queries @ candidate_emb.T / temperature
    candidate_logits = candidate_logits.masked_fill(
        candidate_ids.unsqueeze(0) == target_ids.unsqueeze(1), float("-inf")
    )
    log_normaliser = torch.logsumexp(torch.cat([target_logits, candidate_logits], dim=1), dim=1)

    zero = hidden.sum().float() * 0.0  # keeps every parameter in the graph when nothing is scored
    softmax = (log_normaliser - target_logits.squeeze(1))[is_positive].mean() if is_positive.any() else zero
    # -log(1 - p) = log(exp(target) + sum exp(candidates)) - log(sum exp(candidates))
    unlikely = (log_normaliser - torch.logsumexp(candidate_logits, dim=1))[~is_positive]
    not_to_recommend = unlikely.mean() if len(unlikely) else zero
    total = softmax + ntr_weight * not_to_recommend
    return LossTerms(total, softmax.detach(), not_to_recommend.detach(), int(is_positive.sum()), len(unlikely))
