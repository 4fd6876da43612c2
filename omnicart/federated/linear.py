"""The federated demand model: log units linear in the pricing features, and one client's local update.

Why linear and not the pricing family's boosted trees: trees do not average (two stores' trees have no mean), while
a linear model's weights do, exactly; its update is a few dozen numbers, so secure aggregation stays cheap and the
DP noise needed per round is small next to the signal. The coefficient of ``price_index`` is the own-price
elasticity, as in the log-log baseline. Numpy only: this module runs inside the Flower clients' own environment.
"""

from __future__ import annotations

import numpy as np

# The local solve's ridge on every weight but the intercept (the last column), for stores whose features barely move.
RIDGE = 1e-3


def local_update(
    A: np.ndarray, y: np.ndarray, global_w: np.ndarray, prox: float = 1e-3, ridge: float = RIDGE
) -> np.ndarray:
    """The client's new weights: argmin_w mean((A w - y)²) + ridge·|w[:-1]|² + prox·|w - global_w|².

    A least-squares model's local optimum is one linear solve (d × d), so a client finishes its local training
    exactly instead of by SGD steps; the proximal term keeps it near the global model when its own data are thin
    (FedProx), and averaging the clients' optima gives the federated model (FedAvg)."""
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if A.ndim != 2 or len(A) != len(y) or len(y) == 0:
        raise ValueError(f"need a non-empty (n, d) design and n targets, got {A.shape} and {y.shape}")
    d = A.shape[1]
    penalty = np.full(d, ridge + prox)
    penalty[-1] = prox
    H = A.T @ A / len(y) + np.diag(penalty)
    return np.linalg.solve(H, A.T @ y / len(y) + prox * np.asarray(global_w, dtype=np.float64))


def fit(A: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Least squares with the same ridge, on one table (the centralised and the local-only baselines)."""
    return local_update(A, y, np.zeros(np.asarray(A).shape[1]), prox=0.0, ridge=ridge)


def predict(A: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.asarray(A, dtype=np.float64) @ np.asarray(w, dtype=np.float64)
