"""Off-policy evaluation of rankers from logged recommendations: the exploration policy serving logs propensities
with, and the IPS, SNIPS and doubly robust estimators of a new ranker's purchases per visit.

Exploration policy ("ε-slate"): with probability 1 − ε a visit is shown the ranked list as ranked; with probability
ε it is shown K distinct items drawn uniformly, in random order, from the candidates (the ranked list and the
exploration pool: the ranker's next candidates). So the item j in slot k was shown with propensity
(1 − ε)·[j is the ranked item of slot k] + ε / |candidates|: every candidate has some chance in every slot, which
is what lets another ranker of the same candidates be evaluated. Small ε (default 0.1) costs little.

The value of a ranker is its expected purchases of recommended items per visit, summed over slots (a purchase in
slot k depends on the item and the slot, the position-based model). With one logged visit i and slot k, shown item
a_ik, reward r_ik, logging propensity p_ik, the target ranker's item b_ik and its weight w_ik = 1[a_ik = b_ik] / p_ik:

- IPS:   V = (1/N) Σ_i Σ_k w_ik r_ik — unbiased, high variance when propensities are small;
- SNIPS: V = Σ_k (Σ_i w_ik r_ik / Σ_i w_ik) — each slot normalised by its weights (small bias, much less variance);
- DR:    V = (1/N) Σ_i Σ_k [q(i, b_ik, k) + w_ik (r_ik − q(i, a_ik, k))] — a reward model q corrected by IPS on its
         residuals: unbiased when either q or the propensities are right, and low variance when q is good.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shown:
    """One slot of an answer: the item shown, its propensity, and whether the answer was explored."""

    item_id: str
    propensity: float
    explored: bool


def _candidates(ranked: Sequence[str], pool: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*ranked, *pool]))


def explore(ranked: Sequence[str], pool: Sequence[str], epsilon: float, rng: np.random.Generator) -> list[Shown]:
    """The ε-slate exploration of ``ranked`` with the candidates ``ranked`` + ``pool`` (see the module docstring)."""
    if not 0 <= epsilon < 1:
        raise ValueError(f"epsilon: must be in [0, 1), got {epsilon}")
    candidates = _candidates(ranked, pool)
    explored = epsilon > 0 and rng.random() < epsilon
    shown = [candidates[i] for i in rng.permutation(len(candidates))[: len(ranked)]] if explored else list(ranked)
    return [Shown(item, propensity(item, k, ranked, pool, epsilon), explored) for k, item in enumerate(shown)]


def propensity(item: str, slot: int, ranked: Sequence[str], pool: Sequence[str], epsilon: float) -> float:
    """The probability that ``explore`` shows ``item`` in ``slot`` (0-based) for this ranked list and pool: what a
    target ranker's item would have had, and what the estimators divide by."""
    candidates = _candidates(ranked, pool)
    uniform = epsilon / len(candidates) if item in candidates else 0.0
    return (1 - epsilon) * (ranked[slot] == item) + uniform


def _check(*arrays: np.ndarray) -> None:
    if len({len(a) for a in arrays}) != 1:
        raise ValueError("logged arrays must have one entry per logged slot")


def ips(rewards: np.ndarray, weights: np.ndarray, n_visits: int) -> float:
    """Inverse propensity scoring: Σ w r / visits (``weights`` = target probability / logging propensity)."""
    _check(rewards, weights)
    return float(np.sum(weights * rewards) / n_visits)


def snips(rewards: np.ndarray, weights: np.ndarray, slots: np.ndarray) -> float:
    """Self-normalised IPS, normalised per slot and summed over slots."""
    _check(rewards, weights, slots)
    value = 0.0
    for k in np.unique(slots):
        m = slots == k
        total = weights[m].sum()
        if total > 0:
            value += float(np.sum(weights[m] * rewards[m]) / total)
    return value


def doubly_robust(
    rewards: np.ndarray, weights: np.ndarray, q_shown: np.ndarray, q_target_total: float, n_visits: int
) -> float:
    """Doubly robust: the reward model's value of the target ranker (``q_target_total`` = Σ over visits and slots
    of q(visit, target item, slot)) plus IPS on the model's residuals at the shown items."""
    _check(rewards, weights, q_shown)
    return float((q_target_total + np.sum(weights * (rewards - q_shown))) / n_visits)
