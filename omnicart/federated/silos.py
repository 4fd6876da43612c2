"""One shard per data owner: the federated demand model's features, computed by each owner from its own rows only.

Every feature of a row comes from earlier rows of the same series (lags, the regular price) or from the row itself
(price, calendar), and a series lives in one store, so a store computes all of them alone. The only cross-row
statistic, the product's usual price, is the store's own median. Centres and scales are fixed in code rather than
fitted on pooled data (which no party holds): rough unit scales of log-demand features, so that every client builds
the same columns and an update's norm (which DP clips) means the same everywhere. Owner-level constants (a store's
demographics) are left out: within one owner they duplicate the intercept, and averaging the owners' optima would
then mix arbitrary splits between the two.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart.federated import linear
from omnicart.pricing import features as pf
from omnicart.schemas import C

# (feature, centre, scale): the model's inputs are (value - centre) / scale, NaN → 0 with a missing flag where noted.
NUMERIC: tuple[tuple[str, float, float], ...] = (
    (pf.PRICE_INDEX, 0.0, 0.1),
    (pf.PREV_PRICE_INDEX, 0.0, 0.1),
    (pf.PRICE_VS_PRODUCT, 0.0, 0.1),
    (pf.LOG_REF_PRICE, 1.7, 0.5),
    (pf.LOG_PRODUCT_PRICE, 1.7, 0.5),
    (pf.LAG1, 1.4, 1.0),
    (pf.LAG_GAP, 1.5, 3.0),
    (pf.ROLL4, 1.4, 1.0),
    (pf.ROLL13, 1.4, 1.0),
    (pf.N_PREV, 39.0, 17.5),
)
MISSING_FLAGS: tuple[str, ...] = (pf.LOG_REF_PRICE, pf.LAG1, pf.ROLL4, pf.ROLL13)  # absent at a series' start
WEEKS_PER_YEAR = 52.18
COLUMNS: tuple[str, ...] = (
    *(name for name, _, _ in NUMERIC),
    *(f"{name}_missing" for name in MISSING_FLAGS),
    pf.HOLIDAY,
    "week_sin",
    "week_cos",
    "intercept",
)


def own_price_elasticity(weights: np.ndarray) -> float:
    """d log units / d log price of the model: every price feature moves one for one with the log price."""
    return float(sum(weights[COLUMNS.index(name)] / scale for name, _, scale in NUMERIC if name in pf.PRICE_FEATURES))


@dataclass(frozen=True)
class Silo:
    """One owner's training and test rows as the model sees them (nothing here is sent anywhere)."""

    owner: str
    A_train: np.ndarray
    y_train: np.ndarray
    A_test: np.ndarray
    y_test: np.ndarray

    def save(self, path: Path) -> Path:
        f32 = np.float32  # the features are float32 already; halves the shards
        np.savez(
            path,
            owner=self.owner,
            A_train=self.A_train.astype(f32),
            y_train=self.y_train.astype(f32),
            A_test=self.A_test.astype(f32),
            y_test=self.y_test.astype(f32),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> Silo:
        with np.load(path) as z:
            return cls(str(z["owner"]), z["A_train"], z["y_train"], z["A_test"], z["y_test"])


def design(frame: pd.DataFrame, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and log-unit targets of one owner's rows; ``train`` marks the rows its statistics may use."""
    if not train.any():
        raise ValueError("an owner needs training rows to take part")
    spec = pf.fit_spec(frame[train])
    feats = pf.build(frame, spec)
    column = {name: feats.X[:, i].astype(np.float64) for i, name in enumerate(spec.names)}
    parts = []
    for name, centre, scale in NUMERIC:
        parts.append((column[name] - centre) / scale)
    parts += [(~np.isfinite(column[name])).astype(np.float64) for name in MISSING_FLAGS]
    n = len(frame)
    parts.append(column[pf.HOLIDAY] if pf.HOLIDAY in column else np.zeros(n))
    if pf.WEEK in column:
        angle = 2 * np.pi * column[pf.WEEK] / WEEKS_PER_YEAR
        parts += [np.sin(angle), np.cos(angle)]
    else:  # an integer period axis has no calendar
        parts += [np.zeros(n), np.zeros(n)]
    parts.append(np.ones(n))
    A = np.column_stack(parts)
    return np.where(np.isfinite(A), A, 0.0), feats.y


def split_by_owner(frame: pd.DataFrame, split: Any, owner: str = C.store_id) -> list[Silo]:
    """One silo per owner (sorted): train = its periods before ``split``; test = later rows of series seen in train.

    Owners without training rows are left out (they have nothing to learn from); owners without test rows still
    train. Rows whose target is unknown are dropped from both sides."""
    if owner not in frame.columns:
        raise ValueError(f"federated training needs an owner column {owner!r}; the table has {list(frame.columns)}")
    silos = []
    for key, rows in frame.groupby(frame[owner].astype(str), sort=True):
        rows = rows.reset_index(drop=True)
        train = (rows[C.period] < split).to_numpy()
        if not train.any():
            continue
        seen = set(rows.loc[train, C.series_id])
        test = ~train & rows[C.series_id].isin(seen).to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            A, y = design(rows, train)
        known = np.isfinite(y)
        silos.append(Silo(str(key), A[train & known], y[train & known], A[test & known], y[test & known]))
    if not silos:
        raise ValueError("no owner has training rows before the split")
    return silos


def owner_errors(silo: Silo, weights: np.ndarray) -> tuple[float, int]:
    """What an owner reports of a model on its held-out rows: the sum of squared errors and the row count."""
    if not len(silo.y_test):
        return 0.0, 0
    error = linear.predict(silo.A_test, weights) - silo.y_test
    return float(error @ error), len(error)


def score(silos: list[Silo], weights: np.ndarray | Callable[[Silo], np.ndarray]) -> dict[str, float]:
    """RMSE of log units over every owner's held-out rows, and the mean over owners of each one's own RMSE, from
    the owners' error sums alone. ``weights``: one model for all, or each owner's own (a function of its silo)."""
    weights_of = weights if callable(weights) else lambda _silo: weights
    reports = [owner_errors(silo, weights_of(silo)) for silo in silos]
    rows = sum(n for _, n in reports)
    if rows == 0:
        raise ValueError("no owner has held-out rows to evaluate on: hold out more weeks or wait for more data")
    per_owner = [math.sqrt(sse / n) for sse, n in reports if n]
    return {
        "rmse": math.sqrt(sum(sse for sse, _ in reports) / rows),
        "rmse_owner_mean": float(np.mean(per_owner)),
        "test_rows": float(rows),
        "owners_tested": float(len(per_owner)),
    }
