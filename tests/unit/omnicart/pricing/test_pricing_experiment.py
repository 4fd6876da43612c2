"""Safe price tests: assignment is sticky, salted and balanced; the uplift interval covers the truth."""

from __future__ import annotations

import numpy as np
import pytest

from omnicart.pricing import experiment
from omnicart.pricing.experiment import CONTROL, TREATMENT, arm, assign, report, sample_ratio_mismatch, uplift

UNITS = [f"P{i:05d}" for i in range(2000)]


def test_hash_assignment_is_sticky_and_independent_of_other_units() -> None:
    first = [arm("spring-prices", u) for u in UNITS]
    again = [arm("spring-prices", u) for u in reversed(UNITS)][::-1]
    assert first == again
    assert arm("spring-prices", UNITS[7]) == first[7]  # alone, it gets the same arm


def test_the_experiment_name_salts_the_assignment() -> None:
    a = np.asarray([arm("exp-a", u) == TREATMENT for u in UNITS])
    b = np.asarray([arm("exp-b", u) == TREATMENT for u in UNITS])
    assert 0.4 < (a == b).mean() < 0.6  # independent splits, not the same one
    with pytest.raises(ValueError, match="experiment"):
        arm("", "P1")


def test_hash_assignment_is_balanced_and_honours_the_share() -> None:
    half = np.mean([arm("balance", u) == TREATMENT for u in UNITS])
    assert abs(half - 0.5) < 0.04
    fifth = np.mean([arm("balance", u, treatment_share=0.2) == TREATMENT for u in UNITS])
    assert abs(fifth - 0.2) < 0.03


def test_stratified_assignment_is_exactly_balanced_and_repeatable() -> None:
    strata = [f"cat{i % 7}" for i in range(len(UNITS))]
    table = assign("stratified", UNITS, strata=strata)
    counts = table.groupby(["stratum", "arm"]).size().unstack(fill_value=0)
    assert ((counts[TREATMENT] - counts[CONTROL]).abs() <= 1).all()
    again = assign("stratified", list(reversed(UNITS)), strata=list(reversed(strata)))
    merged = table.merge(again, on="unit_id")
    assert (merged["arm_x"] == merged["arm_y"]).all()
    with pytest.raises(ValueError, match="unique"):
        assign("stratified", ["a", "a"])


def test_uplift_interval_covers_the_true_effect() -> None:
    rng = np.random.default_rng(3)
    covered, n_runs = 0, 300
    for _ in range(n_runs):
        control = rng.lognormal(3, 0.8, 150)
        treatment = rng.lognormal(3, 0.8, 150) * 1.05
        true = np.exp(3 + 0.8**2 / 2) * 0.05
        result = uplift(control, treatment)
        covered += result.low <= true <= result.high
    assert 0.90 <= covered / n_runs <= 0.99


def test_a_real_effect_is_found_and_no_effect_is_not() -> None:
    rng = np.random.default_rng(5)
    control = rng.normal(100, 20, 400)
    found = uplift(control, rng.normal(110, 20, 400))
    assert found.significant and found.low > 0 and found.relative == pytest.approx(0.1, abs=0.04)
    false_alarms = np.mean([uplift(rng.normal(100, 20, 200), rng.normal(100, 20, 200)).significant for _ in range(300)])
    assert false_alarms < 0.09  # about alpha = 5 %


def test_cuped_narrows_the_interval() -> None:
    rng = np.random.default_rng(9)
    pre_c, pre_t = rng.lognormal(4, 1, 300), rng.lognormal(4, 1, 300)
    post_c = pre_c * rng.normal(1.0, 0.1, 300)
    post_t = pre_t * rng.normal(1.08, 0.1, 300)
    plain = uplift(post_c, post_t)
    cuped = uplift(post_c, post_t, control_pre=pre_c, treatment_pre=pre_t)
    assert cuped.method == "welch+cuped"
    assert (cuped.high - cuped.low) < 0.5 * (plain.high - plain.low)


def test_sample_ratio_mismatch_flags_a_broken_split() -> None:
    assert sample_ratio_mismatch(600, 400) < 1e-6
    assert sample_ratio_mismatch(505, 495) > 0.5


def test_report_rederives_arms_from_the_hash() -> None:
    import pandas as pd

    rng = np.random.default_rng(1)
    outcomes = pd.DataFrame({"unit_id": UNITS[:400], "profit": rng.normal(50, 5, 400)})
    result = report("spring-prices", outcomes)
    assert result["n_control"] + result["n_treatment"] == 400
    assert result["srm_p_value"] > 0.001
    assert {"difference", "low", "high", "relative", "significant"} <= set(result)


def test_bucket_is_uniform() -> None:
    values = np.asarray([experiment.bucket("u", u) for u in UNITS])
    assert values.min() >= 0 and values.max() < 1
    hist, _ = np.histogram(values, bins=10, range=(0, 1))
    assert hist.min() > 150
