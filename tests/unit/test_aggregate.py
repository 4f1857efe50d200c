"""Aggregation strategies on hand-computed examples, including logits large enough to overflow exp()."""

from __future__ import annotations

import math

import pytest
import torch

from app.aggregate import Aggregation, activate, aggregate, contributions

LOGITS = torch.tensor([[1.0, 3.0], [3.0, -1.0], [0.0, 0.0]])
COUNTS = torch.tensor([100, 50, 50])


def test_mean_logits() -> None:
    assert aggregate(LOGITS, COUNTS, Aggregation.MEAN_LOGITS).tolist() == pytest.approx([4 / 3, 2 / 3])


def test_max_logits() -> None:
    assert aggregate(LOGITS, COUNTS, Aggregation.MAX_LOGITS).tolist() == [3.0, 3.0]


def test_weighted_mean_logits_by_token_count() -> None:
    # (100*[1,3] + 50*[3,-1] + 50*[0,0]) / 200 = [250/200, 250/200]
    assert aggregate(LOGITS, COUNTS, Aggregation.WEIGHTED_MEAN_LOGITS).tolist() == pytest.approx([1.25, 1.25])


def test_mean_probs_softmax_of_result_is_the_mean_probability() -> None:
    doc = aggregate(LOGITS, COUNTS, Aggregation.MEAN_PROBS)
    p1 = 1 / (1 + math.exp(2))  # softmax([1,3])[0]
    p2 = 1 / (1 + math.exp(-4))  # softmax([3,-1])[0]
    expected = (p1 + p2 + 0.5) / 3
    assert activate(doc, multi_label=False).tolist() == pytest.approx([expected, 1 - expected], abs=1e-6)


@pytest.mark.parametrize("method", list(Aggregation))
def test_huge_logits_stay_finite(method: Aggregation) -> None:
    logits = torch.tensor([[1e4, -1e4], [-3e4, 5e4]])
    doc = aggregate(logits, torch.tensor([3, 1]), method)
    scores = activate(doc, multi_label=False)
    assert torch.isfinite(scores).all()
    assert float(scores.sum()) == pytest.approx(1.0)
    multi = activate(aggregate(logits, torch.tensor([3, 1]), method, multi_label=True), multi_label=True)
    assert torch.isfinite(multi).all() and ((multi >= 0) & (multi <= 1)).all()


def test_single_chunk_is_the_identity_for_every_logit_strategy() -> None:
    one = torch.tensor([[0.3, -2.0]])
    for method in (Aggregation.MEAN_LOGITS, Aggregation.MAX_LOGITS, Aggregation.WEIGHTED_MEAN_LOGITS):
        assert aggregate(one, torch.tensor([7]), method).tolist() == pytest.approx([0.3, -2.0])


def test_multi_label_mean_probs_is_the_mean_sigmoid() -> None:
    logits = torch.tensor([[0.0, 2.0], [2.0, -2.0]])
    doc = aggregate(logits, torch.tensor([1, 1]), Aggregation.MEAN_PROBS, multi_label=True)
    s = torch.sigmoid(logits).mean(0)
    assert activate(doc, multi_label=True).tolist() == pytest.approx(s.tolist(), abs=1e-6)


def test_contributions() -> None:
    assert contributions(LOGITS, COUNTS, Aggregation.MEAN_LOGITS, 0).tolist() == pytest.approx([1 / 3] * 3)
    assert contributions(LOGITS, COUNTS, Aggregation.WEIGHTED_MEAN_LOGITS, 0).tolist() == pytest.approx(
        [0.5, 0.25, 0.25]
    )
    assert contributions(LOGITS, COUNTS, Aggregation.MAX_LOGITS, 1).tolist() == [1.0, 0.0, 0.0]
    shares = contributions(LOGITS, COUNTS, Aggregation.MEAN_PROBS, 0)
    assert float(shares.sum()) == pytest.approx(1.0) and int(shares.argmax()) == 1


def test_empty_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="chunks>=1"):
        aggregate(torch.zeros((0, 2)), torch.zeros(0), Aggregation.MEAN_LOGITS)


def test_multi_label_mean_probs_contributions_are_shares_of_the_summed_sigmoid() -> None:
    """Three chunks with the same winning-label sigmoid share it equally (softmax shares said 0, 0, 1)."""
    logits = torch.tensor([[5.0, 0.0, 0.5], [0.0, 5.0, 0.5], [-5.0, -5.0, 0.5]])
    shares = contributions(logits, torch.tensor([1, 1, 1]), Aggregation.MEAN_PROBS, 2, multi_label=True)
    assert shares.tolist() == pytest.approx([1 / 3] * 3)


def test_saturated_multi_label_mean_probs_stays_finite() -> None:
    logits = torch.tensor([[40.0, -40.0], [40.0, -40.0]])
    doc = aggregate(logits, torch.tensor([1, 1]), Aggregation.MEAN_PROBS, multi_label=True)
    assert torch.isfinite(doc).all() and doc[0] > 20 and doc[1] < -20
