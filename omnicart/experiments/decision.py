"""The daily decision of an experiment: promote, continue, widen the canary, roll back, or stop.

In order, each a reason to stop at once:
1. operational guardrails: the challenger's error/fallback rate or p95 latency worse than the champion's by more
   than the configured margin → roll back;
2. sample-ratio check on the units seen in the current stage (their expected split is the stage's share): a
   mismatch means assignment or logging is broken, so nothing measured can be trusted → roll back;
3. harm: the uplift's z below the Pocock-spending harm boundary (planned to catch ``harm_tolerance`` with
   ``harm_power``) → roll back;
4. efficacy: z above the O'Brien–Fleming-spending boundary (planned for ``mde`` with ``power``) → promote;
5. the planned information reached (or ``max_days``) without either → stop; the champion stays.
Otherwise the canary widens to its next share once the stage ran ``stage_days`` and, for a share of
``guard_share`` or more, once the harm test has its planned information; else it continues.

The uplift is Welch's difference in per-unit means, CUPED-adjusted where the units have a pre-period value. Looks
may come daily at any information fraction: the spending functions keep the false-promotion rate at ``alpha``
and the false-rollback rate at ``harm_alpha`` however many looks there are (``omnicart.experiments.sequential``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import stats

from omnicart.experiments.config import CHALLENGER, CHAMPION, Experiment
from omnicart.experiments.sequential import GroupSequential
from omnicart.experiments.stats import Uplift, sample_ratio_mismatch, uplift

Action = Literal["promote", "rollback", "widen", "continue", "stop"]
# Maximum information over a fixed-horizon design's, so that the sequential test keeps its planned power when
# it looks often (O'Brien–Fleming costs little; Pocock's flat boundary costs about a quarter more).
INFLATION = {"obrien_fleming": 1.03, "pocock": 1.25}


@dataclass(frozen=True)
class Observation:
    """What the daily DAG (or a simulation) measured up to ``day``: one outcome per unit and arm, optionally each
    unit's pre-period value (CUPED), the units seen in the current stage (sample-ratio check), and per variant
    the requests and errors (or fallbacks) and p95 latency."""

    day: dt.date
    champion: np.ndarray
    challenger: np.ndarray
    champion_pre: np.ndarray | None = None
    challenger_pre: np.ndarray | None = None
    stage_units: tuple[int, int] | None = None  # (champion, challenger)
    requests: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # variant → (requests, errors)
    latency_p95_ms: Mapping[str, float] = field(default_factory=dict)  # variant → p95


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    day: dt.date
    share: float  # the challenger's share before the decision
    next_share: float  # after it (0 when the experiment ended)
    uplift: Uplift | None = None
    srm_p_value: float | None = None
    z: float | None = None
    efficacy_boundary: float | None = None
    harm_boundary: float | None = None
    information_fraction: float | None = None
    planned_units: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "uplift"}
        out["day"] = self.day.isoformat()
        out["uplift"] = self.uplift.to_dict() if self.uplift is not None else None
        return out


def planned_information(alpha: float, power: float, effect: float, spending: str | None = None) -> float:
    """1 / SE² at which a one-sided test at ``alpha`` detects an absolute ``effect`` with ``power``: fixed-horizon
    (``spending`` None) or inflated for a sequential design's looks."""
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    return (INFLATION[spending] if spending else 1.0) * (z / effect) ** 2


def _inf_to_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def decide(experiment: Experiment, obs: Observation) -> tuple[Decision, Experiment]:
    """The decision on ``obs`` and the experiment's new state (the looks taken, the stage, the status, the history
    with this decision appended). Pure: writes nothing."""
    cfg, st = experiment.config, experiment.state
    if st.status != "running":
        raise ValueError(f"{cfg.name}: the experiment has ended ({st.status})")
    share = experiment.share
    days_running = (obs.day - st.started).days + 1
    new = replace(st, efficacy_looks=list(st.efficacy_looks), harm_looks=list(st.harm_looks), history=list(st.history))

    def done(action: Action, reason: str, **extra: Any) -> tuple[Decision, Experiment]:
        status = {"promote": "promoted", "rollback": "rolled_back", "stop": "stopped"}.get(action, "running")
        stage = new.stage + 1 if action == "widen" else new.stage
        after = Experiment(cfg, replace(new, status=status, stage=stage))
        if action == "widen":
            after.state.stage_started = obs.day + dt.timedelta(days=1)
        decision = Decision(action, reason, obs.day, share, after.share, planned_units=new.planned_units, **extra)
        after.state.history.append(decision.to_dict())
        return decision, after

    # 1. operational guardrails
    champ_req, champ_err = obs.requests.get(CHAMPION, (0, 0))
    chall_req, chall_err = obs.requests.get(CHALLENGER, (0, 0))
    if chall_req >= cfg.min_units and champ_req > 0:
        gap = chall_err / chall_req - champ_err / champ_req
        if gap > cfg.max_error_increase:
            return done(
                "rollback",
                f"error rate {chall_err / chall_req:.1%} against the champion's {champ_err / champ_req:.1%} "
                f"(+{gap:.1%} > {cfg.max_error_increase:.1%} allowed)",
            )
    p95_champ, p95_chall = obs.latency_p95_ms.get(CHAMPION), obs.latency_p95_ms.get(CHALLENGER)
    if p95_champ and p95_chall and p95_chall > cfg.max_latency_ratio * p95_champ:
        return done(
            "rollback",
            f"p95 latency {p95_chall:.0f} ms against the champion's {p95_champ:.0f} ms (> {cfg.max_latency_ratio:g} ×)",
        )
    # 2. sample-ratio check
    srm = None
    if obs.stage_units is not None and sum(obs.stage_units) > 0:
        srm = sample_ratio_mismatch(obs.stage_units[0], obs.stage_units[1], share)
        if srm < cfg.srm_alpha:
            return done(
                "rollback",
                f"sample ratio mismatch: {obs.stage_units[1]} challenger units of {sum(obs.stage_units)} in this "
                f"stage, {share:.0%} expected (p = {srm:.2g}); assignment or logging is broken, nothing measured "
                "can be trusted",
                srm_p_value=srm,
            )
    n_champ, n_chall = len(obs.champion), len(obs.challenger)
    if min(n_champ, n_chall) < cfg.min_units:
        if days_running >= cfg.max_days:
            return done("stop", f"only {n_chall} challenger units after {days_running} days", srm_p_value=srm)
        return done("continue", f"too few units yet ({n_champ} champion, {n_chall} challenger; {cfg.min_units} needed)")
    pre = obs.champion_pre is not None and obs.challenger_pre is not None
    u = uplift(
        obs.champion,
        obs.challenger,
        alpha=2 * cfg.alpha,
        control_pre=obs.champion_pre if pre else None,
        treatment_pre=obs.challenger_pre if pre else None,
    )
    if new.baseline_mean is None:  # the plan's scale, fixed at the first look with enough units
        new.baseline_mean = float(np.mean(obs.champion))
        new.baseline_sd = float(np.std(obs.champion, ddof=1))
    base = abs(new.baseline_mean or u.control_mean)
    z = u.z
    if not (u.standard_error > 0 and base > 0):
        return done("continue", "no variation in the outcome yet", uplift=u, srm_p_value=srm)
    info = 1 / u.standard_error**2

    t_harm = info / planned_information(cfg.harm_alpha, cfg.harm_power, cfg.harm_tolerance * base, "pocock")
    t_eff = info / planned_information(cfg.alpha, cfg.power, cfg.mde * base, "obrien_fleming")
    # the planned sample size: the units at which the information reaches the plan, at today's per-unit variance
    new.planned_units = int(math.ceil((n_champ + n_chall) / t_eff))
    harm = GroupSequential.replay(cfg.harm_alpha, "pocock", st.harm_looks)
    b_harm = harm.look(t_harm)
    new.harm_looks = list(harm.times)
    efficacy = GroupSequential.replay(cfg.alpha, "obrien_fleming", st.efficacy_looks)
    b_eff = efficacy.look(t_eff)
    new.efficacy_looks = list(efficacy.times)
    stats_ = {
        "uplift": u,
        "srm_p_value": srm,
        "z": float(z),
        "efficacy_boundary": _inf_to_none(b_eff),
        "harm_boundary": _inf_to_none(-b_harm),
        "information_fraction": float(min(t_eff, 1.0)),
    }
    change = f"{u.relative:+.2%} (95% CI {u.relative_low:+.2%} … {u.relative_high:+.2%}, {u.method})"
    # 3. harm, 4. efficacy
    if -z >= b_harm:
        return done("rollback", f"the challenger is worse: {change}; z = {z:.2f} below {-b_harm:.2f}", **stats_)
    if z >= b_eff:
        return done("promote", f"the challenger is better: {change}; z = {z:.2f} above {b_eff:.2f}", **stats_)
    # 5. the planned end
    if t_eff >= 1:
        return done("stop", f"no significant uplift at the planned sample size: {change}", **stats_)
    if days_running >= cfg.max_days:
        return done("stop", f"no decision within {cfg.max_days} days: {change}", **stats_)
    stage_ran = (obs.day - (st.stage_started or st.started)).days + 1
    if new.stage + 1 < len(cfg.stages) and stage_ran >= cfg.stage_days:
        nxt = cfg.stages[new.stage + 1]
        if nxt < cfg.guard_share or t_harm >= 1:
            return done("widen", f"guardrails hold ({change}); widening to {nxt:.0%}", **stats_)
        return done(
            "continue",
            f"guardrails hold ({change}); {nxt:.0%} waits until the harm test has its planned power "
            f"({min(t_harm, 1):.0%} of it)",
            **stats_,
        )
    return done("continue", f"{change}; {min(t_eff, 1):.0%} of the planned information", **stats_)
