"""The accountant's ε matches the DP setting: round trips, tightness, and no looser than textbook bounds."""

from __future__ import annotations

import math

import pytest

from benchmarks import federated as bench
from omnicart.federated import accountant


@pytest.mark.parametrize(("epsilon", "delta", "rounds"), [(8.0, 1e-5, 1), (4.0, 1e-5, 3), (1.0, 1e-6, 20)])
def test_noise_sized_for_a_target_spends_exactly_that_epsilon(epsilon, delta, rounds):
    sigma = accountant.noise_multiplier_for(epsilon, delta, rounds)
    g = accountant.epsilon(sigma, rounds, delta)
    assert g.epsilon == pytest.approx(epsilon, abs=1e-6)
    assert g.mu == pytest.approx(math.sqrt(rounds) / sigma)
    # tight: at that ε the curve spends exactly δ, and a slightly smaller ε would need a larger δ
    assert accountant.delta_for(g.epsilon, g.mu) == pytest.approx(delta, rel=1e-4)
    assert accountant.delta_for(g.epsilon - 0.05, g.mu) > delta


def test_more_rounds_cost_more_and_more_noise_costs_less():
    base = accountant.epsilon(2.0, 4, 1e-5).epsilon
    assert accountant.epsilon(2.0, 8, 1e-5).epsilon > base
    assert accountant.epsilon(4.0, 4, 1e-5).epsilon < base


def test_never_looser_than_the_classical_gaussian_mechanism_or_zcdp():
    # Dwork & Roth Thm A.1: σ = √(2 ln(1.25/δ)) / ε gives (ε, δ)-DP for ε < 1, one round
    eps, delta = 0.5, 1e-5
    sigma = math.sqrt(2 * math.log(1.25 / delta)) / eps
    assert accountant.epsilon(sigma, 1, delta).epsilon <= eps
    # zCDP: T Gaussian rounds are ρ = T / (2σ²)-zCDP, hence (ρ + 2√(ρ ln(1/δ)), δ)-DP (Bun & Steinke 2016)
    sigma, rounds = 1.5, 10
    rho = rounds / (2 * sigma**2)
    assert accountant.epsilon(sigma, rounds, delta).epsilon <= rho + 2 * math.sqrt(rho * math.log(1 / delta))


def test_the_benchmark_setting_stays_within_the_protocol():
    dp = bench.DP_CONFIG.dp
    sigma = accountant.noise_multiplier_for(dp.epsilon, dp.delta, bench.DP_CONFIG.rounds)
    g = accountant.epsilon(sigma, bench.DP_CONFIG.rounds, dp.delta)
    assert g.epsilon <= bench.MAX_EPSILON and g.delta <= bench.MAX_DELTA


@pytest.mark.parametrize(("sigma", "rounds", "delta"), [(0.0, 3, 1e-5), (1.0, 0, 1e-5), (1.0, 3, 0.0)])
def test_bad_settings_are_refused(sigma, rounds, delta):
    with pytest.raises(ValueError):
        accountant.epsilon(sigma, rounds, delta)
