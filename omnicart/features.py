"""Feature tables computed from the lake, one partition per day, as Feast's offline sources read them.

A row's ``event_timestamp`` is the end of its day: what was known then, so point-in-time joins never see later data.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from omnicart import lake, schemas
from omnicart.schemas import C, F
from omnicart.settings import Settings

WINDOW_DAYS = 30
POPULARITY_DAYS = 7


def end_of_day(day: dt.date) -> pd.Timestamp:
    """The timestamp a day's features carry: the last microsecond of that UTC day."""
    return pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)


def customer_stats(events: pd.DataFrame, customers: pd.DataFrame, day: dt.date, recent_n: int) -> pd.DataFrame:
    """Per customer as of the end of ``day``: segment, 30-day purchases, views, spend, and last items touched."""
    start = pd.Timestamp(day, tz="UTC") - pd.Timedelta(days=WINDOW_DAYS - 1)
    ev = events[(events[C.event_timestamp] >= start) & (events[C.event_timestamp] <= end_of_day(day))]
    ev = ev[ev[C.customer_id].notna()]
    buys = ev[ev[C.event_type] == "purchase"]
    spend = (buys[C.price] * buys[C.quantity]).groupby(buys[C.customer_id]).sum()
    recent = (
        ev[ev[C.event_type] != "return"]
        .sort_values(C.event_timestamp, ascending=False)
        .drop_duplicates([C.customer_id, C.item_id])
        .groupby(C.customer_id)[C.item_id]
        .agg(lambda items: list(items[:recent_n]))
    )
    out = customers[[C.customer_id, C.segment]].drop_duplicates(C.customer_id).set_index(C.customer_id)
    out[F.n_purchases_30d] = buys.groupby(C.customer_id).size().reindex(out.index).fillna(0).astype("int64")
    out[F.n_views_30d] = (
        ev[ev[C.event_type] == "view"].groupby(C.customer_id).size().reindex(out.index).fillna(0).astype("int64")
    )
    out[F.spend_30d] = spend.reindex(out.index).fillna(0.0).astype("float64")
    out[F.recent_items] = [recent.get(cid, []) for cid in out.index]
    out[C.event_timestamp] = end_of_day(day)
    return out.reset_index()


def item_stats(events: pd.DataFrame, items: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """Per item as of the end of ``day``: 7-day distinct buyers and purchases, category and list price."""
    start = pd.Timestamp(day, tz="UTC") - pd.Timedelta(days=POPULARITY_DAYS - 1)
    ev = events[(events[C.event_timestamp] >= start) & (events[C.event_timestamp] <= end_of_day(day))]
    buys = ev[ev[C.event_type] == "purchase"]
    out = items[[C.item_id, C.category, C.price]].drop_duplicates(C.item_id).set_index(C.item_id)
    out[F.popularity_7d] = buys.groupby(C.item_id)[C.customer_id].nunique().reindex(out.index).fillna(0)
    out[F.purchases_7d] = buys.groupby(C.item_id).size().reindex(out.index).fillna(0)
    out = out.astype({F.popularity_7d: "int64", F.purchases_7d: "int64", C.price: "float64"})
    out[C.event_timestamp] = end_of_day(day)
    return out.reset_index()


def build_feature_day(settings: Settings, day: dt.date) -> dict[str, int]:
    """Compute and store the customer and item feature partitions of ``day`` from the lake (idempotent)."""
    first = day - dt.timedelta(days=WINDOW_DAYS - 1)
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, first, day)
    customers = lake.read_table(settings.lake_dir, schemas.CUSTOMERS, end=day)
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=day)
    if events.empty or customers.empty or items.empty:
        raise ValueError(f"no lake data up to {day}: ingest the days before building features")
    events[C.event_timestamp] = pd.to_datetime(events[C.event_timestamp], utc=True)
    cust = customer_stats(events, customers, day, settings.recent_items_n)
    item = item_stats(events, items, day)
    lake.write_partition(settings.lake_dir, schemas.CUSTOMER_FEATURES, day, cust)
    lake.write_partition(settings.lake_dir, schemas.ITEM_FEATURES, day, item)
    return {schemas.CUSTOMER_FEATURES: len(cust), schemas.ITEM_FEATURES: len(item)}


def build_feature_days(settings: Settings, start: dt.date, end: dt.date) -> dict[str, int]:
    """Build the feature partitions of every day in [start, end]; returns rows of the last day."""
    rows: dict[str, int] = {}
    day = start
    while day <= end:
        rows = build_feature_day(settings, day)
        day += dt.timedelta(days=1)
    return rows
