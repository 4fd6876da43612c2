"""Looking every day without inflating false positives: Lan–DeMets alpha spending on a group-sequential design.

An experiment is looked at whenever the daily DAG runs, at information fractions t = I / I_max (I = 1 / SE², I_max
the information the planned sample size gives) that nobody fixes in advance. A spending function α(t) says how much
of the one-sided false-positive rate α may be used up by time t; each look's boundary b_k is set so that

    P(Z_k ≥ b_k and no earlier Z_j ≥ b_j | no effect) = α(t_k) − α(t_{k−1}),

computed exactly (to grid precision) by integrating the Brownian motion S(t) = Z √t over the region the earlier
looks did not stop in. Whatever the number and timing of looks, the probability of ever crossing under no effect
is α(t_last) ≤ α. O'Brien–Fleming-type spending keeps almost all of α for the planned end (early stops only for
large effects); Pocock-type spends evenly (for harm guardrails, which must react early).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import optimize, signal, special, stats

Spending = Literal["obrien_fleming", "pocock"]
GRID_STEP = 0.01  # on S = Z√t; the boundaries come out to about 1e-3 in z
GRID_HALF_WIDTH = 9.0
_REPLAY_CACHE = 2048
_REPLAYS: dict[tuple, GroupSequential] = {}


def spent(alpha: float, t: float, kind: Spending) -> float:
    """α(t): the one-sided false-positive rate a design may have used up at information fraction ``t``."""
    t = min(max(t, 0.0), 1.0)
    if t == 0:
        return 0.0
    if kind == "obrien_fleming":
        return float(2 * (1 - stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(t))))
    if kind == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"unknown spending function {kind!r}")


@dataclass
class GroupSequential:
    """An upper boundary for a z statistic, set one look at a time (``look``). Keeps the density of S(t) over
    the paths that have not crossed yet, so each new look costs one convolution."""

    alpha: float
    spending: Spending = "obrien_fleming"
    times: list[float] = field(default_factory=list)
    boundaries: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha: must be in (0, 0.5), got {self.alpha}")
        self._grid = np.arange(-GRID_HALF_WIDTH, GRID_HALF_WIDTH + GRID_STEP / 2, GRID_STEP)
        self._density: np.ndarray | None = None  # of S at the last look, zero where it crossed
        self._t_last = 0.0
        replay = list(zip(self.times, self.boundaries, strict=True))
        self.times, self.boundaries = [], []
        for t, _ in replay:
            self.look(t)

    @classmethod
    def replay(cls, alpha: float, spending: Spending, times: Sequence[float]) -> GroupSequential:
        """The design after looks at ``times`` (the boundaries are recomputed; they depend on the times alone).
        Recent designs are kept, so a daily replay costs one look, not all of them again."""
        key = (alpha, spending, tuple(times))
        cached = _REPLAYS.get(key)
        if cached is None:
            cached = cls(alpha, spending) if not times else cls.replay(alpha, spending, times[:-1]).copy()
            if times:
                cached.look(times[-1])
            if len(_REPLAYS) >= _REPLAY_CACHE:
                _REPLAYS.pop(next(iter(_REPLAYS)))
            _REPLAYS[key] = cached
        return cached.copy()

    def copy(self) -> GroupSequential:
        twin = GroupSequential(self.alpha, self.spending)
        twin.times, twin.boundaries = list(self.times), list(self.boundaries)
        twin._density, twin._t_last = self._density, self._t_last  # never written in place
        return twin

    @property
    def spent(self) -> float:
        return spent(self.alpha, self._t_last, self.spending)

    def look(self, t: float) -> float:
        """The boundary for a look at information fraction ``t`` (capped at 1, the planned end); ``inf`` when the
        information did not grow since the last look (nothing may be spent on it)."""
        t = min(float(t), 1.0)
        if t <= self._t_last + 1e-9:
            return math.inf
        budget = spent(self.alpha, t, self.spending) - spent(self.alpha, self._t_last, self.spending)
        dt = t - self._t_last
        s = self._grid
        if self._density is None:
            prior = None
            tail: Callable[[float], float] = lambda c: float(stats.norm.sf(c / math.sqrt(t)))  # noqa: E731
        else:
            prior = self._density

            alive = prior > 1e-300
            mass, at = prior[alive], s[alive]

            def tail(c: float) -> float:
                return float(np.dot(mass, special.ndtr((at - c) / math.sqrt(dt))) * GRID_STEP)

        if budget <= 1e-15:
            c = math.inf
        else:
            hi = GRID_HALF_WIDTH * 0.95
            c = hi if tail(hi) > budget else optimize.brentq(lambda x: tail(x) - budget, -hi, hi, xtol=1e-6)
        # the density at t, then the paths that crossed removed
        if prior is None:
            density = stats.norm.pdf(s / math.sqrt(t)) / math.sqrt(t)
        else:
            kernel = stats.norm.pdf(
                np.arange(-GRID_HALF_WIDTH, GRID_HALF_WIDTH + GRID_STEP / 2, GRID_STEP) / math.sqrt(dt)
            )
            kernel = kernel / math.sqrt(dt) * GRID_STEP
            density = signal.fftconvolve(prior, kernel, mode="same")
        density = np.where(s < c, density, 0.0)
        self._density, self._t_last = density, t
        boundary = c / math.sqrt(t)
        self.times.append(t)
        self.boundaries.append(boundary)
        return boundary
