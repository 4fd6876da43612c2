"""``feast apply`` of this repo and materialisation into the online store, for the DAGs and the CLI."""

from __future__ import annotations

import datetime as dt

from feature_repo import definitions
from omnicart import featurestore, lake, schemas
from omnicart.schemas import F
from omnicart.settings import Settings

# Batch-fed view -> the lake table its source reads.
VIEW_TABLES: dict[str, str] = {
    F.customer_view: schemas.CUSTOMER_FEATURES,
    F.item_view: schemas.ITEM_FEATURES,
    F.customer_channel_view: schemas.CUSTOMER_CHANNEL_FEATURES,
    F.item_window_view: schemas.ITEM_WINDOW_FEATURES,
    F.customer_realtime_view: schemas.CUSTOMER_LAST_EVENT,
    F.customer_recent_view: schemas.CUSTOMER_FEATURES,
    F.item_text_view: schemas.ITEM_TEXT_EMBEDDINGS,
}
# Views whose rows never expire: materialised from their first partition, so a vector written long ago is served.
NEVER_EXPIRE = (F.item_text_view,)


def materialize_windows(settings: Settings, first: dt.date, last: dt.date) -> dict[str, tuple[dt.date, dt.date]]:
    """Per view, the days to load: [first, the newest partition or ``last``, whichever is later].

    Ending at the newest partition keeps the online store at the latest values when an older day is re-run or
    backfilled (Feast writes the newest row of the window). Views with no partition yet are left out.
    """
    windows = {}
    for view, table in VIEW_TABLES.items():
        days = lake.partitions(settings.lake_dir, table)
        if not days:
            continue
        start = days[0] if view in NEVER_EXPIRE else first
        windows[view] = (min(start, last), max(last, days[-1]))
    return windows


def apply_and_materialize(settings: Settings, first: dt.date, last: dt.date) -> dict[str, list[str]]:
    """Register every definition with Feast, then load the days [first, last] into the online store (see
    ``materialize_windows``); returns each view's loaded range."""
    featurestore.apply(settings, definitions())
    store = featurestore.feature_store(settings)
    windows = materialize_windows(settings, first, last)
    by_range: dict[tuple[dt.date, dt.date], list[str]] = {}
    for view, days in windows.items():
        by_range.setdefault(days, []).append(view)
    for (start, end), views in sorted(by_range.items()):
        store.materialize(
            start_date=dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            end_date=dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC),
            feature_views=sorted(views),
        )
    return {view: [start.isoformat(), end.isoformat()] for view, (start, end) in sorted(windows.items())}
