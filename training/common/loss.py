"""Retrieval loss: a softmax over items with a not-to-recommend term, for next-item or masked-item targets.

Position t of a history predicts the event at t + 1. What the loss does with it depends on
that next event's action (``ingestion.schema``):

* POSITIVE_ACTIONS (click, view, like, share, purchase): a softmax term
  ``-log p(next item)`` where p is the softmax over the scores of the next item against the
  candidates (``scoring``, ``training.common.scoring``: cosine similarities / temperature, or
  plain dot products);
* NEGATIVE_ACTIONS (skip, dislike): a not-to-recommend (unlikelihood) term
  ``-log(1 - p(next item))`` over the same candidates, weighted by ``ntr_weight``;
* impression: no term. An impression says the item was shown and nothing more, so it is
  neither something to recommend nor something to avoid; it still enters the history as
  an input token with its action type.

The candidates, by ``kind`` (``LossKind``):

* ``sampled``: shared by all positions of a batch, ``num_negatives`` uniform random items
  plus ``in_batch_negatives`` target items of other positions in the same batch (drawn
  uniformly from the batch's positive positions, so they follow item popularity);
  candidates equal to a position's own next item are masked out (no accidental hits);
* ``sampled_logq``: the same candidates, each logit corrected by minus the log of the
  number of times the item was expected among them (``U / N`` for uniform draws plus
  ``K * count_in_batch / positives`` for in-batch ones), so the softmax's denominator
  estimates the full catalogue's instead of over-weighting popular items (sampled softmax,
  Bengio & Senecal 2008; the in-batch correction of Yi et al. 2019);
* ``full``: every item of the catalogue (the caller looks all of them up), the exact
  softmax cross-entropy; its normaliser is computed over item chunks of ``chunk_items`` with
  a custom backward, so memory is (positions x chunk), not (positions x catalogue).

The masked-item objective (BERT4Rec, ``masked``): the terms are the same, but a masked
position is scored against its own event's item (hidden from the encoder behind the mask
token) instead of position t against the event at t + 1.

Matryoshka (``prefix_dims``, fMRLRec): the same loss, on the same positions and candidates, is
also computed on the first d dims of every query, target and candidate for each d of
``prefix_dims`` (under cosine scoring each prefix L2-normalised on its own, as a prefix index
would score it); the
loss is the mean over those widths and the full one, as fMRLRec's cross-entropy over its stacked
prefix logits is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ingestion.schema import ACTION_IDS, NEGATIVE_ACTIONS, POSITIVE_ACTIONS
from training.common.config import LossKind, Scoring
from training.common.scoring import logit_scale, scored_vectors

POSITIVE_IDS = torch.tensor(sorted(ACTION_IDS[action] for action in POSITIVE_ACTIONS))
NEGATIVE_IDS = torch.tensor(sorted(ACTION_IDS[action] for action in NEGATIVE_ACTIONS))

FLOAT_BYTES = 4
MEMORY_SHARE = 0.5  # of the memory available at the start: the rest is the model's, the batch's and others'


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
    candidate_ids: torch.Tensor,
    candidate_emb: torch.Tensor,
    *,
    temperature: float,
    in_batch_negatives: int,
    ntr_weight: float,
    kind: LossKind = "sampled",
    num_items: int = 0,
    chunk_items: int = 8192,
    generator: torch.Generator | None = None,
    masked: torch.Tensor | None = None,
    prefix_dims: tuple[int, ...] = (),
    scoring: Scoring = "cosine",
) -> LossTerms:
    """Loss of one batch: ``hidden`` and ``history_emb`` are (B, L, D) over ``batch``'s histories.

    ``batch`` holds ``item_indices``, ``action_ids``, ``lengths`` and ``valid`` (B rows, L
    columns). ``candidate_ids`` (C,) with embeddings ``candidate_emb`` are uniform random items
    (``sampled``, ``sampled_logq``; ``num_items`` is the catalogue they were drawn from) or
    every item 1..N (``full``, where the in-batch negatives are not used).

    ``masked`` (B, L), when given, selects the masked-item objective: each masked position's
    output is scored against the item of its own event (``batch`` holds the events before
    masking), instead of each position's against the next event's. ``prefix_dims`` adds the
    Matryoshka loss: the same loss on each prefix width of queries, targets and candidates (each
    prefix L2-normalised on its own), averaged with the full width's, as fMRLRec's does.
    ``scoring`` is the model's (``EncoderConfig.scoring``); ``temperature`` applies to cosine only.
    """
    queries, targets, target_ids, is_positive = _scored_pairs(hidden, history_emb, batch, ntr_weight, masked)
    if kind == "full":
        candidates, log_expected = candidate_emb.float(), None
    else:
        ids, candidates = _sampled_candidates(
            candidate_ids, candidate_emb, target_ids[is_positive], targets[is_positive], in_batch_negatives, generator
        )
        log_expected = None
        if kind == "sampled_logq":
            expected = _expected_counts(ids, candidate_ids, target_ids[is_positive], in_batch_negatives, num_items)
            log_expected = expected.log()
        accidental = ids.unsqueeze(0) == target_ids.unsqueeze(1)  # a candidate that is the position's own target

    zero = hidden.sum().float() * 0.0  # keeps every parameter in the graph when nothing is scored
    widths = (*prefix_dims, hidden.shape[-1])
    softmax_terms, unlikely_terms = [], []
    scale = logit_scale(scoring, temperature)
    for width in widths:
        query = scored_vectors(queries[:, :width], scoring) * scale  # scaled once: logits = query . item
        target = scored_vectors(targets[:, :width], scoring)
        items = scored_vectors(candidates[:, :width], scoring)
        target_logits = (query * target).sum(-1)
        if kind == "full":
            log_normaliser = chunked_logsumexp(query, items, chunk_items)
            # log of the normaliser without the target: log(1 - p) + log_normaliser
            log_p = (target_logits - log_normaliser).clamp(max=-1e-7)
            log_others = log_normaliser + torch.log(-torch.expm1(log_p))
        else:
            candidate_logits = query @ items.T
            if log_expected is not None:
                candidate_logits = candidate_logits - log_expected.unsqueeze(0)
            log_others = torch.logsumexp(candidate_logits.masked_fill(accidental, float("-inf")), dim=1)
            log_normaliser = torch.logaddexp(target_logits, log_others)
        softmax_terms.append((log_normaliser - target_logits)[is_positive].mean() if is_positive.any() else zero)
        # -log(1 - p) = log(exp(target) + sum exp(others)) - log(sum exp(others))
        unlikely = (log_normaliser - log_others)[~is_positive]
        unlikely_terms.append(unlikely.mean() if len(unlikely) else zero)
    softmax = torch.stack(softmax_terms).mean()
    not_to_recommend = torch.stack(unlikely_terms).mean()
    total = softmax + ntr_weight * not_to_recommend
    negatives = int((~is_positive).sum())
    return LossTerms(total, softmax.detach(), not_to_recommend.detach(), int(is_positive.sum()), negatives)


def _scored_pairs(
    hidden: torch.Tensor,
    history_emb: torch.Tensor,
    batch: dict[str, torch.Tensor],
    ntr_weight: float,
    masked: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(queries (P, D), targets (P, D), target ids (P,), is_positive (P,)) of the positions that
    get a term: raw hidden states and target item embeddings, float32. Next-item: position t
    and the event at t + 1; masked-item: a masked position and its own event."""
    length = hidden.shape[1]
    item_indices, action_ids = batch["item_indices"][:, :length], batch["action_ids"][:, :length]
    lengths, valid = batch["lengths"], batch["valid"]
    if masked is None:
        has_target = torch.arange(length - 1, device=hidden.device).unsqueeze(0) < (lengths - 1).unsqueeze(1)
        query_hidden, target_emb = hidden[:, :-1], history_emb[:, 1:]
        target_items, target_actions = item_indices[:, 1:], action_ids[:, 1:]
    else:
        real = torch.arange(length, device=hidden.device).unsqueeze(0) < lengths.unsqueeze(1)
        has_target = masked[:, :length] & real
        query_hidden, target_emb, target_items, target_actions = hidden, history_emb, item_indices, action_ids
    has_target = has_target & valid.unsqueeze(1)
    positive = has_target & torch.isin(target_actions, POSITIVE_IDS.to(target_actions.device))
    negative = has_target & torch.isin(target_actions, NEGATIVE_IDS.to(target_actions.device))
    if ntr_weight == 0:
        negative = torch.zeros_like(negative)
    scored = positive | negative
    queries = query_hidden[scored].float()
    return queries, target_emb[scored].float(), target_items[scored], positive[scored]


def _sampled_candidates(
    negative_ids: torch.Tensor,
    negative_emb: torch.Tensor,
    positive_ids: torch.Tensor,
    positive_emb: torch.Tensor,
    in_batch: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, embeddings) of the uniform negatives plus ``in_batch`` draws from the batch's positive targets."""
    if not in_batch or not len(positive_ids):
        return negative_ids, negative_emb.float()
    draw = torch.randint(len(positive_ids), (in_batch,), generator=generator).to(positive_ids.device)
    return torch.cat([negative_ids, positive_ids[draw]]), torch.cat([negative_emb.float(), positive_emb[draw]])


def _expected_counts(
    ids: torch.Tensor, uniform_ids: torch.Tensor, positive_ids: torch.Tensor, in_batch: int, num_items: int
) -> torch.Tensor:
    """How often each candidate of ``ids`` was expected among the candidates: ``len(uniform_ids)``
    uniform draws from 1..``num_items`` plus ``in_batch`` uniform draws from ``positive_ids``."""
    if num_items < 1:
        raise ValueError("sampled_logq needs the catalogue size (num_items)")
    expected = torch.full(ids.shape, len(uniform_ids) / num_items, device=ids.device)
    if in_batch and len(positive_ids):
        counts = torch.bincount(positive_ids, minlength=int(ids.max()) + 1).to(expected.dtype)
        expected = expected + in_batch * counts[ids] / len(positive_ids)
    return expected


class _ChunkedLogSumExp(torch.autograd.Function):
    """logsumexp(queries @ items.T, dim=1) walked over item chunks, forward and backward, so no
    (positions x catalogue) tensor is ever held."""

    @staticmethod
    def forward(ctx: Any, queries: torch.Tensor, items: torch.Tensor, chunk: int) -> torch.Tensor:
        result = torch.full((len(queries),), float("-inf"), device=queries.device, dtype=queries.dtype)
        for start in range(0, len(items), chunk):
            result = torch.logaddexp(result, torch.logsumexp(queries @ items[start : start + chunk].T, dim=1))
        ctx.save_for_backward(queries, items, result)
        ctx.chunk = chunk
        return result

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        queries, items, result = ctx.saved_tensors
        grad_queries, grad_items = torch.zeros_like(queries), torch.zeros_like(items)
        for start in range(0, len(items), ctx.chunk):
            chunk = items[start : start + ctx.chunk]
            weights = torch.exp(queries @ chunk.T - result.unsqueeze(1)) * grad.unsqueeze(1)  # softmax x upstream
            grad_queries += weights @ chunk
            grad_items[start : start + ctx.chunk] = weights.T @ queries
        return grad_queries, grad_items, None


def chunked_logsumexp(queries: torch.Tensor, items: torch.Tensor, chunk_items: int) -> torch.Tensor:
    """(P,) logsumexp of every query's scores against every item (``queries @ items.T``), exact,
    with memory of (P x ``chunk_items``) in forward and backward."""
    return _ChunkedLogSumExp.apply(queries, items, max(1, chunk_items))


def full_loss_bytes(positions: int, num_items: int, width: int, chunk_items: int) -> tuple[int, int]:
    """(catalogue bytes, logits bytes) a ``full`` loss holds per batch at most: every item's row
    (looked up, normalised, its gradient, the lookup's exchange buffers) and one chunk's
    scores (the scores, their softmax and its gradient) of ``positions`` query positions."""
    catalogue = 5 * num_items * width * FLOAT_BYTES
    logits = 3 * positions * min(chunk_items, num_items) * FLOAT_BYTES
    return catalogue, logits


def check_full_loss_fits(positions: int, num_items: int, width: int, chunk_items: int, available: int) -> None:
    """Raise MemoryError when a ``full`` loss of ``positions`` positions over ``num_items`` items
    would need more than MEMORY_SHARE of ``available`` bytes; the message names the settings."""
    catalogue, logits = full_loss_bytes(positions, num_items, width, chunk_items)
    budget = MEMORY_SHARE * available
    if catalogue + logits <= budget:
        return
    gib = 2**30
    remedy = (
        f"lower --loss-chunk-items (now {chunk_items}) to shrink the scores"
        if logits > budget - catalogue > 0
        else "the catalogue's rows alone do not fit: use --loss sampled_logq"
    )
    raise MemoryError(
        f"the full loss over {num_items} items needs about {(catalogue + logits) / gib:.1f} GiB per batch "
        f"(catalogue rows {catalogue / gib:.1f} GiB, scores of {positions} positions x {min(chunk_items, num_items)} "
        f"items {logits / gib:.1f} GiB) but {budget / gib:.1f} GiB ({MEMORY_SHARE:.0%} of what is available) "
        f"is the limit: {remedy}"
    )
