"""The day's per-channel report (buying customers, orders, revenue), released with differential privacy.

Every figure goes through ``dp.release`` and spends ε from the day's budget (``events/<day>`` in
``<home>/privacy/dp_budget.json``): a report that would overspend raises ``BudgetExceededError`` before anything is
released. Privacy unit: one customer on one day (a customer active on k days is covered by k · ε over them).
A day's report is released once; a re-run returns it, since a second noisy release of the same day would spend
the budget again and averaging the two would tell more than either.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd

from omnicart import lake, schemas
from omnicart.privacy import dp
from omnicart.schemas import C
from omnicart.settings import Settings

EPSILON = 3.0  # per day, a third for each figure
MAX_ORDERS_PER_CUSTOMER = 5  # purchase lines a customer adds to one day's figures (the rest are left out)
LINE_REVENUE_BOUNDS = (0.0, 200.0)  # quantity × price of one purchase line is clipped to this
FIGURES = ("customers", "orders", "revenue")  # the report's columns beside the channel


def budget_dataset(day: dt.date) -> str:
    """The accountant's dataset of a day's events: each day has its own ε budget."""
    return f"{schemas.EVENTS}/{day.isoformat()}"


def channel_report(
    events: pd.DataFrame,
    day: dt.date,
    accountant: dp.BudgetAccountant,
    epsilon: float = EPSILON,
    seed: int = 0,
) -> dict[str, Any]:
    """One row per channel of ``schemas.CHANNELS`` with the noisy number of buying customers, of orders (purchase
    lines: the lake has no order id) and of revenue; ``events`` are the day's, customers attributed. Purchases
    without a customer id are left out: their contribution per person cannot be bounded."""
    dataset = budget_dataset(day)
    left = accountant.remaining(dataset)
    if epsilon > left + 1e-12:  # all three figures or none: refuse before the first one spends
        raise dp.BudgetExceededError(
            f"the channel report of {day} needs ε={epsilon:g} but only {left:g} of {dataset!r}'s budget is left; "
            "nothing was released"
        )
    purchases = events[(events[C.event_type] == "purchase") & events[C.customer_id].notna()].copy()
    purchases["line_revenue"] = purchases[C.quantity].astype(float) * purchases[C.price].astype(float)
    keys = {C.channel: list(schemas.CHANNELS)}
    share = epsilon / len(FIGURES)
    common = {"dataset": dataset, "accountant": accountant, "epsilon": share, "keys": keys, "seed": seed}
    customers = dp.release(
        purchases.drop_duplicates([C.customer_id, C.channel]), max_rows_per_person=len(schemas.CHANNELS), **common
    )
    orders = dp.release(purchases, max_rows_per_person=MAX_ORDERS_PER_CUSTOMER, **common)
    revenue = dp.release(
        purchases,
        statistic="sum",
        value="line_revenue",
        bounds=LINE_REVENUE_BOUNDS,
        max_rows_per_person=MAX_ORDERS_PER_CUSTOMER,
        **common,
    )
    # Post-processing costs no privacy: counts become whole and nothing is negative.
    table = pd.DataFrame(
        {
            C.channel: customers.table[C.channel],
            "customers": customers.table["count"].round().clip(lower=0).astype(int),
            "orders": orders.table["count"].round().clip(lower=0).astype(int),
            "revenue": revenue.table["sum"].clip(lower=0).round(2),
        }
    )
    return {
        "day": day.isoformat(),
        "epsilon": epsilon,
        "epsilon_left": revenue.remaining,
        "noise_scale": {"customers": customers.scale, "orders": orders.scale, "revenue": revenue.scale},
        "channels": table.to_dict(orient="records"),
    }


def report_path(settings: Settings, day: dt.date) -> Path:
    return settings.reports_dir / "channels" / f"{day.isoformat()}.json"


def release_channel_report(settings: Settings, day: dt.date, epsilon: float | None = None) -> Path:
    """Release ``day``'s per-channel report from the lake's events into ``<home>/reports/channels/<day>.json``
    (written once; a re-run returns the file already released). ``epsilon``: the day's ε, by default the settings'
    ``dp_report_epsilon``, which is also the day's budget when the day has none yet."""
    from omnicart.features import attribute_customers

    epsilon = settings.dp_report_epsilon if epsilon is None else epsilon
    path = report_path(settings, day)
    if path.is_file():
        return path
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, day, day)
    if events.empty:
        events = pd.DataFrame(columns=[C.customer_id, C.channel, C.event_type, C.quantity, C.price])
    maps = [d for d in lake.partitions(settings.lake_dir, schemas.IDENTITY_MAP) if d <= day]
    identity_map = lake.read_table(settings.lake_dir, schemas.IDENTITY_MAP, maps[-1], maps[-1]) if maps else None
    report = channel_report(
        attribute_customers(events, identity_map),
        day,
        dp.BudgetAccountant.for_settings(settings, default_budget=epsilon),
        epsilon,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    return path
