"""Differential privacy: the noise has the scale the sensitivity and ε promise, and the budget is enforced."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from omnicart.privacy.dp import BudgetAccountant, BudgetExceededError, laplace, release
from omnicart.schemas import C


@pytest.fixture
def accountant(tmp_path) -> BudgetAccountant:
    return BudgetAccountant(tmp_path / "privacy" / "dp_budget.json", default_budget=1.0)


def _events(n_people: int = 50, rows_each: int = 4) -> pd.DataFrame:
    people = np.repeat([f"C{i}" for i in range(n_people)], rows_each)
    return pd.DataFrame(
        {
            C.customer_id: people,
            C.channel: np.resize(["web", "app"], len(people)),
            C.segment: np.resize(["family", "premium", "bargain"], len(people)),
            C.price: np.resize([5.0, 15.0, 500.0], len(people)),
        }
    )


def test_laplace_noise_has_std_sqrt2_times_scale():
    sensitivity, epsilon = 3.0, 0.5
    scale = sensitivity / epsilon
    draws = laplace(np.zeros(20_000), scale)
    assert abs(draws.mean()) < 0.15 * scale
    assert draws.std() == pytest.approx(math.sqrt(2) * scale, rel=0.05)


def test_released_counts_are_unbiased_with_the_declared_scale(accountant):
    accountant.set_budget("events", 1000.0)
    frame = _events()
    keys = {C.channel: ["web", "app", "store"], C.segment: ["family", "premium", "bargain"]}
    errors = []
    for _ in range(200):
        r = release(frame, dataset="events", accountant=accountant, epsilon=2.0, keys=keys, max_rows_per_person=4)
        truth = frame.groupby([C.channel, C.segment]).size()
        exact = r.table.set_index([C.channel, C.segment]).join(truth.rename("n"))["n"].fillna(0)
        errors.append((r.table.set_index([C.channel, C.segment])["count"] - exact).to_numpy())
    errors = np.concatenate(errors)
    assert r.sensitivity == 4 and r.scale == pytest.approx(2.0)
    assert len(r.table) == 9  # every declared cell is released, including the empty "store" ones
    assert errors.std() == pytest.approx(math.sqrt(2) * 2.0, rel=0.08)
    assert abs(errors.mean()) < 0.2


def test_sums_are_clipped_and_means_stay_in_bounds(accountant):
    accountant.set_budget("events", 100.0)
    r = release(
        _events(),
        dataset="events",
        accountant=accountant,
        epsilon=50.0,
        statistic="sum",
        value=C.price,
        bounds=(0.0, 20.0),
        keys={C.channel: ["web", "app"]},
        max_rows_per_person=4,
    )
    # Clipped at 20, a 500.0 price counts as 20 (so one person moves a sum by at most 4 × 20).
    frame = _events()
    clipped = frame[C.price].clip(0, 20).groupby(frame[C.channel]).sum()
    assert r.sensitivity == 80.0 and r.scale == pytest.approx(1.6)
    assert r.table.set_index(C.channel)["sum"].to_dict() == pytest.approx(clipped.to_dict(), abs=20)
    m = release(
        _events(),
        dataset="events",
        accountant=accountant,
        epsilon=10.0,
        statistic="mean",
        value=C.price,
        bounds=(0.0, 20.0),
        max_rows_per_person=4,
    )
    assert 0.0 <= m.table["mean"].iloc[0] <= 20.0


def test_budget_is_refused_beyond_epsilon_and_persisted(accountant, tmp_path):
    frame = _events()
    release(frame, dataset="shop", accountant=accountant, epsilon=0.6)
    with pytest.raises(BudgetExceededError, match=r"'shop'.*needs ε=0.5 but only 0.4"):
        release(frame, dataset="shop", accountant=accountant, epsilon=0.5)
    # A fresh accountant on the same file sees the spend; another dataset has its own budget.
    again = BudgetAccountant(tmp_path / "privacy" / "dp_budget.json", default_budget=1.0)
    assert again.spent("shop") == pytest.approx(0.6) and again.remaining("other") == 1.0
    release(frame, dataset="shop", accountant=again, epsilon=0.4)
    assert again.remaining("shop") == pytest.approx(0.0)
    with pytest.raises(BudgetExceededError):
        release(frame, dataset="shop", accountant=again, epsilon=0.01)
    with pytest.raises(ValueError):
        again.set_budget("shop", 0.5)  # below what was spent
