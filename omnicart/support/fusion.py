"""Fusion of a doc's five scores (``FEATURES``): their weighted sum, and the weights tuned on validation questions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omnicart.metrics import rank_metrics

FEATURES = ("dense_a", "dense_q", "bm25_a", "bm25_q", "intent")


def normalise(scores: np.ndarray) -> np.ndarray:
    """Each query's scores divided by its best (0 stays 0), so BM25 is on the cosine's scale."""
    top = scores.max(axis=1, keepdims=True) if scores.size else scores
    return np.divide(scores, top, out=np.zeros_like(scores), where=top > 0).astype(np.float32)


# --- fusion, ranking metrics and calibration -------------------------------------------------------------------------
def fuse(features: dict[str, np.ndarray], weights: dict[str, float], mask: np.ndarray | None = None) -> np.ndarray:
    """The weighted sum of the feature matrices; docs outside a question's scope (``mask`` False) get -inf."""
    total = None
    for name in FEATURES:
        w = weights.get(name, 0.0)
        if w:
            total = features[name] * w if total is None else total + features[name] * w
    if total is None:
        total = np.zeros_like(features["dense_a"])
    return in_scope(total, mask)


def in_scope(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``scores`` with the docs outside each question's scope (``mask`` False) at -inf; no mask: every doc."""
    return scores if mask is None else np.where(mask, scores, -np.inf).astype(scores.dtype, copy=False)


WEIGHT_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def tune_weights(
    features: dict[str, np.ndarray],
    relevant: np.ndarray,
    available: Sequence[str] = FEATURES,
    mask: np.ndarray | None = None,
    sweeps: int = 3,
) -> tuple[dict[str, float], dict[str, float]]:
    """Coordinate ascent over non-negative fusion weights, maximising validation hit@1 (MRR@10 breaks ties)."""
    weights = {name: 0.0 for name in FEATURES}
    weights["dense_a"] = 1.0

    def objective(w: dict[str, float]) -> tuple[float, dict[str, float]]:
        m = rank_metrics(fuse(features, w, mask), relevant)
        return m["hit@1"] + 0.1 * m["mrr@10"], m

    best, best_metrics = objective(weights)
    for _ in range(sweeps):
        improved = False
        for name in available:
            for value in WEIGHT_GRID:
                if value == weights[name]:
                    continue
                trial = {**weights, name: value}
                if not any(trial.values()):
                    continue
                score, metrics = objective(trial)
                if score > best + 1e-9:
                    best, best_metrics, weights, improved = score, metrics, trial, True
        if not improved:
            break
    return weights, best_metrics
