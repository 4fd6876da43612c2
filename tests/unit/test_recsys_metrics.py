"""Ranking metrics of the temporal-full protocol, checked against hand-computed values; EASE against its formula."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from omnicart.metrics import evaluate_rankings, ndcg_at_k, recall_at_k, top_k
from omnicart.recommend import item2item
from omnicart.schemas import C


def test_recall_divides_by_the_smaller_of_k_and_the_truth():
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"a", "c"}, 2) == 0.5  # one hit of min(2, 2)
    assert recall_at_k(ranked, {"a", "c"}, 4) == 1.0
    assert recall_at_k(ranked, {"a", "x", "y", "z"}, 2) == 0.5  # min(K=2, 4) = 2
    assert recall_at_k(ranked, {"z"}, 4) == 0.0


def test_ndcg_uses_binary_gains_and_an_ideal_over_min_k_truth():
    # hits at ranks 1 and 3 (positions 0 and 2): DCG = 1 + 1/log2(4) = 1.5; ideal (2 relevant) = 1 + 1/log2(3)
    expected = 1.5 / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "b", "c"], {"a", "c"}, 3) == pytest.approx(expected)
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 2) == pytest.approx(1.0)
    # truth larger than K: the ideal has K gains, so a perfect top K scores 1
    assert ndcg_at_k(["a", "b"], {"a", "b", "c"}, 2) == pytest.approx(1.0)
    # a single hit at rank 2: 1/log2(3)
    assert ndcg_at_k(["x", "a"], {"a"}, 10) == pytest.approx(1 / math.log2(3))


def test_metrics_refuse_empty_truth_and_average_over_users_with_truth():
    with pytest.raises(ValueError):
        recall_at_k(["a"], set(), 10)
    out = evaluate_rankings({"u1": ["a", "b"], "u2": ["c"]}, {"u1": {"a"}, "u2": {"d"}, "u3": set()}, ks=(1,))
    assert out["recall@1"] == pytest.approx(0.5)
    assert out["ndcg@1"] == pytest.approx(0.5)
    assert out["users"] == 2  # u3 has no truth and does not count


def test_top_k_orders_by_score_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.9, 0.5], [1.0, 0.0, 2.0, -np.inf]])
    assert top_k(scores, 3).tolist() == [[1, 2, 3], [2, 0, 1]]


def test_ease_matches_the_closed_form_and_has_a_zero_diagonal():
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32)
    lam = 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(3))
    expected = np.eye(3) - p / np.diag(p)
    b = item2item.ease(x, lam)
    assert np.allclose(np.diag(b), 0.0)
    assert np.allclose(b, expected, atol=1e-5)


def test_ease_lambda_is_tuned_on_the_last_month_only():
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        base = pd.Timestamp("2024-01-01", tz="UTC")
        for d in rng.choice(80, size=6, replace=False):
            rows.append((u, f"i{rng.integers(0, 12)}", base + pd.Timedelta(days=int(d))))
    events = pd.DataFrame(rows, columns=[C.customer_id, C.item_id, C.event_timestamp])
    now = pd.Timestamp("2024-03-21", tz="UTC")
    best, tried = item2item.tune_ease_lambda(events, now, (1.0, 10.0, 100.0))
    assert set(tried) == {1.0, 10.0, 100.0}
    assert best in tried and tried[best] == max(tried.values())
    # events after `now` cannot change the choice
    later = events.assign(**{C.event_timestamp: events[C.event_timestamp] + pd.Timedelta(days=400)})
    assert item2item.tune_ease_lambda(pd.concat([events, later]), now, (1.0, 10.0, 100.0)) == (best, tried)
