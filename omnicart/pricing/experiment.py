"""Safe price tests: sticky, balanced control/treatment assignment and the measured uplift with a confidence interval.

Units (products, or stores) are assigned by a hash of the experiment name and the unit id, so a unit stays in its
arm across runs, machines and re-deployments, and two experiments are independent. ``assign(..., strata=...)``
balances arms exactly within each stratum (e.g. category) by ranking units by their hash and alternating; plain
``arm`` is the per-unit hash alone (sticky even for units added later). ``uplift`` reports the difference in means
of a per-unit outcome (e.g. profit per product over the test) with a Welch confidence interval, optionally
variance-reduced with a pre-period covariate (CUPED), and ``sample_ratio_mismatch`` checks the arms' sizes.
Treatment prices stay safe because they come from the guarded optimiser (see ``optimiser.violations``). The
statistics themselves live in ``omnicart.experiments.stats``, shared with the model-version experiments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from omnicart.experiments.stats import Uplift, bucket, sample_ratio_mismatch, uplift

__all__ = ["CONTROL", "TREATMENT", "Uplift", "arm", "assign", "bucket", "report", "sample_ratio_mismatch", "uplift"]

CONTROL, TREATMENT = "control", "treatment"


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
