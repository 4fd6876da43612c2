"""Differential privacy for released aggregates: counts, sums and means by segment, channel and day.

Noise comes from OpenDP's Laplace mechanism (a maintained library whose samplers are exact, immune to the
floating-point attacks on naive ``numpy`` Laplace noise). Each release spends ε from a per-dataset budget kept by
a small accountant in ``<home>/privacy/dp_budget.json``; a query that would overspend is refused before any noise
is drawn or anything is returned.

Privacy unit: one person (``person`` column). Each person's rows are capped at ``max_rows_per_person`` (kept in a
seeded, deterministic order) and values clipped to ``bounds``, so one person changes the whole vector of cells by at
most Δ₁ = cap (counts) or cap·max(|lo|, |hi|) (sums): Laplace noise of scale Δ₁/ε over all cells at once (its
standard deviation is √2·Δ₁/ε). Group keys must be declared (``keys``): cells nobody falls in are released too
(as noise), so which groups exist is not itself a leak.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import itertools
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from omnicart.schemas import C
from omnicart.settings import Settings

Statistic = Literal["count", "sum", "mean"]


class BudgetExceededError(RuntimeError):
    """The query would spend more ε than the dataset has left; nothing was released."""


@dataclass(frozen=True)
class Release:
    """A released table: the group keys and the noisy statistic per cell, with what it cost."""

    table: pd.DataFrame
    statistic: Statistic
    epsilon: float
    scale: float  # Laplace scale of the noise on each cell (for a mean: of its sum)
    sensitivity: float
    remaining: float  # ε left for the dataset after this release


class BudgetAccountant:
    """Per-dataset ε budgets and every spend, in one JSON file (sequential composition: spends add up)."""

    def __init__(self, path: Path, default_budget: float = 1.0) -> None:
        if default_budget <= 0:
            raise ValueError("a privacy budget must be positive")
        self.path = Path(path)
        self.default_budget = default_budget

    @classmethod
    def for_settings(cls, settings: Settings, default_budget: float = 1.0) -> BudgetAccountant:
        return cls(settings.home_dir / "privacy" / "dp_budget.json", default_budget)

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _write(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".budget-", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def set_budget(self, dataset: str, epsilon: float) -> None:
        """Declare a dataset's total ε (it can't be set below what was already spent)."""
        if epsilon <= 0:
            raise ValueError("a privacy budget must be positive")
        with self._locked():
            state = self._read()
            entry = state.setdefault(dataset, {"budget": epsilon, "spent": 0.0, "queries": []})
            if epsilon < entry["spent"]:
                raise ValueError(f"{dataset}: {entry['spent']} ε already spent; the budget can't be {epsilon}")
            entry["budget"] = epsilon
            self._write(state)

    def budget(self, dataset: str) -> float:
        return float(self._read().get(dataset, {}).get("budget", self.default_budget))

    def spent(self, dataset: str) -> float:
        return float(self._read().get(dataset, {}).get("spent", 0.0))

    def remaining(self, dataset: str) -> float:
        return max(self.budget(dataset) - self.spent(dataset), 0.0)

    def spend(self, dataset: str, epsilon: float, query: str) -> float:
        """Record a spend of ``epsilon``, or raise ``BudgetExceededError``; returns what is left."""
        if not epsilon > 0 or not math.isfinite(epsilon):
            raise ValueError(f"ε must be a positive number, not {epsilon}")
        with self._locked():
            state = self._read()
            entry = state.setdefault(dataset, {"budget": self.default_budget, "spent": 0.0, "queries": []})
            left = entry["budget"] - entry["spent"]
            if epsilon > left + 1e-12:
                raise BudgetExceededError(
                    f"dataset {dataset!r}: query {query!r} needs ε={epsilon:g} but only {max(left, 0):g} of "
                    f"{entry['budget']:g} is left; refusing (raise the budget deliberately, or ask less)"
                )
            entry["spent"] = entry["spent"] + epsilon
            entry["queries"].append({"query": query, "epsilon": epsilon, "at": dt.datetime.now(dt.UTC).isoformat()})
            self._write(state)
            return entry["budget"] - entry["spent"]


def laplace(values: np.ndarray, scale: float) -> np.ndarray:
    """``values`` plus Laplace noise of the given scale, each cell independently (OpenDP's sampler)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    values = np.asarray(values, dtype=float)
    if not len(values):
        return values
    mechanism = dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float), scale=float(scale)
    )
    return np.asarray(mechanism(values.tolist()), dtype=float)


def release(
    frame: pd.DataFrame,
    *,
    dataset: str,
    accountant: BudgetAccountant,
    epsilon: float,
    statistic: Statistic = "count",
    keys: Mapping[str, Sequence[Any]] | None = None,
    value: str | None = None,
    bounds: tuple[float, float] | None = None,
    person: str = C.customer_id,
    max_rows_per_person: int = 10,
    seed: int = 0,
) -> Release:
    """A differentially private count, sum or mean of ``value`` per cell of ``keys`` (e.g. segment × channel × day).

    Spends ``epsilon`` from the dataset's budget first (refused with ``BudgetExceededError`` when it would overspend).
    A mean spends half on the sum and half on the count and divides (post-processing costs nothing).
    """
    keys = dict(keys or {})
    if statistic != "count" and (value is None or bounds is None):
        raise ValueError(f"a DP {statistic} needs the value column and its clipping bounds")
    if max_rows_per_person < 1:
        raise ValueError("max_rows_per_person must be at least 1")
    missing = [c for c in [*keys, person, *([value] if value else [])] if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the frame")
    accountant.spend(dataset, epsilon, _describe(statistic, value, keys, epsilon))

    rows = _cap(frame, person, max_rows_per_person, seed)
    cells = _cells(keys)
    if keys:
        cell_of = rows[list(keys)].merge(cells.reset_index(), how="left", on=list(keys))["index"]
        inside = cell_of.notna().to_numpy()  # rows outside the declared keys are dropped, never released
        rows, cell = rows[inside], cell_of[inside].to_numpy(dtype=np.int64)
    else:
        cell = np.zeros(len(rows), dtype=np.int64)
    n_cells = len(cells)
    counts = np.bincount(cell, minlength=n_cells).astype(float)

    if statistic == "count":
        sensitivity = float(max_rows_per_person)
        scale = sensitivity / epsilon
        noisy = laplace(counts, scale)
    else:
        lo, hi = bounds
        clipped = rows[value].astype(float).clip(lo, hi).fillna(0.0).to_numpy()
        sums = np.bincount(cell, weights=clipped, minlength=n_cells)
        sensitivity = float(max_rows_per_person * max(abs(lo), abs(hi)))
        if statistic == "sum":
            scale = sensitivity / epsilon
            noisy = laplace(sums, scale)
        else:  # mean = noisy sum / noisy count, half of ε each
            scale = sensitivity / (epsilon / 2)
            noisy_sum = laplace(sums, scale)
            noisy_count = laplace(counts, max_rows_per_person / (epsilon / 2))
            noisy = np.clip(noisy_sum / np.maximum(noisy_count, 1.0), lo, hi)
    table = cells.copy()
    table[statistic] = noisy
    return Release(table, statistic, epsilon, scale, sensitivity, accountant.remaining(dataset))


def _describe(statistic: str, value: str | None, keys: Mapping[str, Any], epsilon: float) -> str:
    by = ", ".join(keys) or "all"
    return f"{statistic}({value or '*'}) by {by}"


def _cells(keys: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    if not keys:
        return pd.DataFrame(index=[0])
    combos = list(itertools.product(*keys.values()))
    return pd.DataFrame(combos, columns=list(keys))


def _cap(frame: pd.DataFrame, person: str, cap: int, seed: int) -> pd.DataFrame:
    """At most ``cap`` rows per person, chosen in a seeded random order (so no row is favoured by position)."""
    order = np.random.default_rng(seed).permutation(len(frame))
    shuffled = frame.iloc[order]
    rank = shuffled.groupby(person, dropna=False).cumcount()
    return shuffled[rank.to_numpy() < cap]
