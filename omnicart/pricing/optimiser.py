"""The guarded price optimiser: for each product (and store) the price that maximises expected profit (or revenue)
within guardrails, with an explanation of every suggestion.

Pure library: it knows nothing of XGBoost. It asks a demand function for expected units at candidate prices and
applies the guardrails itself, after the model, whatever the model says (NaN, negative or absurd demand included):

1. ``margin_floor``   price ≥ cost × (1 + min_margin)                 — never sell below the margin floor
2. ``price_bounds``   min_price ≤ price ≤ max_price (per request)
3. ``max_change``     |price / current − 1| ≤ max_change per period
4. ``competitor_band`` price within competitor × (1 ± competitor_band)
5. ``inventory``      expected units ≤ inventory, when any allowed price achieves it
6. ``price_ending``   price ends in one of ``endings`` (e.g. .99), when any allowed price does

When two guardrails cannot hold together, the higher one wins and the lower one is kept as close as it can be; the
suggestion lists it under ``relaxed``. ``violations`` re-checks a final price against every guardrail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

MARGIN_FLOOR = "margin_floor"
PRICE_BOUNDS = "price_bounds"
MAX_CHANGE = "max_change"
COMPETITOR_BAND = "competitor_band"
INVENTORY = "inventory"
PRICE_ENDING = "price_ending"
SEARCH_RANGE = "search_range"  # not a guardrail: how far the optimiser looks when nothing else bounds the price
GUARDRAILS: tuple[str, ...] = (MARGIN_FLOOR, PRICE_BOUNDS, MAX_CHANGE, COMPETITOR_BAND, INVENTORY, PRICE_ENDING)

CENT = 0.01
_EPS = 1e-9
# The price range an item may carry (current, competitor and bound prices; the cost at most MAX_PRICE): prices are
# whole cents, so under a cent nothing can be set (and today's price would round to 0); 1e7 is above any shop's
# unit price, and whole cents stay exact in float64 far beyond it (~9e13), search_range × MAX_PRICE included.
MIN_PRICE = CENT
MAX_PRICE = 1e7
MAX_INVENTORY = 1e9  # units per period; beyond any stock, and keeps units × price finite

# expected units at each candidate price, one array per item: demand([grid_0, grid_1, ...]) -> [units_0, ...]
DemandFn = Callable[[list[np.ndarray]], Sequence[np.ndarray]]
# top demand drivers at each item's suggested price
DriversFn = Callable[[np.ndarray], Sequence[list[dict[str, Any]]]]


@dataclass(frozen=True)
class PricingPolicy:
    """The objective and the guardrails' settings (one per deployment; a request may narrow bounds)."""

    objective: Literal["profit", "revenue"] = "profit"
    min_margin: float = 0.05
    max_change: float | None = 0.10
    competitor_band: float | None = 0.20
    endings: tuple[float, ...] = (0.99,)
    search_range: float = 3.0  # × current price, when nothing else bounds the price above
    max_candidates: int = 240  # prices per demand call and item: the coarse grid, then as many around its best
    elasticity_step: float = 0.05

    def __post_init__(self) -> None:
        if self.objective not in ("profit", "revenue"):
            raise ValueError(f"objective: must be 'profit' or 'revenue', got {self.objective!r}")
        if not (math.isfinite(self.min_margin) and self.min_margin >= 0):
            raise ValueError(f"min_margin: must be ≥ 0, got {self.min_margin}")
        if self.max_change is not None and not (0 < self.max_change < 1):
            raise ValueError(f"max_change: must be in (0, 1), got {self.max_change}")
        if self.competitor_band is not None and not (0 < self.competitor_band < 1):
            raise ValueError(f"competitor_band: must be in (0, 1), got {self.competitor_band}")
        if any(not (0 <= e < 1) for e in self.endings):
            raise ValueError(f"endings: cents in [0, 1), got {self.endings}")


@dataclass(frozen=True)
class PricingItem:
    """One product (at one store, where stores exist) to price for the next period."""

    product_id: str
    current_price: float
    cost: float | None = None
    store_id: str | None = None
    competitor_price: float | None = None
    inventory: float | None = None  # units available for the period
    min_price: float | None = None
    max_price: float | None = None


def validate_item(item: PricingItem) -> None:
    """Raise ValueError naming the field when an item cannot be priced (the service turns it into a 4xx)."""

    def positive(name: str, value: float | None, allow_zero: bool = False, most: float = MAX_PRICE) -> None:
        if value is None:
            return
        ok = isinstance(value, int | float) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
        if not ok:
            raise ValueError(f"{name}: must be a finite number {'≥' if allow_zero else '>'} 0, got {value!r}")
        if value > most:
            raise ValueError(f"{name}: must be at most {most:g}, got {value!r}")

    if not str(item.product_id):
        raise ValueError("product_id: must not be empty")
    positive("current_price", item.current_price)
    if item.current_price < MIN_PRICE:
        raise ValueError(f"current_price: must be at least {MIN_PRICE} (whole cents), got {item.current_price!r}")
    positive("cost", item.cost, allow_zero=True)
    positive("competitor_price", item.competitor_price)
    positive("inventory", item.inventory, allow_zero=True, most=MAX_INVENTORY)
    positive("min_price", item.min_price)
    positive("max_price", item.max_price)
    if item.min_price is not None and item.max_price is not None and item.min_price > item.max_price:
        raise ValueError(f"min_price: {item.min_price} is above max_price {item.max_price}")


@dataclass(frozen=True)
class Interval:
    """One guardrail as a price interval."""

    name: str
    low: float
    high: float


def guardrail_intervals(item: PricingItem, policy: PricingPolicy) -> list[Interval]:
    """The price-interval guardrails that apply to ``item``, highest priority first."""
    out = []
    if item.cost is not None:
        out.append(Interval(MARGIN_FLOOR, item.cost * (1 + policy.min_margin), math.inf))
    if item.min_price is not None or item.max_price is not None:
        out.append(Interval(PRICE_BOUNDS, item.min_price or 0.0, item.max_price or math.inf))
    if policy.max_change is not None:
        c = item.current_price
        out.append(Interval(MAX_CHANGE, c * (1 - policy.max_change), c * (1 + policy.max_change)))
    if policy.competitor_band is not None and item.competitor_price is not None:
        cp = item.competitor_price
        out.append(Interval(COMPETITOR_BAND, cp * (1 - policy.competitor_band), cp * (1 + policy.competitor_band)))
    return out


@dataclass
class Bounds:
    """The allowed price range after all interval guardrails, and which guardrail set each end."""

    low: float
    high: float
    low_by: str | None
    high_by: str | None
    relaxed: list[str]


def allowed_range(item: PricingItem, policy: PricingPolicy) -> Bounds:
    """Intersect the guardrails in priority order; one that cannot hold with those above it is met as nearly as
    possible (the range collapses to its nearest end) and listed as relaxed."""
    low, high, low_by, high_by, relaxed = CENT, math.inf, None, None, []
    for g in guardrail_intervals(item, policy):
        new_low, new_high = max(low, g.low), min(high, g.high)
        if new_low <= new_high + _EPS:
            if g.low > low + _EPS:
                low_by = g.name
            if g.high < high - _EPS:
                high_by = g.name
            low, high = new_low, max(new_low, new_high)
        else:
            relaxed.append(g.name)
            if g.high < low:  # the guardrail wants a lower price than allowed: stay at the lowest allowed
                high, high_by = low, low_by
            else:
                low, low_by = high, high_by
    if math.isinf(high):
        high, high_by = max(low, item.current_price * policy.search_range), SEARCH_RANGE
    return Bounds(low, high, low_by, high_by, relaxed)


def _ceil_cent(x: float) -> float:
    return math.ceil(round(x * 100, 6)) / 100


def _floor_cent(x: float) -> float:
    return math.floor(round(x * 100, 6)) / 100


def candidate_prices(bounds: Bounds, policy: PricingPolicy) -> tuple[np.ndarray, bool]:
    """At most ``policy.max_candidates`` allowed prices spread over the range, whatever its width or the price: those
    with an allowed ending, else whole cents (returns: prices, ending_ok). The optimiser then looks between the
    neighbours of the best of them with as many again (``spread``)."""
    low, high = _ceil_cent(bounds.low), _floor_cent(bounds.high)
    if policy.endings:
        prices = spread(low, high, policy.max_candidates, policy.endings)
        if len(prices):
            return prices, True
    if high < low:  # the range is narrower than a cent: the lowest cent at or above the floor
        return np.asarray([low]), not policy.endings
    return spread(low, high, policy.max_candidates), not policy.endings


def spread(low: float, high: float, most: int, endings: Sequence[float] = ()) -> np.ndarray:
    """At most ``most`` prices in [low, high], sorted: every one there is when they are few, else ``most`` targets
    spread evenly, each moved to the nearest such price. With ``endings``, only prices ending so (maybe none);
    without, whole cents. The size is bounded by ``most``, never by the price, so neither is the work."""
    if high < low - _EPS:
        return np.zeros(0)
    if endings:
        ends = np.asarray(sorted(endings), dtype=np.float64)
        first, last = math.floor(low) - 1, math.floor(high) + 1
        if (last - first + 1) * len(ends) <= most:
            options = (np.arange(first, last + 1, dtype=np.float64)[:, None] + ends[None, :]).ravel()
            options = np.round(options, 2)
            return np.unique(options[(options >= low - _EPS) & (options <= high + _EPS)])
        targets = np.linspace(low, high, most)
        near = (np.asarray([-1.0, 0.0, 1.0])[:, None] + ends[None, :]).ravel()
        options = np.round(np.floor(targets)[:, None] + near[None, :], 2)
        inside = (options >= low - _EPS) & (options <= high + _EPS)
        distance = np.where(inside, np.abs(options - targets[:, None]), np.inf)
        pick = np.argmin(distance, axis=1)
        found = inside[np.arange(len(targets)), pick]
        return np.unique(options[np.arange(len(targets)), pick][found])
    n = round((high - low) / CENT) + 1
    if n <= most:
        return np.round(low + CENT * np.arange(n), 2)
    return np.unique(np.clip(np.round(np.linspace(low, high, most), 2), low, high))


@dataclass
class Outcome:
    """Expected result of one period at one price."""

    price: float
    units: float | None
    revenue: float | None
    profit: float | None


@dataclass
class Suggestion:
    """A suggested price and why: the numbers at the current and suggested price, the elasticity, the demand drivers
    and the guardrails that bound it."""

    product_id: str
    store_id: str | None
    objective: str
    current: Outcome
    suggested: Outcome
    elasticity: float | None
    elasticity_low: float | None
    elasticity_high: float | None
    drivers: list[dict[str, Any]]
    binding: list[str]
    relaxed: list[str]
    allowed_low: float
    allowed_high: float
    fallback: str | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def price(self) -> float:
        return self.suggested.price

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value(prices: np.ndarray, units: np.ndarray, cost: float | None, objective: str, inventory: float | None):
    sold = units if inventory is None else np.minimum(units, inventory)
    return prices * sold if objective == "revenue" else (prices - (cost or 0.0)) * sold


def _outcome(price: float, units: float, cost: float | None, inventory: float | None) -> Outcome:
    if not math.isfinite(units) or units < 0:
        return Outcome(round(price, 2), None, None, None)
    sold = units if inventory is None else min(units, inventory)
    return Outcome(
        round(price, 2),
        float(units),
        float(price * sold),
        float((price - cost) * sold) if cost is not None else None,
    )


def optimise(
    items: Sequence[PricingItem],
    demand: DemandFn,
    policy: PricingPolicy = PricingPolicy(),
    *,
    drivers: DriversFn | None = None,
    elasticity_bands: Sequence[tuple[float, float] | None] | None = None,
) -> list[Suggestion]:
    """Suggest a price for every item. ``demand`` is called twice, each time batched over all items: on at most
    ``max_candidates`` allowed prices spread over the range (and probes for the elasticity and the guardrails), then
    on as many between the neighbours of the best one found (every allowed price there unless the range is huge)."""
    for item in items:
        validate_item(item)
    step = policy.elasticity_step
    plans, grids = [], []
    for item in items:
        bounds = allowed_range(item, policy)
        coarse, ending_ok = candidate_prices(bounds, policy)
        cur = item.current_price
        probes = np.asarray([cur, cur * (1 - step), cur * (1 + step), bounds.low * 0.95, bounds.high * 1.05])
        plans.append((bounds, coarse, ending_ok, probes))
        grids.append(np.concatenate([coarse, probes]))
    first = _call(demand, grids)

    extra = []
    for item, (_, coarse, ending_ok, _), units in zip(items, plans, first, strict=True):
        fine = np.zeros(0)
        best = _pick(coarse, units[: len(coarse)], item, policy) if len(coarse) > 1 else None
        if best is not None:
            lo, hi = coarse[max(best - 1, 0)], coarse[min(best + 1, len(coarse) - 1)]
            fine = spread(lo, hi, policy.max_candidates, policy.endings if ending_ok else ())
            fine = fine[(fine > lo) & (fine < hi) & ~np.isin(fine, coarse)]
        extra.append(fine)
    second = _call(demand, extra) if any(len(e) for e in extra) else [np.zeros(0) for _ in extra]

    suggestions = []
    for item, (bounds, coarse, ending_ok, _), units, fine, fine_units in zip(
        items, plans, first, extra, second, strict=True
    ):
        candidates = np.concatenate([coarse, fine])
        order = np.argsort(candidates, kind="stable")
        cand_units = np.concatenate([units[: len(coarse)], fine_units])[order]
        probe_units = units[len(coarse) :]
        suggestions.append(
            _choose(item, policy, bounds, candidates[order], ending_ok, np.concatenate([cand_units, probe_units]))
        )

    if drivers is not None and suggestions:
        try:
            found = drivers(np.asarray([s.price for s in suggestions]))
            for s, d in zip(suggestions, found, strict=True):
                s.drivers = list(d)
        except Exception as exc:  # an explainer failure must not lose the (guarded) price
            for s in suggestions:
                s.notes.append(f"drivers unavailable: {type(exc).__name__}")
    for i, s in enumerate(suggestions):
        band = elasticity_bands[i] if elasticity_bands is not None and i < len(elasticity_bands) else None
        if band is not None and s.elasticity is not None:
            s.elasticity_low, s.elasticity_high = (float(band[0]), float(band[1]))
        s.reason = _reason(s)
    return suggestions


def _call(demand: DemandFn, grids: list[np.ndarray]) -> list[np.ndarray]:
    """Ask the demand function; a curve of the wrong length, or none at all, counts as unusable (NaN)."""
    raw = demand(grids)
    if len(raw) != len(grids):
        raise ValueError(f"demand function returned {len(raw)} curves for {len(grids)} items")
    out = []
    for grid, units in zip(grids, raw, strict=True):
        units = np.asarray(units, dtype=np.float64).reshape(-1)
        out.append(units if len(units) == len(grid) else np.full(len(grid), np.nan))
    return out


def _pick(candidates: np.ndarray, units: np.ndarray, item: PricingItem, policy: PricingPolicy) -> int | None:
    """The best candidate by the objective among usable predictions (within stock when stock allows), or None."""
    pool = np.flatnonzero(np.isfinite(units) & (units >= 0))
    if not len(pool):
        return None
    if item.inventory is not None:
        within = pool[units[pool] <= item.inventory * (1 + 1e-9)]
        pool = within if len(within) else pool[[int(np.argmax(candidates[pool]))]]
    return _best(pool, candidates, units, item, policy)


def _best(pool: np.ndarray, candidates: np.ndarray, units: np.ndarray, item: PricingItem, policy: PricingPolicy) -> int:
    """Index of the best candidate in ``pool``; among equals, the smallest move from the current price."""
    value = _value(candidates[pool], units[pool], item.cost, policy.objective, item.inventory)
    ties = pool[np.isclose(value, value.max(), rtol=1e-12, atol=1e-12)]
    return int(ties[np.argmin(np.abs(candidates[ties] - item.current_price))])


def _choose(
    item: PricingItem,
    policy: PricingPolicy,
    bounds: Bounds,
    candidates: np.ndarray,
    ending_ok: bool,
    units: np.ndarray,
) -> Suggestion:
    k = len(candidates)
    cand_units = units[:k]
    u_cur, u_minus, u_plus, u_below, u_above = units[k:]
    relaxed = list(bounds.relaxed)
    if not ending_ok and policy.endings:
        relaxed.append(PRICE_ENDING)
    notes = []
    if policy.objective == "profit" and item.cost is None:
        notes.append("no cost given: profit counted as revenue")
    valid = np.isfinite(cand_units) & (cand_units >= 0)
    fallback = None
    binding: list[str] = []
    if not valid.any():
        fallback = "demand model gave no usable prediction; kept the current price within guardrails"
        idx = int(np.argmin(np.abs(candidates - item.current_price)))
    else:
        pool = np.flatnonzero(valid)
        unconstrained = _best(pool, candidates, cand_units, item, policy)
        if item.inventory is not None:
            within = pool[cand_units[pool] <= item.inventory * (1 + 1e-9)]
            if len(within) == 0:  # even the highest allowed price sells more than the stock: go as high as allowed
                relaxed.append(INVENTORY)
                within = pool[[int(np.argmax(candidates[pool]))]]
            pool = within
        idx = _best(pool, candidates, cand_units, item, policy)
        if idx != unconstrained and INVENTORY not in relaxed:
            binding.append(INVENTORY)
        chosen_value = float(
            _value(candidates[idx : idx + 1], cand_units[idx : idx + 1], item.cost, policy.objective, item.inventory)[0]
        )
        # A guardrail binds when its end of the range was chosen and the objective would improve beyond it.
        for end_price, probe, by, is_top in (
            (bounds.high, u_above, bounds.high_by, True),
            (bounds.low, u_below, bounds.low_by, False),
        ):
            at_end = idx == (int(np.argmax(candidates)) if is_top else int(np.argmin(candidates)))
            if not at_end or by in (None, SEARCH_RANGE) or not (math.isfinite(probe) and probe >= 0):
                continue
            p = end_price * (1.05 if is_top else 0.95)
            beyond = float(_value(np.asarray([p]), np.asarray([probe]), item.cost, policy.objective, item.inventory)[0])
            if item.inventory is not None and not is_top and probe > item.inventory:
                continue  # below the range it would sell out: not a binding limit
            if beyond > chosen_value * (1 + 1e-9):
                binding.append(by)
    price = float(candidates[idx])
    elasticity = None
    if all(math.isfinite(u) and u > 0 for u in (u_minus, u_plus)):
        step = policy.elasticity_step
        elasticity = float((math.log(u_plus) - math.log(u_minus)) / (math.log1p(step) - math.log1p(-step)))
    binding += [r for r in relaxed if r not in binding]
    return Suggestion(
        product_id=str(item.product_id),
        store_id=item.store_id,
        objective=policy.objective,
        current=_outcome(item.current_price, float(u_cur), item.cost, item.inventory),
        suggested=_outcome(price, float(units[idx]), item.cost, item.inventory),
        elasticity=elasticity,
        elasticity_low=None,
        elasticity_high=None,
        drivers=[],
        binding=list(dict.fromkeys(binding)),
        relaxed=list(dict.fromkeys(relaxed)),
        allowed_low=round(bounds.low, 4),
        allowed_high=round(bounds.high, 4),
        fallback=fallback,
        notes=notes,
    )


def _reason(s: Suggestion) -> str:
    cur, new = s.current.price, s.suggested.price
    move = "Keep" if abs(new - cur) < CENT / 2 else ("Raise" if new > cur else "Lower")
    text = f"{move} {cur:.2f} → {new:.2f}" + (f" ({(new / cur - 1) * 100:+.1f}%)" if move != "Keep" and cur > 0 else "")
    metric = s.objective
    before, after = getattr(s.current, metric), getattr(s.suggested, metric)
    if s.objective == "profit" and before is None:
        before, after = s.current.revenue, s.suggested.revenue
    if before is not None and after is not None:
        text += f": expected {metric} {before:.2f} → {after:.2f} per period"
    if s.elasticity is not None:
        kind = "elastic" if s.elasticity < -1 else "inelastic"
        text += f"; demand is {kind} (elasticity {s.elasticity:.2f})"
    if s.drivers:
        text += "; main driver: " + s.drivers[0]["feature"]
    if s.binding:
        text += "; bound by " + ", ".join(s.binding)
    if s.fallback:
        text += f"; {s.fallback}"
    return text + "."


def violations(item: PricingItem, suggestion: Suggestion, policy: PricingPolicy) -> list[str]:
    """Guardrails the suggested price breaks, counting a relaxed one only when it could have held.

    Checked from the item and the price alone: each interval guardrail, then inventory and the price ending.
    """
    price = suggestion.price
    found = []
    feasible_low, feasible_high = CENT, math.inf
    for g in guardrail_intervals(item, policy):
        could_hold = max(feasible_low, g.low) <= min(feasible_high, g.high) + _EPS
        # a floor holds exactly; an upper limit within a cent (prices are whole cents)
        inside = price >= g.low - _EPS and price <= g.high + CENT + _EPS
        if could_hold:
            feasible_low, feasible_high = max(feasible_low, g.low), min(feasible_high, g.high)
            if not inside:
                found.append(g.name)
        else:
            if g.name not in suggestion.relaxed:
                found.append(g.name)  # it could not hold, but the suggestion did not say so
            # a guardrail that cannot hold is still met as nearly as the ones above allow
            if g.high < feasible_low:
                feasible_high = feasible_low
            else:
                feasible_low = feasible_high
    if item.cost is not None and price < item.cost * (1 + policy.min_margin) - _EPS and MARGIN_FLOOR not in found:
        found.append(MARGIN_FLOOR)
    if policy.endings and PRICE_ENDING not in suggestion.relaxed:
        cents = round(price - math.floor(price + _EPS), 2)
        if not any(abs(cents - e) < 0.005 for e in policy.endings):
            found.append(PRICE_ENDING)
    units = suggestion.suggested.units
    if (
        item.inventory is not None
        and INVENTORY not in suggestion.relaxed
        and units is not None
        and units > item.inventory * (1 + 1e-6)
    ):
        found.append(INVENTORY)
    return found
