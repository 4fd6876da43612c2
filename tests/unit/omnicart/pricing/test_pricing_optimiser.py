"""The guarded optimiser: finds the optimum of a known demand curve, and holds every guardrail whatever the demand
function returns (huge elasticities, NaN, negative or infinite units, contradictory inputs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from omnicart.pricing.optimiser import (
    COMPETITOR_BAND,
    INVENTORY,
    MARGIN_FLOOR,
    MAX_CHANGE,
    MAX_PRICE,
    MIN_PRICE,
    PRICE_BOUNDS,
    PRICE_ENDING,
    PricingItem,
    PricingPolicy,
    optimise,
    violations,
)

WIDE = PricingPolicy(max_change=None, competitor_band=None, endings=(), search_range=5.0)


def constant_elasticity(elasticity: float, scale: float = 100.0, ref: float = 10.0):
    def demand(grids: list[np.ndarray]) -> list[np.ndarray]:
        return [scale * (g / ref) ** elasticity for g in grids]

    return demand


def test_finds_the_profit_optimum_of_a_known_curve() -> None:
    # constant elasticity e: the optimum is cost · e / (1 + e) = 10 · 2 = 20
    item = PricingItem("p", current_price=15.0, cost=10.0)
    [s] = optimise([item], constant_elasticity(-2.0), WIDE)
    assert s.price == pytest.approx(20.0, abs=0.02)
    assert s.elasticity == pytest.approx(-2.0, abs=1e-6)
    assert s.suggested.profit > s.current.profit


def test_revenue_objective_prices_lower_than_profit() -> None:
    item = PricingItem("p", current_price=15.0, cost=10.0)
    policy = PricingPolicy(objective="revenue", max_change=None, competitor_band=None, endings=(), min_margin=0.0)
    [s] = optimise([item], constant_elasticity(-2.0), policy)
    assert s.price == pytest.approx(10.0, abs=0.02)  # revenue falls with price when e < -1: down to the floor
    assert MARGIN_FLOOR in s.binding


def test_max_change_and_ending_bind_when_the_optimum_is_far() -> None:
    item = PricingItem("p", current_price=10.99, cost=5.0)  # optimum 5 · 1.2 / 0.2 = 30
    [s] = optimise([item], constant_elasticity(-1.2), PricingPolicy(competitor_band=None))
    assert s.price == 11.99 and MAX_CHANGE in s.binding  # 10.99 × 1.1 = 12.089 → the highest .99 below it
    assert s.price <= 10.99 * 1.1 + 1e-9
    assert not violations(item, s, PricingPolicy(competitor_band=None))


def test_cost_above_the_competitor_band_keeps_the_floor() -> None:
    item = PricingItem("p", current_price=10.0, cost=20.0, competitor_price=8.0)
    policy = PricingPolicy()
    [s] = optimise([item], constant_elasticity(-3.0), policy)
    assert s.price >= 20.0 * (1 + policy.min_margin)
    assert COMPETITOR_BAND in s.relaxed and MAX_CHANGE in s.relaxed
    assert not violations(item, s, policy)


def test_huge_elasticity_cannot_push_below_the_floor() -> None:
    item = PricingItem("p", current_price=12.99, cost=12.0, competitor_price=13.0)
    [s] = optimise([item], constant_elasticity(-80.0, scale=1e6), PricingPolicy())
    assert s.price >= 12.0 * 1.05 - 1e-9
    assert not violations(item, s, PricingPolicy())


@pytest.mark.parametrize("bad", [np.nan, -5.0, np.inf, -np.inf])
def test_unusable_predictions_fall_back_to_a_guarded_current_price(bad: float) -> None:
    item = PricingItem("p", current_price=20.49, cost=10.0, competitor_price=21.0)

    def broken(grids: list[np.ndarray]) -> list[np.ndarray]:
        return [np.full(len(g), bad) for g in grids]

    [s] = optimise([item], broken, PricingPolicy())
    assert s.fallback is not None
    assert abs(s.price - 20.49) <= 1.0  # the allowed price nearest today's (with a .99 ending)
    assert not violations(item, s, PricingPolicy())


def test_wrong_length_predictions_are_treated_as_unusable() -> None:
    item = PricingItem("p", current_price=20.0, cost=10.0)
    [s] = optimise([item], lambda grids: [np.ones(3) for _ in grids], PricingPolicy())
    assert s.fallback is not None and not violations(item, s, PricingPolicy())


def test_low_stock_raises_the_price_to_ration_it() -> None:
    item = PricingItem("p", current_price=10.0, cost=4.0, inventory=60.0)
    policy = PricingPolicy(max_change=0.3, competitor_band=None)
    [s] = optimise([item], constant_elasticity(-2.5, scale=100.0, ref=10.0), policy)
    assert s.suggested.units <= 60.0
    assert s.price > 10.0 and INVENTORY in s.binding
    assert not violations(item, s, policy)


def test_request_bounds_hold_and_contradictions_are_rejected() -> None:
    item = PricingItem("p", current_price=10.0, cost=1.0, min_price=9.5, max_price=10.5)
    [s] = optimise([item], constant_elasticity(-1.1), PricingPolicy(competitor_band=None))
    assert 9.5 <= s.price <= 10.5 and PRICE_BOUNDS in s.binding
    with pytest.raises(ValueError, match="min_price"):
        optimise([PricingItem("p", 10.0, min_price=12.0, max_price=11.0)], constant_elasticity(-2), PricingPolicy())
    with pytest.raises(ValueError, match="cost"):
        optimise([PricingItem("p", 10.0, cost=-1.0)], constant_elasticity(-2), PricingPolicy())
    with pytest.raises(ValueError, match="current_price"):
        optimise([PricingItem("p", float("nan"))], constant_elasticity(-2), PricingPolicy())


def test_endings_hold_unless_no_allowed_price_has_one() -> None:
    policy = PricingPolicy(competitor_band=None)
    items = [PricingItem(str(i), current_price=p, cost=p / 3) for i, p in enumerate([4.99, 7.99, 15.0, 49.99, 120.0])]
    for item, s in zip(items, optimise(items, constant_elasticity(-1.8), policy), strict=True):
        assert round(s.price % 1, 2) == 0.99
        assert not violations(item, s, policy)
    # a range of 4.33..4.40 holds no .99 price: the ending is relaxed, and said so
    item = PricingItem("q", current_price=4.35, cost=4.0, min_price=4.33, max_price=4.40)
    [s] = optimise([item], constant_elasticity(-1.5), policy)
    assert PRICE_ENDING in s.relaxed and 4.33 <= s.price <= 4.40
    assert not violations(item, s, policy)


def test_random_adversarial_inputs_never_break_a_guardrail() -> None:
    rng = np.random.default_rng(42)
    policies = [
        PricingPolicy(),
        PricingPolicy(objective="revenue", endings=(0.49, 0.99)),
        PricingPolicy(max_change=0.02, competitor_band=0.05, min_margin=0.3),
        PricingPolicy(max_change=None, competitor_band=None, endings=()),
    ]
    checked = 0
    for trial in range(250):
        policy = policies[trial % len(policies)]
        current = float(np.exp(rng.uniform(np.log(0.05), np.log(500))))
        cost = float(current * rng.uniform(0.0, 3.0)) if rng.random() < 0.9 else None
        comp = float(current * np.exp(rng.normal(0, 0.6))) if rng.random() < 0.7 else None
        low = float(current * rng.uniform(0.3, 1.2)) if rng.random() < 0.3 else None
        high = float((low or current) * rng.uniform(1.0, 2.0)) if rng.random() < 0.3 else None
        inventory = float(rng.uniform(0, 50)) if rng.random() < 0.3 else None
        item = PricingItem("p", current, cost, None, comp, inventory, low, high)
        e, scale = -float(np.exp(rng.uniform(np.log(0.05), np.log(200)))), float(np.exp(rng.uniform(-5, 12)))
        kind = trial % 5

        def demand(grids: list[np.ndarray], e=e, scale=scale, kind=kind, current=current) -> list[np.ndarray]:
            out = []
            for g in grids:
                with np.errstate(all="ignore"):
                    units = scale * (g / current) ** e
                    if kind == 1:
                        units = np.where(rng.random(len(g)) < 0.5, np.nan, units)
                    elif kind == 2:
                        units = -units
                    elif kind == 3:
                        units = units * 1e300
                out.append(units)
            return out

        [s] = optimise([item], demand, policy)
        assert not violations(item, s, policy), (item, s.price, s.relaxed)
        assert math.isfinite(s.price) and s.price > 0
        checked += 1
    assert checked == 250


def test_every_suggestion_explains_itself() -> None:
    items = [PricingItem(f"p{i}", current_price=10.0 + i, cost=5.0, competitor_price=11.0) for i in range(4)]

    def drivers(prices: np.ndarray) -> list[list[dict]]:
        return [[{"feature": "own price", "effect": -0.2, "value": float(p)}] for p in prices]

    for s in optimise(items, constant_elasticity(-2.0), PricingPolicy(), drivers=drivers):
        assert f"{s.current.price:.2f}" in s.reason and f"{s.suggested.price:.2f}" in s.reason
        assert s.elasticity is not None and s.elasticity < 0
        assert s.current.units is not None and s.suggested.units is not None
        assert s.current.revenue is not None and s.suggested.profit is not None
        assert s.drivers and s.drivers[0]["feature"] == "own price"
        assert isinstance(s.binding, list) and isinstance(s.relaxed, list)
        d = s.to_dict()
        assert {"current", "suggested", "elasticity", "drivers", "binding", "reason"} <= set(d)


def test_a_failing_explainer_keeps_the_price() -> None:
    item = PricingItem("p", current_price=10.0, cost=5.0)

    def broken(prices: np.ndarray) -> list[list[dict]]:
        raise RuntimeError("shap unavailable")

    [s] = optimise([item], constant_elasticity(-2.0), PricingPolicy(), drivers=broken)
    assert s.price > 0 and any("drivers unavailable" in n for n in s.notes)


def test_policy_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="max_change"):
        PricingPolicy(max_change=1.5)
    with pytest.raises(ValueError, match="objective"):
        PricingPolicy(objective="volume")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", [PricingPolicy(), WIDE], ids=["guarded", "wide"])
def test_the_candidate_grid_is_the_same_size_whatever_the_price(policy: PricingPolicy) -> None:
    asked: dict[float, list[int]] = {}
    for price in (1e-2, 10.0, 1e7):

        def demand(grids: list[np.ndarray], price=price) -> list[np.ndarray]:
            asked.setdefault(price, []).extend(len(g) for g in grids)
            return constant_elasticity(-2.0, ref=price)(grids)

        item = PricingItem("p", current_price=price, cost=price / 3)
        [s] = optimise([item], demand, policy)
        assert s.price >= MIN_PRICE and not violations(item, s, policy)
    most = policy.max_candidates + 5  # the grid, then the probes (current, ± step, beyond each end)
    assert all(n <= most for sizes in asked.values() for n in sizes), asked
    assert len(asked[1e7]) <= 2  # two demand calls, however wide the range: 2e6 whole prices in ±10 % of 1e7


def test_the_optimum_of_a_huge_price_is_found_to_a_small_fraction() -> None:
    # constant elasticity -2: the optimum is twice the cost; the grid is spread, then refined around its best
    item = PricingItem("p", current_price=5e6, cost=3e6)
    [s] = optimise([item], constant_elasticity(-2.0, ref=5e6), WIDE)
    assert s.price == pytest.approx(6e6, rel=1e-3)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"current_price": 0.001}, "current_price"),
        ({"current_price": 5e-324}, "current_price"),
        ({"current_price": 1e300}, "current_price"),
        ({"current_price": 1e8}, "current_price"),
        ({"current_price": 10.0, "cost": 1e20}, "cost"),
        ({"current_price": 10.0, "competitor_price": 1e12}, "competitor_price"),
        ({"current_price": 10.0, "max_price": float("inf")}, "max_price"),
        ({"current_price": 10.0, "inventory": 1e300}, "inventory"),
    ],
)
def test_prices_outside_the_supported_range_are_rejected_by_name(fields: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}:"):
        optimise([PricingItem("p", **fields)], constant_elasticity(-2.0), PricingPolicy())


def test_the_extremes_of_the_range_are_priced() -> None:
    items = [
        PricingItem("low", current_price=MIN_PRICE, cost=0.0),
        PricingItem("high", current_price=MAX_PRICE, cost=MAX_PRICE, competitor_price=MAX_PRICE),
    ]
    for item, s in zip(items, optimise(items, constant_elasticity(-1.5), PricingPolicy()), strict=True):
        assert math.isfinite(s.price) and s.price >= MIN_PRICE and s.reason
        assert not violations(item, s, PricingPolicy())
