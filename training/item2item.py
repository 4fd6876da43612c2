"""Item-to-item models over a binary user×item matrix: EASE (closed form) and basket co-occurrence.

EASE (Steck, 2019): B = I − P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹, diag(B) = 0; a user's scores are x_u·B.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
