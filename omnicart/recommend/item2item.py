"""Item-to-item models over a binary user×item matrix: EASE (closed form) and basket co-occurrence.

EASE (Steck, 2019): B = I − P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹, diag(B) = 0; a user's scores are x_u·B.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omnicart.schemas import C


def ease(x: sp.spmatrix | np.ndarray, lam: float) -> np.ndarray:
    """The EASE item×item weight matrix (float32, zero diagonal) of a binary user×item matrix."""
    x = sp.csr_matrix(x, dtype=np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = p / -np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def cooccurrence(baskets: sp.spmatrix) -> np.ndarray:
    """Cosine co-occurrence of items in the same basket (basket×item binary matrix), zero diagonal, float32."""
    o = sp.csr_matrix(baskets, dtype=np.float32)
    o.data[:] = 1.0
    c = (o.T @ o).toarray()
    counts = np.diag(c).copy()
    np.fill_diagonal(c, 0.0)
    norm = np.sqrt(np.maximum(counts, 1.0))
    return (c / norm[:, None] / norm[None, :]).astype(np.float32)


def scores(x: sp.spmatrix | np.ndarray, weights: np.ndarray, batch: int = 2048) -> np.ndarray:
    """User×item scores x·W, in row batches to bound memory."""
    x = sp.csr_matrix(x, dtype=np.float32)
    out = np.empty((x.shape[0], weights.shape[1]), dtype=np.float32)
    for start in range(0, x.shape[0], batch):
        out[start : start + batch] = x[start : start + batch] @ weights
    return out


def tune_ease_lambda(
    events: pd.DataFrame, now: pd.Timestamp, grid: tuple[float, ...], days: int = 30
) -> tuple[float, dict[float, float]]:
    """λ of EASE with the best novel NDCG@10 on the last ``days`` before ``now``, fitted on the events before them.

    ``events``: customer_id, item_id, event_timestamp (UTC). Returns the best λ and the score of every λ tried."""
    from omnicart.metrics import evaluate_rankings

    cut = now - pd.Timedelta(days=days)
    inner = events[events[C.event_timestamp] < cut]
    window = events[(events[C.event_timestamp] >= cut) & (events[C.event_timestamp] < now)]
    items = np.array(sorted(inner[C.item_id].unique()), dtype=object)
    users = np.array(sorted(inner[C.customer_id].unique()))
    x = binary_matrix(inner, users, items)
    owned = {u: set(g) for u, g in inner.groupby(C.customer_id)[C.item_id]}
    window = window[window[C.item_id].isin(set(items)) & window[C.customer_id].isin(set(users))]
    truth = {u: set(g) - owned[u] for u, g in window.groupby(C.customer_id)[C.item_id]}
    truth = {u: t for u, t in truth.items() if t}
    if not truth:
        return float(grid[len(grid) // 2]), {}
    rows = np.searchsorted(users, np.array(list(truth)))
    xt = x[rows]
    results = {}
    for lam in grid:
        s = scores(xt, ease(x, lam))
        s[xt.toarray() > 0] = -np.inf
        top = np.argsort(-s, axis=1, kind="stable")[:, :10]
        rankings = {u: items[top[n]].tolist() for n, u in enumerate(truth)}
        results[float(lam)] = evaluate_rankings(rankings, truth, ks=(10,))["ndcg@10"]
    best = max(results, key=lambda lam: (results[lam], -lam))
    return best, results


def binary_matrix(events: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """users × items 0/1 matrix of who bought what (rows and columns in the given orders)."""
    u = pd.Index(users).get_indexer(events[C.customer_id])
    i = pd.Index(items).get_indexer(events[C.item_id])
    keep = (u >= 0) & (i >= 0)
    x = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (u[keep], i[keep])), shape=(len(users), len(items)))
    x.data[:] = 1.0
    return x
