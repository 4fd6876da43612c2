"""Feature tables computed from the lake, one partition per day, as Feast's offline sources read them.

A row's ``event_timestamp`` is the end of its day: what was known then, so point-in-time joins never see later data.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa

from omnicart import lake, schemas, text
from omnicart.schemas import C, F, windowed
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


# --- omnichannel features: customer x channel and item windows, the real-time history, item text embeddings -------
# Every table below is a daily snapshot as of the end of its day, computed from the lake only, so a re-run or a
# backfill of a day rewrites the same partition. Arrow types are fixed per table: a day whose values are all null
# (no purchases, no competitor price) still writes the column types Feast expects.

WINDOWS: tuple[int, ...] = schemas.FEATURE_WINDOWS
HISTORY_DAYS = max(WINDOWS)
EVENT_WEIGHTS = {"view": 1.0, "add_to_cart": 2.0, "purchase": 3.0}  # interest shown; returns show none
VIEW_CHANNELS = ("web", "app", "social")  # channels that log product views (tills and service do not)


def _customer_channel_schema() -> pa.Schema:
    fields = [
        pa.field(C.customer_id, pa.string()),
        pa.field(C.channel, pa.string()),
        pa.field(F.recency_days, pa.float64()),
    ]
    for w in WINDOWS:
        fields += [
            pa.field(windowed(F.frequency, w), pa.int64()),
            pa.field(windowed(F.monetary, w), pa.float64()),
            pa.field(windowed(F.returns, w), pa.int64()),
            pa.field(windowed(F.top_category, w), pa.string()),
            pa.field(windowed(F.category_share, w), pa.float64()),
            pa.field(windowed(F.price_index, w), pa.float64()),
            pa.field(windowed(F.avg_price, w), pa.float64()),
        ]
    fields += [pa.field(F.last_items, pa.list_(pa.string())), pa.field(C.event_timestamp, pa.timestamp("ns", "UTC"))]
    return pa.schema(fields)


def _item_window_schema() -> pa.Schema:
    fields = [pa.field(C.item_id, pa.string())]
    for w in WINDOWS:
        fields += [
            pa.field(windowed(F.buyers, w), pa.int64()),
            pa.field(windowed(F.views, w), pa.int64()),
            pa.field(windowed(F.sales, w), pa.int64()),
            pa.field(windowed(F.conversion, w), pa.float64()),
        ]
    fields += [
        pa.field(F.current_price, pa.float64()),
        pa.field(F.discount, pa.float64()),
        pa.field(C.competitor_price, pa.float64()),
        pa.field(F.competitor_gap, pa.float64()),
        pa.field(C.event_timestamp, pa.timestamp("ns", "UTC")),
    ]
    return pa.schema(fields)


def _last_event_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(C.customer_id, pa.string()),
            pa.field(F.last_item_id, pa.string()),
            pa.field(F.last_event_type, pa.string()),
            pa.field(F.last_channel, pa.string()),
            pa.field(F.last_price, pa.float64()),
            pa.field(F.live_items, pa.list_(pa.string())),
            pa.field(C.event_timestamp, pa.timestamp("ns", "UTC")),
        ]
    )


def _text_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(C.item_id, pa.string()),
            pa.field(F.text_embedding, pa.list_(pa.float32())),
            pa.field(C.event_timestamp, pa.timestamp("ns", "UTC")),
        ]
    )


def table_schemas() -> dict[str, pa.Schema]:
    """The Arrow schema of each omnichannel feature table (what Feast's file sources read)."""
    return {
        schemas.CUSTOMER_CHANNEL_FEATURES: _customer_channel_schema(),
        schemas.ITEM_WINDOW_FEATURES: _item_window_schema(),
        schemas.CUSTOMER_LAST_EVENT: _last_event_schema(),
        schemas.ITEM_TEXT_EMBEDDINGS: _text_schema(),
    }


def _write(settings: Settings, table: str, day: dt.date, frame: pd.DataFrame) -> int:
    """Replace the table's partition of ``day``; a day with no rows has no partition (a re-run removes a stale one)."""
    if frame.empty:
        lake.delete_partition(settings.lake_dir, table, day)
        return 0
    schema = table_schemas()[table]
    lake.write_partition(settings.lake_dir, table, day, frame[schema.names], schema=schema)
    return len(frame)


def _in_window(events: pd.DataFrame, day: dt.date, days: int) -> pd.DataFrame:
    """Events of the ``days`` days ending with ``day`` (nothing after the end of ``day``: no future leaks in)."""
    start = pd.Timestamp(day, tz="UTC") - pd.Timedelta(days=days - 1)
    ts = events[C.event_timestamp]
    return events[(ts >= start) & (ts <= end_of_day(day))]


def attribute_customers(events: pd.DataFrame, identity_map: pd.DataFrame | None) -> pd.DataFrame:
    """Events whose customer id is missing get the CRM id of the identity their channel identifier resolves to.

    A till or social event seen only under a loyalty card or handle then counts for its customer; an identifier that
    resolves to no CRM id, or to several, stays unattributed.
    """
    missing = events[C.customer_id].isna() if C.customer_id in events.columns else None
    if missing is None or not missing.any() or identity_map is None or identity_map.empty:
        return events
    from omnicart.ingest.identity import attach_resolved_ids

    resolved = attach_resolved_ids(events[missing], identity_map)
    crm = identity_map[(identity_map[C.id_kind] == C.customer_id) & ~identity_map[C.shared].astype(bool)]
    single = crm.groupby(C.resolved_id)[C.identifier].agg(lambda ids: ids.iloc[0] if len(ids) == 1 else None)
    out = events.copy()
    out.loc[missing, C.customer_id] = resolved.map(single)
    return out


def _last_items(ev: pd.DataFrame, keys: list[str], n: int) -> pd.Series:
    """Per key: the distinct items of the latest non-return events, newest first, at most ``n``."""
    touched = ev[ev[C.event_type] != "return"].sort_values([C.event_timestamp, C.event_id], ascending=False)
    touched = touched.drop_duplicates([*keys, C.item_id])
    return touched.groupby(keys, sort=False)[C.item_id].agg(lambda items: list(items[:n]))


def customer_channel_features(events: pd.DataFrame, items: pd.DataFrame, day: dt.date, recent_n: int) -> pd.DataFrame:
    """Per customer and channel (plus channel "all") as of the end of ``day``, over 7/30/90 days: recency, frequency,
    monetary value, returns, favourite category and its share, price index (price paid ÷ the category's median list
    price: below 1 buys cheap) and average price paid, and the last items touched.

    ``events`` need customer_id, channel, event_type, item_id, quantity, price, event_timestamp, event_id.
    Only pairs active in the last 90 days get a row.
    """
    ev = _in_window(events, day, HISTORY_DAYS)
    ev = ev[ev[C.customer_id].notna()]
    catalog = items.drop_duplicates(C.item_id, keep="last")[[C.item_id, C.category, C.price]]
    median = catalog.groupby(C.category)[C.price].median()
    ev = ev.merge(
        catalog.rename(columns={C.price: "_list_price"}).assign(_cat_median=lambda f: f[C.category].map(median)),
        on=C.item_id,
        how="left",
    )
    ev = pd.concat([ev, ev.assign(**{C.channel: schemas.ALL_CHANNELS})], ignore_index=True)
    keys = [C.customer_id, C.channel]
    out = ev[keys].drop_duplicates().sort_values(keys).set_index(keys)

    buys_all = ev[ev[C.event_type] == "purchase"]
    last_buy = buys_all.groupby(keys)[C.event_timestamp].max()
    age = (end_of_day(day) - last_buy) / pd.Timedelta(days=1)
    out[F.recency_days] = age.reindex(out.index).astype("float64")
    for w in WINDOWS:
        sub = _in_window(ev, day, w)
        buys = sub[sub[C.event_type] == "purchase"]
        out[windowed(F.frequency, w)] = buys.groupby(keys).size().reindex(out.index).fillna(0).astype("int64")
        spend = (buys[C.price] * buys[C.quantity]).groupby([buys[k] for k in keys]).sum()
        out[windowed(F.monetary, w)] = spend.reindex(out.index).fillna(0.0).astype("float64")
        rets = sub[sub[C.event_type] == "return"]
        out[windowed(F.returns, w)] = rets.groupby(keys).size().reindex(out.index).fillna(0).astype("int64")
        interest = sub[sub[C.event_type].isin(EVENT_WEIGHTS) & sub[C.category].notna()]
        weight = interest.assign(_w=interest[C.event_type].map(EVENT_WEIGHTS))
        by_cat = weight.groupby([*keys, C.category])["_w"].sum().reset_index()
        top = by_cat.sort_values([*keys, "_w", C.category], ascending=[True, True, False, True])
        top = top.drop_duplicates(keys).set_index(keys)
        total = by_cat.groupby(keys)["_w"].sum()
        out[windowed(F.top_category, w)] = top[C.category].reindex(out.index)
        out[windowed(F.category_share, w)] = (top["_w"] / total).reindex(out.index).astype("float64")
        ratio = (buys[C.price] / buys["_cat_median"]).groupby([buys[k] for k in keys]).mean()
        out[windowed(F.price_index, w)] = ratio.reindex(out.index).astype("float64")
        out[windowed(F.avg_price, w)] = buys.groupby(keys)[C.price].mean().reindex(out.index).astype("float64")
    recent = _last_items(ev, keys, recent_n)
    out[F.last_items] = [recent.get(k, []) for k in out.index]
    out[C.event_timestamp] = end_of_day(day)
    return out.reset_index()


def item_window_features(events: pd.DataFrame, items: pd.DataFrame, prices: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """Per catalog item as of the end of ``day``: distinct buyers, views, purchases and conversion (purchases on
    channels that log views ÷ views; 0 without views) over 7/30/90 days; the day's price, its discount off the
    list price, the competitor's price and the gap to it (``price ÷ competitor − 1``)."""
    catalog = items.drop_duplicates(C.item_id, keep="last").sort_values(C.item_id)
    out = catalog[[C.item_id]].set_index(C.item_id)
    for w in WINDOWS:
        sub = _in_window(events, day, w)
        buys = sub[sub[C.event_type] == "purchase"]
        views = sub[sub[C.event_type] == "view"].groupby(C.item_id).size().reindex(out.index).fillna(0)
        online_buys = buys[buys[C.channel].isin(VIEW_CHANNELS)].groupby(C.item_id).size().reindex(out.index).fillna(0)
        out[windowed(F.buyers, w)] = buys.groupby(C.item_id)[C.customer_id].nunique().reindex(out.index).fillna(0)
        out[windowed(F.views, w)] = views
        out[windowed(F.sales, w)] = buys.groupby(C.item_id).size().reindex(out.index).fillna(0)
        out[windowed(F.conversion, w)] = (online_buys / views.where(views > 0)).fillna(0.0)
        out = out.astype({windowed(n, w): "int64" for n in (F.buyers, F.views, F.sales)})
    known = _in_window(prices, day, HISTORY_DAYS).sort_values(C.event_timestamp)
    latest = known.drop_duplicates(C.item_id, keep="last").set_index(C.item_id)
    list_price = catalog.set_index(C.item_id)[C.price].astype("float64")
    current = latest[C.price].reindex(out.index).astype("float64").fillna(list_price)
    out[F.current_price] = current
    out[F.discount] = 1.0 - current / list_price.where(list_price > 0)
    competitor = latest[C.competitor_price].reindex(out.index).astype("float64")
    out[C.competitor_price] = competitor
    out[F.competitor_gap] = current / competitor.where(competitor > 0) - 1.0
    out[C.event_timestamp] = end_of_day(day)
    return out.reset_index()


def customer_last_event(events: pd.DataFrame, day: dt.date, recent_n: int) -> pd.DataFrame:
    """Per customer active in the last 90 days, as of the end of ``day``: the last event's item, type, channel and
    price, and the live items (the latest distinct non-return items, newest first), which ``POST /events`` keeps
    up to date between daily runs (see ``omnicart.realtime``)."""
    ev = _in_window(events, day, HISTORY_DAYS)
    ev = ev[ev[C.customer_id].notna()]
    last = ev.sort_values([C.event_timestamp, C.event_id]).drop_duplicates(C.customer_id, keep="last")
    out = last.set_index(C.customer_id)[[C.item_id, C.event_type, C.channel, C.price]].sort_index()
    out.columns = [F.last_item_id, F.last_event_type, F.last_channel, F.last_price]
    live = _last_items(ev, [C.customer_id], recent_n)
    out[F.live_items] = [live.get(c, []) for c in out.index]
    out[C.event_timestamp] = end_of_day(day)
    return out.rename_axis(C.customer_id).reset_index()


def _lake_events(settings: Settings, first: dt.date, last: dt.date) -> pd.DataFrame:
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, first, last)
    if events.empty:
        return events
    events[C.event_timestamp] = pd.to_datetime(events[C.event_timestamp], utc=True)
    return events


def _identity_map_of(settings: Settings, day: dt.date) -> pd.DataFrame | None:
    days = [d for d in lake.partitions(settings.lake_dir, schemas.IDENTITY_MAP) if d <= day]
    return lake.read_table(settings.lake_dir, schemas.IDENTITY_MAP, days[-1], days[-1]) if days else None


def build_omnichannel_days(settings: Settings, start: dt.date, end: dt.date) -> dict[str, int]:
    """Compute and store the customer x channel, item window and last-event partitions of every day in [start, end]
    from the lake (each day only from what the lake held up to its end); returns the rows of the last day."""
    if end < start:
        raise ValueError(f"empty range {start}..{end}")
    events = _lake_events(settings, start - dt.timedelta(days=HISTORY_DAYS - 1), end)
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=end)
    prices = lake.read_table(settings.lake_dir, schemas.PRICES, start - dt.timedelta(days=HISTORY_DAYS - 1), end)
    if events.empty or items.empty:
        raise ValueError(f"no lake events or catalog up to {end}: ingest the days before building features")
    items_ts = pd.to_datetime(items[C.event_timestamp], utc=True)
    prices[C.event_timestamp] = pd.to_datetime(prices[C.event_timestamp], utc=True)
    rows: dict[str, int] = {}
    day = start
    while day <= end:
        known_items = items[items_ts <= end_of_day(day)]
        day_events = attribute_customers(_in_window(events, day, HISTORY_DAYS), _identity_map_of(settings, day))
        rows = {
            schemas.CUSTOMER_CHANNEL_FEATURES: _write(
                settings,
                schemas.CUSTOMER_CHANNEL_FEATURES,
                day,
                customer_channel_features(day_events, known_items, day, settings.recent_items_n),
            ),
            schemas.ITEM_WINDOW_FEATURES: _write(
                settings,
                schemas.ITEM_WINDOW_FEATURES,
                day,
                item_window_features(day_events, known_items, prices, day),
            ),
            schemas.CUSTOMER_LAST_EVENT: _write(
                settings,
                schemas.CUSTOMER_LAST_EVENT,
                day,
                customer_last_event(day_events, day, settings.recent_items_n),
            ),
        }
        day += dt.timedelta(days=1)
    return rows


# --- item text embeddings ------------------------------------------------------------------------------------------
def item_text_embeddings(items: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """One MiniLM vector per item, stamped with the end of ``day``: the recommender's own recipe
    (``text.encode(text.item_text(...))``), so the vectors it reads from Feast are those it would encode itself.

    No cache: this runs in the DAG beside training, which owns the cache file under the home directory."""
    catalog = items.drop_duplicates(C.item_id, keep="last").sort_values(C.item_id).reset_index(drop=True)
    vectors = text.encode(text.item_text(catalog))
    return pd.DataFrame(
        {
            C.item_id: catalog[C.item_id].astype(str),
            F.text_embedding: list(vectors),
            C.event_timestamp: end_of_day(day),
        }
    )


def build_text_embedding_days(settings: Settings, start: dt.date, end: dt.date) -> int:
    """Embed the catalog rows that landed on each day of [start, end] (new or changed items); returns rows written.

    Only that day's catalog partition is read, so re-running a day rewrites the same vectors and an unchanged
    catalog costs nothing; the Feast view never expires a vector, so older items stay served.
    """
    written = 0
    day = start
    while day <= end:
        items = lake.read_table(settings.lake_dir, schemas.ITEMS, day, day)
        frame = item_text_embeddings(items, day) if len(items) else pd.DataFrame()
        written += _write(settings, schemas.ITEM_TEXT_EMBEDDINGS, day, frame)
        day += dt.timedelta(days=1)
    return written
