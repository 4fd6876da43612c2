"""(ε, δ) of the federated model's Gaussian mechanism, by an exact accountant for Gaussian composition.

Every round all clients take part (no sampling), each sends an update clipped to L2 norm ``C``, and the server adds
N(0, (σ·C)²) to their sum (Flower's ``DifferentialPrivacyClientSideFixedClipping`` adds σ·C/n to their mean of n).
Adding or removing one client (a whole store: client-level DP) moves the sum by at most ``C``, so a round is the
Gaussian mechanism with noise multiplier σ, which is exactly μ-GDP with μ = 1/σ; ``rounds`` of it compose to
μ = √rounds / σ (Dong, Roth & Su, "Gaussian Differential Privacy", 2022, Cor. 3.3). A μ-GDP mechanism is
(ε, δ(ε))-DP for every ε ≥ 0 with δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (ibid., Cor. 2.13; Balle & Wang 2018),
which is tight: no smaller ε holds at that δ. ε is found from δ by a root search on this monotone curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import norm


@dataclass(frozen=True)
class Guarantee:
    """What a DP federated run guarantees, per client (store)."""

    epsilon: float
    delta: float
    mu: float  # Gaussian-DP parameter of the whole run
    noise_multiplier: float
    rounds: int


def delta_for(epsilon: float, mu: float) -> float:
    """δ of a μ-GDP mechanism at ``epsilon``."""
    if mu <= 0:
        return 0.0
    return float(norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2))


def gdp_mu(noise_multiplier: float, rounds: int) -> float:
    if noise_multiplier <= 0 or rounds < 1:
        raise ValueError(f"need a positive noise multiplier and at least one round, got {noise_multiplier}, {rounds}")
    return math.sqrt(rounds) / noise_multiplier


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> Guarantee:
    """The smallest ε at which ``rounds`` Gaussian rounds of multiplier ``noise_multiplier`` are (ε, δ)-DP."""
    if not 0 < delta < 1:
        raise ValueError(f"δ must lie in (0, 1), got {delta}")
    mu = gdp_mu(noise_multiplier, rounds)
    if delta_for(0.0, mu) <= delta:
        eps = 0.0
    else:
        high = 1.0
        while delta_for(high, mu) > delta:
            high *= 2
        eps = float(brentq(lambda e: delta_for(e, mu) - delta, 0.0, high, xtol=1e-10))
    return Guarantee(eps, delta, mu, noise_multiplier, rounds)


def noise_multiplier_for(target_epsilon: float, delta: float, rounds: int) -> float:
    """The smallest σ whose ``rounds`` rounds stay within (target_epsilon, δ)."""
    if target_epsilon <= 0:
        raise ValueError(f"ε must be positive, got {target_epsilon}")
    # δ(ε) rises with μ, so solve for the μ that spends exactly δ at the target ε, then σ = √rounds / μ
    high = 1.0
    while delta_for(target_epsilon, high) < delta:
        high *= 2
    mu = float(brentq(lambda m: delta_for(target_epsilon, m) - delta, 1e-9, high, xtol=1e-12))
    return math.sqrt(rounds) / mu
