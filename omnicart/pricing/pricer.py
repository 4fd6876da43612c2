"""Price items with a fitted demand model: the model's demand curves, the guarded optimiser, the explanations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from omnicart.pricing.model import DemandModel
from omnicart.pricing.optimiser import PricingItem, PricingPolicy, Suggestion, optimise
from omnicart.schemas import C


def context_rows(
    model: DemandModel,
    items: Sequence[PricingItem],
    period: Any = None,
    promo: Sequence[float | None] | None = None,
    features: Sequence[Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """The rows to price as a canonical demand table (no units), in the series the model knows them by.

    ``features`` (one mapping per item) carries current values of the model's extra columns, such as the item's
    recent demand from the online store; a column missing there is filled from the model's latest history."""
    when = model.next_period() if period is None else period
    if model.spec_.period_kind == "date":
        when = pd.Timestamp(when)
        if when.tzinfo is not None:
            when = when.tz_convert("UTC").tz_localize(None)
    frame = pd.DataFrame(
        {
            C.series_id: [model.series_id(i.product_id, i.store_id) for i in items],
            C.product_id: [str(i.product_id) for i in items],
            C.store_id: [None if i.store_id is None else str(i.store_id) for i in items],
            C.period: [when] * len(items),
            C.price: [float(i.current_price) for i in items],
            C.competitor_price: [np.nan if i.competitor_price is None else float(i.competitor_price) for i in items],
        }
    )
    if promo is not None:
        frame[C.promo] = [np.nan if p is None else float(p) for p in promo]
    for column in model.spec_.extras if features is not None else ():
        frame[column] = [_float(f.get(column)) for f in features]
    return frame


def _float(value: Any) -> float:
    return np.nan if value is None else float(value)


def suggest(
    model: DemandModel,
    items: Sequence[PricingItem],
    policy: PricingPolicy = PricingPolicy(),
    *,
    period: Any = None,
    promo: Sequence[float | None] | None = None,
    history: pd.DataFrame | None = None,
    features: Sequence[Mapping[str, Any]] | None = None,
    explain: bool = True,
) -> list[Suggestion]:
    """A guarded, explained price suggestion per item for ``period`` (default: the period after training).

    ``history`` (a canonical demand table) supplies the recent demand lags; by default the model's own state.
    """
    if not items:
        return []
    context = model.context(context_rows(model, items, period, promo, features), history)
    suggestions = optimise(items, context.expected_units, policy, drivers=context.drivers if explain else None)
    for s in suggestions:
        low, high = _half_widths(model, s.product_id)
        if s.elasticity is not None and np.isfinite(low) and np.isfinite(high):
            # the product's band from training, around the local elasticity at today's price
            s.elasticity_low, s.elasticity_high = s.elasticity - low, s.elasticity + high
    return suggestions


def _half_widths(model: DemandModel, product_id: str) -> tuple[float, float]:
    stored = model.elasticity_of(product_id)
    if stored is None:
        return (float("nan"), float("nan"))
    return (stored["elasticity"] - stored["low"], stored["high"] - stored["elasticity"])
