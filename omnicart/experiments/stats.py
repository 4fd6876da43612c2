"""The statistics every online test shares: sticky hash buckets, Welch's difference in means with a confidence
interval (CUPED-adjusted where a pre-period exists), the sample-ratio check, and the planned sample size.

``uplift`` takes per-unit values; ``welch`` works from each arm's count, mean and variance, so a simulation or a
database can summarise first. Price tests (``omnicart.pricing.experiment``) and model-version experiments
(``omnicart.experiments.decision``) both use these.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


def bucket(experiment: str, unit_id: str) -> float:
    """A uniform number in [0, 1) from the salted hash of (experiment, unit)."""
    if not experiment:
        raise ValueError("experiment: a non-empty name is required (it salts the assignment)")
    digest = hashlib.sha256(f"{experiment}\x1f{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sample_ratio_mismatch(n_control: int, n_treatment: int, treatment_share: float = 0.5) -> float:
    """p-value of a chi-square test that the arms' sizes match the intended split (small: investigate)."""
    if not 0 < treatment_share < 1:
        raise ValueError(f"treatment_share: must be in (0, 1), got {treatment_share}")
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
    standard_error: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def z(self) -> float:
        """The difference in standard errors (the test statistic sequential boundaries are set on)."""
        if not self.standard_error > 0:
            return 0.0 if self.difference == 0 else math.copysign(math.inf, self.difference)
        return self.difference / self.standard_error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def welch(
    n_control: int,
    mean_control: float,
    var_control: float,
    n_treatment: int,
    mean_treatment: float,
    var_treatment: float,
    *,
    alpha: float = 0.05,
    method: str = "welch",
) -> Uplift:
    """Welch's difference in means (unequal variances) from each arm's count, mean and (ddof=1) variance.

    The relative interval divides by the control mean (delta method for its own uncertainty)."""
    if n_control < 2 or n_treatment < 2:
        raise ValueError("need at least two units per arm")
    mc, mt = float(mean_control), float(mean_treatment)
    vc, vt = var_control / n_control, var_treatment / n_treatment
    se = float(np.sqrt(vc + vt))
    diff = mt - mc
    if se > 0:
        dof = (vc + vt) ** 2 / ((vc**2) / (n_control - 1) + (vt**2) / (n_treatment - 1))
        q = float(stats.t.ppf(1 - alpha / 2, dof))
        p = float(2 * stats.t.sf(abs(diff) / se, dof))
    else:
        q, p = 0.0, 0.0 if diff != 0 else 1.0
    if mc != 0:
        rel = diff / mc
        # delta method: var(mt/mc) ≈ (vt + (mt/mc)^2 vc) / mc^2
        rel_se = float(np.sqrt(vt + (mt / mc) ** 2 * vc) / abs(mc))
        rel_low, rel_high = rel - q * rel_se, rel + q * rel_se
    else:
        rel, rel_low, rel_high = float("nan"), float("nan"), float("nan")
    return Uplift(
        control_mean=mc,
        treatment_mean=mt,
        difference=diff,
        low=diff - q * se,
        high=diff + q * se,
        relative=float(rel),
        relative_low=float(rel_low),
        relative_high=float(rel_high),
        p_value=p,
        n_control=int(n_control),
        n_treatment=int(n_treatment),
        method=method,
        standard_error=se,
    )


def cuped(
    control: np.ndarray, treatment: np.ndarray, control_pre: np.ndarray, treatment_pre: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both arms' outcomes minus θ × (pre-period value − its pooled mean), θ = cov(pre, post) / var(pre): the same
    expected difference with the variance the pre-period explains removed."""
    if len(control_pre) != len(control) or len(treatment_pre) != len(treatment):
        raise ValueError("pre-period values must align with the outcomes of each arm")
    pre, post = np.concatenate([control_pre, treatment_pre]), np.concatenate([control, treatment])
    var = pre.var(ddof=1)
    theta = np.cov(pre, post, ddof=1)[0, 1] / var if var > 0 else 0.0
    centre = pre.mean()
    return control - theta * (control_pre - centre), treatment - theta * (treatment_pre - centre)


def uplift(
    control: Sequence[float],
    treatment: Sequence[float],
    *,
    alpha: float = 0.05,
    control_pre: Sequence[float] | None = None,
    treatment_pre: Sequence[float] | None = None,
) -> Uplift:
    """Welch's difference in per-unit means; with pre-period values, CUPED-adjusted first."""
    c, t = np.asarray(control, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    if len(c) < 2 or len(t) < 2:
        raise ValueError("need at least two units per arm")
    method = "welch"
    if control_pre is not None and treatment_pre is not None:
        cp, tp = np.asarray(control_pre, dtype=np.float64), np.asarray(treatment_pre, dtype=np.float64)
        c, t = cuped(c, t, cp, tp)
        method = "welch+cuped"
    return welch(len(c), c.mean(), c.var(ddof=1), len(t), t.mean(), t.var(ddof=1), alpha=alpha, method=method)


def planned_units(
    sd: float, baseline: float, relative_effect: float, *, alpha: float, power: float, share: float = 0.5
) -> int:
    """Units in all (both arms) a fixed-horizon, one-sided test at ``alpha`` needs to detect ``relative_effect``
    × ``baseline`` with ``power``, when a ``share`` of units gets the treatment and the per-unit sd is ``sd``."""
    if not (sd > 0 and baseline != 0 and relative_effect > 0):
        raise ValueError("planned_units: needs sd > 0, a non-zero baseline and a positive effect")
    if not 0 < share < 1:
        raise ValueError(f"share: must be in (0, 1), got {share}")
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    delta = relative_effect * abs(baseline)
    return int(math.ceil((z * sd / delta) ** 2 * (1 / share + 1 / (1 - share))))
