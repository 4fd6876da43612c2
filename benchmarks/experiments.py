"""Online experiments, protocol "simulated online tests" (PROTOCOLS.md), on the shop simulator's ground truth.

The world: the simulator's customers and catalog, and its truth of taste (``ShopSimulator.item_preferences``). A
customer shown item i in slot k buys it with probability β_k ρ(c, i), ρ = 1 − exp(−λ · n_items · pref(c, i)), and a
visit converts when any shown item is bought. The champion ranks by a noisy estimate of taste; a challenger with a
true uplift u shows, on each visit, the champion's list or (with the probability that makes its expected
conversion rate exactly (1 + u) × the champion's) the list of a better ranker (taste itself) or a worse one
(popularity), so every challenger's true effect is known exactly.

"online": per scenario (uplift +3 %, 0 %, −3 %, −5 %) many seeded runs of a daily experiment: each day customers
visit, the challenger's customers are those whose hash bucket is below the current share, the outcome per customer
is purchases per visit under its current variant with the pre-period's rate as CUPED covariate, and a policy looks
and decides. Side by side on the same random numbers: omnicart (canary stages, guardrails, Lan–DeMets spending),
daily peeking at a fixed |z| ≥ 1.96 on a 50/50 split, and a fixed-horizon 50/50 test with one look at the planned
sample size (no canary).

"offpolicy": logged visits under the champion with the ε-slate exploration policy
(``omnicart.experiments.offpolicy``; candidates = the champion's top K and its next 20), and a new ranker (a less
noisy re-ranking of the same candidates) whose true purchases per visit is computed exactly. Estimates from the
logs: the naive logged rate, the direct method (a reward model by slot and candidate rank), IPS, SNIPS and doubly
robust.

Gates: promoted within the planned sample size in ≥ 90 % of +3 % runs; promoted in ≤ 5 % of 0 % and of −3 % runs;
rolled back before 25 % of traffic in ≥ 90 % of −5 % runs; doubly robust estimate within 10 % of the true value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
from rich.progress import track

from benchmarks.runner import BenchOptions, BenchResult, NotAvailable, gate
from omnicart.datasets.simulator import ShopSimulator
from omnicart.experiments import config as xconfig
from omnicart.experiments import offpolicy
from omnicart.experiments.decision import Observation, decide, planned_information
from omnicart.experiments.stats import uplift
from omnicart.settings import Settings

CUSTOMERS, ITEMS, K = 60_000, 120, 10
PROFILES = 5_000  # simulated shoppers whose tastes the customers take (the simulator's ids run to 10k)
LAMBDA = 0.05
SLOT_WEIGHT = 0.3 / (1 + np.arange(K) / 2)  # β_k: position bias
CHAMPION_NOISE = 1.5  # sd of the champion's error on log taste
VISIT_P = 0.4  # a customer's chance to visit (and see recommendations) on a day
PRE_DAYS = 14
MAX_DAYS = 60
SCENARIOS = (0.03, 0.0, -0.03, -0.05)
RUNS, QUICK_RUNS = 100, 20
START = dt.date(2026, 3, 1)
GUARD_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class World:
    rho: np.ndarray  # customers × items: ρ(c, i)
    champion: np.ndarray  # customers × (K + pool): the champion's candidates, best first
    p_champion: np.ndarray  # per customer: conversion probability of a visit under the champion
    p_better: np.ndarray
    p_worse: np.ndarray


def conversion(rho: np.ndarray, slates: np.ndarray) -> np.ndarray:
    """P(a visit buys at least one shown item) per customer, for ``slates`` (customers × K item indices)."""
    shown = np.take_along_axis(rho, slates, axis=1) * SLOT_WEIGHT[: slates.shape[1]]
    return 1 - np.prod(1 - shown, axis=1)


def build_world(seed: int, customers: int = CUSTOMERS, pool: int = 20) -> World:
    sim = ShopSimulator(Settings(seed=seed, sim_customers=PROFILES, sim_items=ITEMS, sim_days=2))
    rng = np.random.default_rng([seed, 1])
    profiles = sim.item_preferences().to_numpy()
    prefs = profiles[rng.integers(len(profiles), size=customers)]  # each customer has one simulated shopper's taste
    rho = 1 - np.exp(-LAMBDA * prefs.shape[1] * prefs)
    noisy = np.log(prefs + 1e-6) + CHAMPION_NOISE * rng.normal(size=prefs.shape)
    champion = np.argsort(-noisy, axis=1)[:, : K + pool]
    oracle = np.argsort(-rho, axis=1)[:, :K]
    popular = np.broadcast_to(np.argsort(-prefs.mean(axis=0))[:K], oracle.shape)
    return World(rho, champion, conversion(rho, champion[:, :K]), conversion(rho, oracle), conversion(rho, popular))


def challenger_rates(world: World, uplift: float) -> tuple[np.ndarray, float]:
    """Per-customer conversion of the challenger with true relative uplift ``uplift`` (customer-averaged), and the
    mixing probability that gives it."""
    base = world.p_champion.mean()
    other = world.p_better if uplift >= 0 else world.p_worse
    f = uplift * base / (other.mean() - base) if uplift else 0.0
    if not 0 <= f <= 1:
        raise ValueError(f"uplift {uplift:+.1%} is out of this world's reach")
    return (1 - f) * world.p_champion + f * other, f


# --- the online protocol --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    outcome: str  # promote, rollback, stop
    days: int
    max_share: float  # the largest share the challenger reached
    share_at_end: float
    units: int  # challenger + champion units at the decision
    planned_units: int | None  # the units at which the planned information is reached (projected at the decision)
    information: float | None = None  # fraction of the planned information at the decision


def _rates(vis: np.ndarray, buy: np.ndarray, pre: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = mask & (vis > 0)
    return buy[m] / vis[m], pre[m]


def simulate(world: World, p1: np.ndarray, seed: int, policy: str) -> Run:
    """One experiment under ``policy`` (omnicart, peeking, fixed); the same random numbers for every policy."""
    n = len(p1)
    p0 = world.p_champion
    rng = np.random.default_rng([seed, 7])
    buckets = rng.random(n)  # uniform and independent per customer, as the salted hash is
    pre_vis = rng.binomial(PRE_DAYS, VISIT_P, n)
    pre_buy = rng.binomial(pre_vis, p0)
    pre = np.where(pre_vis > 0, pre_buy / np.maximum(pre_vis, 1), pre_buy.sum() / max(pre_vis.sum(), 1))
    exp = xconfig.start("recommend", "2", START, guard_share=GUARD_SHARE, max_days=MAX_DAYS)
    cfg = exp.config
    vis, buy = np.zeros(n), np.zeros(n)
    seen = np.zeros(n, dtype=bool)
    prev_chall = np.zeros(n, dtype=bool)
    max_share, base = 0.0, None
    for d in range(MAX_DAYS):
        day = START + dt.timedelta(days=d)
        share = exp.share if policy == "omnicart" else 0.5
        max_share = max(max_share, share)
        chall = buckets < share
        switched = chall & ~prev_chall
        vis[switched], buy[switched] = 0, 0  # a unit's outcome counts its visits under its current variant
        if d > 0 and exp.state.stage_started == day:
            seen[:] = False
        prev_chall = chall
        day_rng = np.random.default_rng([seed, 11, d])
        visit = day_rng.random(n) < VISIT_P
        bought = visit & (day_rng.random(n) < np.where(chall, p1, p0))
        vis += visit
        buy += bought
        seen |= visit
        c_out, c_pre = _rates(vis, buy, pre, ~chall)
        t_out, t_pre = _rates(vis, buy, pre, chall)
        units = len(c_out) + len(t_out)
        if policy == "omnicart":
            stage_units = (int((seen & ~chall).sum()), int((seen & chall).sum()))
            decision, exp = decide(exp, Observation(day, c_out, t_out, c_pre, t_pre, stage_units=stage_units))
            if decision.action in ("promote", "rollback", "stop"):
                t = decision.information_fraction
                return Run(decision.action, d + 1, max_share, share, units, exp.state.planned_units, t)
            continue
        # the baselines: a 50/50 split from day one, the same CUPED uplift and the same planned information
        if min(len(c_out), len(t_out)) < cfg.min_units:
            continue
        u = uplift(c_out, t_out, control_pre=c_pre, treatment_pre=t_pre)
        base = base if base is not None else abs(float(c_out.mean()))
        done = 1 / u.standard_error**2 >= planned_information(cfg.alpha, cfg.power, cfg.mde * base)
        if policy == "peeking" and abs(u.z) >= 1.96:
            return Run("promote" if u.z > 0 else "rollback", d + 1, max_share, share, units, None)
        if done:
            return Run("promote" if u.z >= 1.96 else "stop", d + 1, max_share, share, units, None)
    return Run("stop", MAX_DAYS, max_share, exp.share, 0, exp.state.planned_units)


def online(seed: int, runs: int) -> tuple[list[dict[str, Any]], dict[str, dict[float, list[Run]]], dict]:
    world = build_world(seed)
    policies = ("omnicart", "peeking", "fixed")
    results: dict[str, dict[float, list[Run]]] = {p: {u: [] for u in SCENARIOS} for p in policies}
    truth = {}
    jobs = [(u, r) for u in SCENARIOS for r in range(runs)]
    for effect, r in track(jobs, description="simulated experiments", transient=True):
        p1, mix = challenger_rates(world, effect)
        truth[effect] = {"true_uplift": float(p1.mean() / world.p_champion.mean() - 1), "mix": mix}
        for policy in policies:
            results[policy][effect].append(simulate(world, p1, seed * 100_003 + r, policy))
    rows = []
    for policy in policies:
        row: dict[str, Any] = {"model": policy}
        for effect in SCENARIOS:
            runs_ = results[policy][effect]
            tag = f"{effect * 100:+.0f}%"
            row[f"promoted {tag}"] = float(np.mean([x.outcome == "promote" for x in runs_]))
            row[f"rolled back {tag}"] = float(np.mean([x.outcome == "rollback" for x in runs_]))
            row[f"days {tag}"] = float(np.mean([x.days for x in runs_]))
            row[f"mean share {tag}"] = float(np.mean([x.max_share for x in runs_]))
        worse = results[policy][SCENARIOS[-1]]
        row["rolled back before 25% (-5%)"] = float(
            np.mean([x.outcome == "rollback" and x.max_share < GUARD_SHARE for x in worse])
        )
        better = results[policy][SCENARIOS[0]]
        within = [
            x.outcome == "promote"
            and (x.information is None or x.information <= 1.0)
            and (x.planned_units is None or x.units <= x.planned_units)
            for x in better
        ]
        row["promoted within plan (+3%)"] = float(np.mean(within))
        rows.append(row)
    meta = {
        "model": "world",
        "customers": CUSTOMERS,
        "runs_per_scenario": runs,
        "champion_conversion": float(world.p_champion.mean()),
        **{f"true uplift {u * 100:+.0f}%": round(truth[u]["true_uplift"], 6) for u in SCENARIOS},
        "planned units (median, 0% runs)": float(np.median([x.planned_units or 0 for x in results["omnicart"][0.0]])),
    }
    return rows, results, meta


# --- the off-policy protocol ----------------------------------------------------------------------------------
def off_policy(seed: int, visits: int = 300_000, epsilon: float = 0.1, pool: int = 20) -> list[dict[str, Any]]:
    world = build_world(seed, pool=pool)
    rng = np.random.default_rng([seed, 23])
    cands = world.champion  # customers × (K + pool): ranked = first K, exploration pool = the rest
    n_cust = len(cands)
    # the new ranker: a less noisy re-ranking of the same candidates
    new_scores = np.log(np.take_along_axis(world.rho, cands, axis=1)) + 0.5 * rng.normal(size=cands.shape)
    target_rank = np.argsort(-new_scores, axis=1)[:, :K]  # candidate ranks the new ranker shows in slots 0..K-1
    target_items = np.take_along_axis(cands, target_rank, axis=1)
    target_q = np.take_along_axis(world.rho, target_items, axis=1) * SLOT_WEIGHT
    true_value = float(target_q.sum(axis=1).mean())  # customers visit uniformly: the per-visit mean
    # logging: each visit shows the champion's list, or with probability ε K distinct candidates in random order
    who = rng.integers(n_cust, size=visits)
    n_cands = K + pool
    explored = np.broadcast_to((rng.random(visits) < epsilon)[:, None], (visits, K))
    perm = np.argsort(rng.random((visits, n_cands)), axis=1)[:, :K]
    shown_rank = np.where(explored, perm, np.arange(K))
    propensity = (1 - epsilon) * (shown_rank == np.arange(K)) + epsilon / n_cands
    shown_items = np.take_along_axis(cands[who], shown_rank, axis=1)
    reward = (rng.random((visits, K)) < world.rho[who[:, None], shown_items] * SLOT_WEIGHT).astype(float)
    weights = (shown_rank == target_rank[who]) / propensity
    slots = np.broadcast_to(np.arange(K), (visits, K))
    # reward model: q(slot, candidate rank) = β̂_slot × ĝ(rank); slot effects from the explored visits (every
    # candidate equally likely in every slot), rank effects from what each rank earned in the slot it was shown in
    pool_rate = np.array([reward[explored[:, k], k].mean() for k in range(K)])
    beta = pool_rate / pool_rate[0]
    g = np.zeros(K + pool)
    for r in range(K + pool):
        m = shown_rank == r
        g[r] = (reward[m] / beta[np.broadcast_to(np.arange(K), m.shape)[m]]).mean() if m.any() else 0.0
    q_shown = beta[slots] * g[shown_rank]
    q_target = (beta[None, :] * g[target_rank[who]]).sum()
    estimates = {
        "naive (logged rate)": float(reward.sum(axis=1).mean()),
        "direct method": float(q_target / visits),
        "ips": offpolicy.ips(reward.ravel(), weights.ravel(), visits),
        "snips": offpolicy.snips(reward.ravel(), weights.ravel(), slots.ravel()),
        "doubly robust": offpolicy.doubly_robust(reward.ravel(), weights.ravel(), q_shown.ravel(), q_target, visits),
    }
    return [
        {"model": name, "estimate": value, "true": true_value, "relative_error": abs(value / true_value - 1)}
        for name, value in estimates.items()
    ] + [
        {
            "model": "logging",
            "visits": visits,
            "epsilon": epsilon,
            "pool": pool,
            "champion_value": float((np.take_along_axis(world.rho, cands[:, :K], 1) * SLOT_WEIGHT).sum(1).mean()),
        }
    ]


def run(settings: Settings, options: BenchOptions) -> BenchResult:
    if options.dataset or options.input:
        raise NotAvailable("experiments are scored on the simulator's ground truth only: use --seed")
    protocol = options.protocol or "online+offpolicy"
    if protocol not in ("online", "offpolicy", "online+offpolicy"):
        raise NotAvailable(f"--protocol: online, offpolicy or online+offpolicy, not {protocol!r}")
    rows: list[dict[str, Any]] = []
    gates: list[dict[str, Any]] = []
    if "online" in protocol:
        online_rows, _, meta = online(options.seed, QUICK_RUNS if options.quick else RUNS)
        rows += online_rows + [meta]
        ours = online_rows[0]
        gates += [
            gate("promoted within plan (+3%)", ours["promoted within plan (+3%)"], 1.0, 0.90),
            gate("promoted +0%", ours["promoted +0%"], 1.0, 0.05, higher_is_better=False),
            gate("promoted -3%", ours["promoted -3%"], 1.0, 0.05, higher_is_better=False),
            gate("rolled back before 25% (-5%)", ours["rolled back before 25% (-5%)"], 1.0, 0.90),
        ]
    if "offpolicy" in protocol:
        off_rows = off_policy(options.seed)
        rows += off_rows
        dr = next(r for r in off_rows if r["model"] == "doubly robust")
        gates.append(gate("doubly robust relative error", dr["relative_error"], 1.0, 0.10, higher_is_better=False))
    name = f"simulator(seed={options.seed}, customers={CUSTOMERS}, items={ITEMS})"
    return name, f"simulated online tests ({protocol})", rows, gates
