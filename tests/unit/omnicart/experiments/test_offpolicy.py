"""The exploration policy's propensities are what it does, and the estimators recover known values."""

from __future__ import annotations

import numpy as np
import pytest

from omnicart.experiments import offpolicy


def test_explore_shows_items_with_the_propensities_it_logs() -> None:
    rng = np.random.default_rng(0)
    ranked, pool = ["a", "b", "c"], ["a", "p", "q", "r", "s"]
    counts: dict[tuple[int, str], int] = {}
    n = 40_000
    for _ in range(n):
        shown = offpolicy.explore(ranked, pool, 0.2, rng)
        assert len({s.item_id for s in shown}) == 3  # never the same item twice
        for k, s in enumerate(shown):
            counts[k, s.item_id] = counts.get((k, s.item_id), 0) + 1
            assert s.propensity == offpolicy.propensity(s.item_id, k, ranked, pool, 0.2)
    # candidates: a, b, c, p, q, r, s
    assert counts[0, "a"] / n == pytest.approx(0.8 + 0.2 / 7, abs=0.01)
    assert counts[2, "q"] / n == pytest.approx(0.2 / 7, abs=0.004)
    assert counts[1, "a"] / n == pytest.approx(0.2 / 7, abs=0.004)
    assert offpolicy.propensity("z", 1, ranked, pool, 0.2) == 0.0
    assert [s.propensity for s in offpolicy.explore(ranked, pool, 0.0, rng)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        offpolicy.explore(ranked, pool, 1.0, rng)


def test_estimators_recover_a_known_value() -> None:
    # two slots, items 0..4 with known purchase probabilities; logging shows a random item per slot uniformly
    rng = np.random.default_rng(1)
    rate = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.05, 0.1, 0.15, 0.2, 0.25]])
    target = np.array([4, 3])  # the target ranker shows item 4 then item 3
    true_value = rate[0, 4] + rate[1, 3]
    n = 200_000
    shown = rng.integers(5, size=(n, 2))
    rewards = (rng.random((n, 2)) < rate[[0, 1], shown]).astype(float)
    weights = (shown == target).astype(float) / 0.2
    slots = np.tile([0, 1], n)
    r, w = rewards.ravel(), weights.ravel()
    assert offpolicy.ips(r, w, n) == pytest.approx(true_value, rel=0.03)
    assert offpolicy.snips(r, w, slots) == pytest.approx(true_value, rel=0.03)
    # a perfect reward model makes DR exact up to the noise of the rewards it corrects
    q_shown = rate[[0, 1], shown].ravel()
    dr = offpolicy.doubly_robust(r, w, q_shown, n * true_value, n)
    assert dr == pytest.approx(true_value, rel=0.02)
    # a wrong reward model is corrected by the weights
    assert offpolicy.doubly_robust(r, w, q_shown * 0 + 0.3, n * 0.6, n) == pytest.approx(true_value, rel=0.05)
    naive = rewards.sum(axis=1).mean()
    assert abs(naive - true_value) > 0.2  # the logged rate says nothing about the target ranker


def test_simulator_preferences_are_a_distribution_over_the_catalog() -> None:
    from omnicart.datasets.simulator import ShopSimulator
    from omnicart.settings import Settings

    sim = ShopSimulator(Settings(sim_customers=200, sim_items=60, sim_days=2))
    prefs = sim.item_preferences()
    assert prefs.shape == (len(sim.customers()), 60)
    assert np.allclose(prefs.sum(axis=1), 1.0) and (prefs.values >= 0).all()
    # a customer's taste is concentrated: the top ten items hold far more than ten sixtieths of it
    assert np.sort(prefs.values, axis=1)[:, -10:].sum(axis=1).mean() > 0.4
