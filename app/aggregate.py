"""Chunk logits -> one document's logits and scores (pure functions, shared by training and serving).

Every strategy returns *document logits*, so one activation (softmax or sigmoid) turns any of them into
scores and training can put its loss on exactly what the service serves. `mean_probs` returns the log of
the mean probability (softmax of it gives back the mean) or, multi-label, the logit of the mean sigmoid.
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch

_PROB_EPS = 1e-12


class Aggregation(StrEnum):
    """Wire names of the aggregation strategies (DESIGN.md)."""

    MEAN_LOGITS = "mean_logits"
    MAX_LOGITS = "max_logits"
    MEAN_PROBS = "mean_probs"
    WEIGHTED_MEAN_LOGITS = "weighted_mean_logits"


def aggregate(
    chunk_logits: torch.Tensor,
    token_counts: torch.Tensor,
    method: Aggregation,
    multi_label: bool = False,
) -> torch.Tensor:
    """Document logits of shape (labels,) from chunk logits (chunks, labels) and content token counts."""
    if chunk_logits.ndim != 2 or chunk_logits.shape[0] == 0:
        raise ValueError(f"need chunk logits of shape (chunks>=1, labels), got {tuple(chunk_logits.shape)}")
    if method is Aggregation.MEAN_LOGITS:
        return chunk_logits.mean(dim=0)
    if method is Aggregation.MAX_LOGITS:
        return chunk_logits.max(dim=0).values
    if method is Aggregation.WEIGHTED_MEAN_LOGITS:
        weights = token_counts.to(chunk_logits.dtype).clamp(min=0)
        total = weights.sum()
        if total <= 0:
            return chunk_logits.mean(dim=0)
        return (chunk_logits * (weights / total).unsqueeze(1)).sum(dim=0)
    if method is Aggregation.MEAN_PROBS:
        n = chunk_logits.shape[0]
        if multi_label:
            # float64: in float32 1 - 1e-12 rounds to 1.0 and a saturated label would get an infinite logit
            mean = torch.sigmoid(chunk_logits.double()).mean(dim=0).clamp(_PROB_EPS, 1 - _PROB_EPS)
            return (torch.log(mean) - torch.log1p(-mean)).to(chunk_logits.dtype)
        return torch.logsumexp(torch.log_softmax(chunk_logits, dim=1), dim=0) - math.log(n)
    raise ValueError(f"unknown aggregation {method!r}")


def activate(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Scores from logits: softmax (it subtracts the max, so large logits stay finite) or sigmoid."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def contributions(
    chunk_logits: torch.Tensor,
    token_counts: torch.Tensor,
    method: Aggregation,
    label_index: int,
    multi_label: bool = False,
) -> torch.Tensor:
    """Each chunk's share of the decision for `label_index` under `method` (sums to 1 where defined).

    Mean strategies: the chunk's weight in the average (1/n, or its token share). Max of logits: the share
    of the chunks that hold the maximum for that label (the winner takes it all). Mean of probabilities:
    the chunk's share of the summed probability of that label (sigmoid on a multi-label model, as in
    `aggregate`).
    """
    n = chunk_logits.shape[0]
    if method is Aggregation.MEAN_LOGITS:
        return torch.full((n,), 1.0 / n)
    if method is Aggregation.WEIGHTED_MEAN_LOGITS:
        weights = token_counts.to(torch.float32).clamp(min=0)
        return weights / weights.sum() if weights.sum() > 0 else torch.full((n,), 1.0 / n)
    if method is Aggregation.MAX_LOGITS:
        column = chunk_logits[:, label_index]
        winners = (column == column.max()).to(torch.float32)
        return winners / winners.sum()
    probs = activate(chunk_logits.to(torch.float32), multi_label)[:, label_index]
    return probs / probs.sum() if probs.sum() > 0 else torch.full((n,), 1.0 / n)
