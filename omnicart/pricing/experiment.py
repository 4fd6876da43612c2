"""Safe price tests: sticky, balanced control/treatment assignment and the measured uplift with a confidence interval.

Units (products, or stores) are assigned by a hash of the experiment name and the unit id, so a unit stays in its
arm across runs, machines and re-deployments, and two experiments are independent. ``assign(..., strata=...)``
balances arms exactly within each stratum (e.g. category) by ranking units by their hash and alternating; plain
``arm`` is the per-unit hash alone (sticky even for units added later). ``uplift`` reports the difference in means
of a per-unit outcome (e.g. profit per product over the test) with a Welch confidence interval, optionally
variance-reduced with a pre-period covariate (CUPED), and ``sample_ratio_mismatch`` checks the arms' sizes.
Treatment prices stay safe because they come from the guarded optimiser (see ``optimiser.violations``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

CONTROL, TREATMENT = "control", "treatment"


def bucket(experiment: str, unit_id: str) -> float:
    """A uniform number in [0, 1) from the salted hash of (experiment, unit)."""
    if not experiment:
        raise ValueError("experiment: a non-empty name is required (it salts the assignment)")
    digest = hashlib.sha256(f"{experiment}\x1f{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm(experiment: str, unit_id: str, treatment_share: float = 0.5) -> str:
    """The unit's arm by its hash alone: sticky for every unit, balanced in expectation."""
    if not 0 < treatment_share < 1:
        raise ValueError(f"treatment_share: must be in (0, 1), got {treatment_share}")
    return TREATMENT if bucket(experiment, str(unit_id)) < treatment_share else CONTROL


def assign(
    experiment: str,
    unit_ids: Sequence[str],
    *,
    strata: Sequence[str] | None = None,
    treatment_share: float = 0.5,
) -> pd.DataFrame:
    """Arms for ``unit_ids``: within each stratum, units ranked by hash take treatment in proportion, so each
    stratum's arms differ by at most one unit; the same units always get the same arms."""
    if not 0 < treatment_share < 1:
        raise ValueError(f"treatment_share: must be in (0, 1), got {treatment_share}")
    units = [str(u) for u in unit_ids]
    if len(set(units)) != len(units):
        raise ValueError("unit_ids: must be unique")
    frame = pd.DataFrame(
        {
            "unit_id": units,
            "stratum": [str(s) for s in strata] if strata is not None else "all",
            "bucket": [bucket(experiment, u) for u in units],
        }
    )
    rank = frame.groupby("stratum")["bucket"].rank(method="first") - 1
    size = frame.groupby("stratum")["unit_id"].transform("size")
    # how many take treatment per stratum; a stratum-level coin (from the hash too) rounds the odd unit either way
    coin = frame["stratum"].map(lambda s: bucket(experiment, f"stratum\x1f{s}"))
    n_treatment = np.floor(size * treatment_share + coin)
    frame["arm"] = np.where(rank < n_treatment, TREATMENT, CONTROL)
    return frame[["unit_id", "stratum", "arm", "bucket"]]


def sample_ratio_mismatch(n_control: int, n_treatment: int, treatment_share: float = 0.5) -> float:
    """p-value of a chi-square test that the arms' sizes match the intended split (small: investigate)."""
    total = n_control + n_treatment
    if total == 0:
        return 1.0
    expected = [total * (1 - treatment_share), total * treatment_share]
    return float(stats.chisquare([n_control, n_treatment], expected).pvalue)


@dataclass(frozen=True)
class Uplift:
    """Treatment minus control in mean outcome per unit, with a (1 − alpha) confidence interval."""

    control_mean: float
    treatment_mean: float
    difference: float
    low: float
    high: float
    relative: float  # difference / control mean
    relative_low: float
    relative_high: float
    p_value: float
    n_control: int
    n_treatment: int
    method: str

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def uplift(
    control: Sequence[float],
    treatment: Sequence[float],
    *,
    alpha: float = 0.05,
    control_pre: Sequence[float] | None = None,
    treatment_pre: Sequence[float] | None = None,
) -> Uplift:
    """Welch's difference in means (unequal variances); with pre-period values, CUPED-adjusted first.

    The relative interval divides by the control mean (delta method for its own uncertainty).
    """
    c, t = np.asarray(control, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    if len(c) < 2 or len(t) < 2:
        raise ValueError("need at least two units per arm")
    method = "welch"
    if control_pre is not None and treatment_pre is not None:
        cp, tp = np.asarray(control_pre, dtype=np.float64), np.asarray(treatment_pre, dtype=np.float64)
        if len(cp) != len(c) or len(tp) != len(t):
            raise ValueError("pre-period values must align with the outcomes of each arm")
        pre, post = np.concatenate([cp, tp]), np.concatenate([c, t])
        var = pre.var(ddof=1)
        theta = np.cov(pre, post, ddof=1)[0, 1] / var if var > 0 else 0.0
        c, t = c - theta * (cp - pre.mean()), t - theta * (tp - pre.mean())
        method = "welch+cuped"
    mc, mt = c.mean(), t.mean()
    vc, vt = c.var(ddof=1) / len(c), t.var(ddof=1) / len(t)
    se = float(np.sqrt(vc + vt))
    diff = float(mt - mc)
    if se > 0:
        dof = (vc + vt) ** 2 / ((vc**2) / (len(c) - 1) + (vt**2) / (len(t) - 1))
        q = float(stats.t.ppf(1 - alpha / 2, dof))
        p = float(2 * stats.t.sf(abs(diff) / se, dof))
    else:
        q, p = 0.0, 0.0 if diff != 0 else 1.0
    low, high = diff - q * se, diff + q * se
    if mc != 0:
        rel = diff / mc
        # delta method: var(mt/mc) ≈ (vt + rel'^2 vc) / mc^2 with rel' = mt/mc
        rel_se = float(np.sqrt(vt + (mt / mc) ** 2 * vc) / abs(mc))
        rel_low, rel_high = rel - q * rel_se, rel + q * rel_se
    else:
        rel, rel_low, rel_high = float("nan"), float("nan"), float("nan")
    return Uplift(
        control_mean=float(mc),
        treatment_mean=float(mt),
        difference=diff,
        low=float(low),
        high=float(high),
        relative=float(rel),
        relative_low=float(rel_low),
        relative_high=float(rel_high),
        p_value=p,
        n_control=len(c),
        n_treatment=len(t),
        method=method,
    )


def report(
    experiment: str,
    outcomes: pd.DataFrame,
    *,
    unit: str = "unit_id",
    metric: str = "profit",
    pre_metric: str | None = None,
    alpha: float = 0.05,
    treatment_share: float = 0.5,
) -> dict[str, Any]:
    """Uplift of ``metric`` per unit between the arms recorded in ``outcomes[arm]`` (or re-derived from the hash),
    with the sample-ratio check."""
    frame = outcomes.copy()
    if "arm" not in frame.columns:
        frame["arm"] = [arm(experiment, str(u), treatment_share) for u in frame[unit]]
    c = frame[frame["arm"] == CONTROL]
    t = frame[frame["arm"] == TREATMENT]
    result = uplift(
        c[metric],
        t[metric],
        alpha=alpha,
        control_pre=c[pre_metric] if pre_metric else None,
        treatment_pre=t[pre_metric] if pre_metric else None,
    )
    return {
        "experiment": experiment,
        "metric": metric,
        **result.to_dict(),
        "significant": result.significant,
        "srm_p_value": sample_ratio_mismatch(len(c), len(t), treatment_share),
    }
