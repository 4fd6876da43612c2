"""Ranking metrics of PROTOCOLS.md, one module for every family.

Recommend ("temporal-full"): Recall@K and NDCG@K with binary gains. Recall@K = hits in the top K / min(K, |truth|);
NDCG@K = DCG@K / ideal DCG over min(K, |truth|) relevant items. Both are averaged over users whose truth is non-empty.

Support: hit@1 and MRR@K of a (queries × docs) score matrix against a boolean relevance matrix, vectorised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def recall_at_k(ranked: Sequence[Any], truth: Iterable[Any], k: int) -> float:
    """Share of the (at most K) relevant items that the top K holds."""
    truth = set(truth)
    if not truth:
        raise ValueError("recall is undefined for an empty truth set")
    hits = sum(1 for item in list(ranked)[:k] if item in truth)
    return hits / min(k, len(truth))


def ndcg_at_k(ranked: Sequence[Any], truth: Iterable[Any], k: int) -> float:
    """DCG of the top K with binary gains, over the DCG of a perfect top min(K, |truth|)."""
    truth = set(truth)
    if not truth:
        raise ValueError("NDCG is undefined for an empty truth set")
    dcg = sum(1.0 / np.log2(rank + 2) for rank, item in enumerate(list(ranked)[:k]) if item in truth)
    ideal = sum(1.0 / np.log2(rank + 2) for rank in range(min(k, len(truth))))
    return float(dcg / ideal)


def evaluate_rankings(
    rankings: Mapping[Any, Sequence[Any]], truth: Mapping[Any, Iterable[Any]], ks: Sequence[int] = (10, 20)
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users with non-empty truth (a user without a ranking scores 0)."""
    users = [u for u, items in truth.items() if len(set(items))]
    if not users:
        raise ValueError("no user has a non-empty truth set")
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([recall_at_k(rankings.get(u, ()), truth[u], k) for u in users]))
        out[f"ndcg@{k}"] = float(np.mean([ndcg_at_k(rankings.get(u, ()), truth[u], k) for u in users]))
    out["users"] = float(len(users))
    return out


def chance_at_k(truth: Mapping[Any, Iterable[Any]], pool: int | Mapping[Any, int], k: int) -> dict[str, float]:
    """Expected Recall@K and NDCG@K of a uniformly random ranking of ``pool`` items (one count, or one per user),
    averaged as ``evaluate_rankings`` does: the chance level that a benchmark's absolute floor is set above."""
    users = [u for u, items in truth.items() if len(set(items))]
    if not users:
        raise ValueError("no user has a non-empty truth set")
    recall, ndcg = [], []
    for u in users:
        n, t = (pool if isinstance(pool, int) else pool[u]), len(set(truth[u]))
        if t > n:
            raise ValueError(f"user {u!r} has {t} relevant items but the ranking holds only {n}")
        shown, relevant = min(k, n), t / n  # each position holds a relevant item with probability t / n
        recall.append(shown * relevant / min(k, t))
        ideal = sum(1.0 / np.log2(rank + 2) for rank in range(min(k, t)))
        ndcg.append(relevant * sum(1.0 / np.log2(rank + 2) for rank in range(shown)) / ideal)
    return {f"recall@{k}": float(np.mean(recall)), f"ndcg@{k}": float(np.mean(ndcg))}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` highest scores of each row, best first; ties go to the lower index (the first
    ``k`` of a stable sort by descending score), for a partition and a sort of ``k`` per row."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kept = np.take_along_axis(scores, part, axis=1)
    top = np.take_along_axis(part, np.lexsort((part, -kept), axis=1), axis=1)
    # where the k-th score is shared with a column the partition left out, which of them it kept is arbitrary
    tied = np.nonzero((scores >= kept.min(axis=1, keepdims=True)).sum(axis=1) > k)[0]
    for r in tied:
        top[r] = np.argsort(-scores[r], kind="stable")[:k]
    return top


def rank_metrics(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> dict[str, float]:
    """hit@1 and MRR@k of (queries × docs) ``scores`` against a boolean (queries × docs) ``relevant``."""
    if not len(scores):
        return {"hit@1": 0.0, f"mrr@{k}": 0.0}
    kk = min(k, scores.shape[1])
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable"), axis=1)
    # a doc outside the question's scope (-inf) is never a hit, even when fewer than k docs are in scope
    hits = np.take_along_axis(relevant, top, axis=1) & np.isfinite(np.take_along_axis(scores, top, axis=1))
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    rr = np.where(first >= 0, 1.0 / (np.maximum(first, 0) + 1), 0.0)
    return {"hit@1": float(hits[:, 0].mean()), f"mrr@{k}": float(rr.mean())}
