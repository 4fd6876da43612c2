"""Known answers of the shared test statistics and of the group-sequential boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from omnicart.experiments.sequential import GroupSequential, spent
from omnicart.experiments.stats import planned_units, uplift, welch


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 2, 300), rng.normal(10.5, 3, 200)
    u = uplift(a, b)
    assert u.p_value == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-9)
    assert u.difference == pytest.approx(b.mean() - a.mean())
    assert u.z == pytest.approx(u.difference / np.sqrt(a.var(ddof=1) / 300 + b.var(ddof=1) / 200))
    same = welch(300, a.mean(), a.var(ddof=1), 200, b.mean(), b.var(ddof=1))
    assert same.low == pytest.approx(u.low) and same.high == pytest.approx(u.high)


def test_cuped_narrows_the_interval_and_keeps_the_effect() -> None:
    rng = np.random.default_rng(2)
    pre = rng.normal(0, 1, 4000)
    post = pre + rng.normal(0, 0.3, 4000)
    post[2000:] += 0.1
    plain = uplift(post[:2000], post[2000:])
    adjusted = uplift(post[:2000], post[2000:], control_pre=pre[:2000], treatment_pre=pre[2000:])
    assert adjusted.method == "welch+cuped"
    assert adjusted.high - adjusted.low < 0.4 * (plain.high - plain.low)
    assert adjusted.low < 0.1 < adjusted.high


def test_planned_units_known_answer() -> None:
    # (z_0.975 + z_0.8)^2 × (sd / delta)^2 × (1/0.5 + 1/0.5) = 2.8016^2 × 100 × 4
    assert planned_units(1.0, 1.0, 0.1, alpha=0.025, power=0.8) == 3140
    with pytest.raises(ValueError):
        planned_units(0.0, 1.0, 0.1, alpha=0.025, power=0.8)


def test_obrien_fleming_boundaries_match_the_textbook() -> None:
    # Lan–DeMets O'Brien–Fleming spending, one-sided 0.025, five equal looks (Jennison & Turnbull, table 7.6)
    design = GroupSequential(0.025, "obrien_fleming")
    got = [design.look(t) for t in (0.2, 0.4, 0.6, 0.8, 1.0)]
    assert got == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=0.01)
    assert design.spent == pytest.approx(0.025)
    assert GroupSequential(0.025).look(1.0) == pytest.approx(1.96, abs=0.005)


def test_repeated_looks_keep_the_false_positive_rate() -> None:
    rng = np.random.default_rng(3)
    times = np.array([0.05, 0.11, 0.2, 0.33, 0.41, 0.58, 0.7, 0.86, 0.95, 1.0])
    steps = rng.normal(size=(100_000, len(times))) * np.sqrt(np.diff(times, prepend=0.0))
    z = steps.cumsum(axis=1) / np.sqrt(times)
    naive = (z >= stats.norm.ppf(0.975)).any(axis=1).mean()
    for kind in ("obrien_fleming", "pocock"):
        design = GroupSequential(0.025, kind)
        bounds = np.array([design.look(t) for t in times])
        crossed = (z >= bounds).any(axis=1).mean()
        assert crossed == pytest.approx(0.025, abs=0.003)
    assert naive > 0.06  # what looking daily at a fixed 1.96 would do


def test_replay_and_stalled_information() -> None:
    design = GroupSequential(0.025)
    first = [design.look(t) for t in (0.3, 0.6)]
    assert design.look(0.6) == float("inf")  # no new information: nothing may be spent
    again = GroupSequential.replay(0.025, "obrien_fleming", design.times)
    assert again.boundaries == pytest.approx(first)
    assert spent(0.025, 2.0, "pocock") == pytest.approx(0.025)
