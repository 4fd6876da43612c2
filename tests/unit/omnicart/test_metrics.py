"""The ranking metrics of every family: recommend's Recall@K and NDCG@K against hand-computed values and scikit-learn's
``ndcg_score``; support's hit@1 and MRR@10 against scikit-learn and a plain loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score, ndcg_score, top_k_accuracy_score

from omnicart.metrics import evaluate_rankings, ndcg_at_k, rank_metrics, recall_at_k, top_k


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


def test_rank_metrics_hit_and_reciprocal_rank():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8]])
    relevant = np.array([[True, False, False], [False, True, False]])
    m = rank_metrics(scores, relevant)
    assert m["hit@1"] == 0.5 and m["mrr@10"] == pytest.approx((1 + 0.5) / 2)


@pytest.mark.parametrize("k", [1, 5, 10, 30])
def test_ndcg_matches_scikit_learn_with_binary_relevance(k):
    rng = np.random.default_rng(k)
    users, items = 40, 30
    scores = rng.random((users, items))  # continuous: no ties, which scikit-learn would average over
    relevant = rng.random((users, items)) < rng.uniform(0.02, 0.4, (users, 1))
    relevant[np.arange(users), rng.integers(0, items, users)] = True  # every user has some truth
    rankings = {u: list(np.argsort(-scores[u])) for u in range(users)}
    truth = {u: set(np.flatnonzero(relevant[u])) for u in range(users)}
    per_user = [ndcg_at_k(rankings[u], truth[u], k) for u in range(users)]
    expected = [ndcg_score(relevant[u : u + 1].astype(float), scores[u : u + 1], k=k) for u in range(users)]
    assert per_user == pytest.approx(expected)
    assert evaluate_rankings(rankings, truth, ks=(k,))[f"ndcg@{k}"] == pytest.approx(
        ndcg_score(relevant.astype(float), scores, k=k)
    )


def test_hit_at_1_and_mrr_match_scikit_learn_with_one_answer_per_question():
    # at most 10 docs, so MRR@10 is the plain MRR, which with one relevant doc per row is scikit-learn's LRAP
    rng = np.random.default_rng(0)
    questions, docs = 300, 8
    scores = rng.normal(size=(questions, docs))
    answer = rng.integers(0, docs, questions)
    relevant = np.zeros((questions, docs), dtype=bool)
    relevant[np.arange(questions), answer] = True
    m = rank_metrics(scores, relevant)
    assert m["hit@1"] == pytest.approx(top_k_accuracy_score(answer, scores, k=1, labels=np.arange(docs)))
    assert m["mrr@10"] == pytest.approx(label_ranking_average_precision_score(relevant, scores))
    assert 0.0 < m["hit@1"] < m["mrr@10"] < 1.0


def test_mrr_at_10_matches_a_plain_loop_with_scopes_and_several_answers():
    """More docs than the cut, several right docs per question, some questions without one, docs out of scope."""
    rng = np.random.default_rng(1)
    questions, docs = 200, 25
    scores = rng.normal(size=(questions, docs))
    scores[rng.random((questions, docs)) < 0.3] = -np.inf  # outside the question's product scope
    relevant = rng.random((questions, docs)) < 0.08
    hits, reciprocal = [], []
    for q in range(questions):
        order = sorted(range(docs), key=lambda d: -scores[q, d])
        ranks = [r for r, d in enumerate(order[:10]) if relevant[q, d] and np.isfinite(scores[q, d])]
        hits.append(bool(ranks) and ranks[0] == 0)
        reciprocal.append(1.0 / (ranks[0] + 1) if ranks else 0.0)
    m = rank_metrics(scores, relevant)
    assert m["hit@1"] == pytest.approx(np.mean(hits))
    assert m["mrr@10"] == pytest.approx(np.mean(reciprocal))
    assert rank_metrics(scores[:0], relevant[:0]) == {"hit@1": 0.0, "mrr@10": 0.0}


def test_top_k_is_the_head_of_a_stable_descending_sort():
    rng = np.random.default_rng(4)
    ties = rng.integers(0, 5, (200, 50)).astype(np.float32)  # ties everywhere, at the k-th place too
    ties[:5, :47] = -np.inf  # fewer finite scores than k
    spread = rng.random((100, 400)).astype(np.float32)
    for s in (ties, spread):
        assert np.array_equal(top_k(s, 10), np.argsort(-s, axis=1, kind="stable")[:, :10])
    assert top_k(spread, 500).shape == (100, 400)
