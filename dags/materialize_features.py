"""Feature partitions from the lake, then `feast apply` and materialisation: whenever ingest updated the lake."""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Asset, AssetAll, Param, dag, task

from omnicart.assets import (
    DAY_KEY,
    FEATURE_INPUTS,
    IMPORT_ASSET_NAME,
    IMPORT_URI,
    LAST_DAY_KEY,
    ONLINE_STORE_URI,
    lake_asset_name,
    lake_uri,
)
from omnicart.schemas import (
    CUSTOMER_CHANNEL_FEATURES,
    CUSTOMER_FEATURES,
    CUSTOMER_LAST_EVENT,
    ITEM_FEATURES,
    ITEM_TEXT_EMBEDDINGS,
    ITEM_WINDOW_FEATURES,
)

DOC = """
### materialize_features
Runs when `ingest_omnichannel` has updated every lake table features read (events, items, customers, prices,
identity map), or when `import_data` has imported a shop's files (`omnicart://lake/import`). The days to build are
those the triggering asset events name (from the first `extra.day` to the last `extra.day` or `extra.last_day`: an
import names a range); a manual run takes `first_day`/`last_day`, or else the day before the run.

1. `customer_item_stats`: the skeleton's `customer_stats` / `item_stats` partitions (recommend_v1).
2. `omnichannel_features`: customer × channel windows (7/30/90 days: recency, frequency, monetary, returns, category
   affinity, price sensitivity, last items), item windows (popularity, conversion, price, discount, competitor gap)
   and the batch history of the real-time features.
3. `text_embeddings`: MiniLM vectors of the item text (`omnicart.text.item_text`, the recommender's recipe) for the
   catalog rows that landed on those days; the recommender's training reads them (view `item_text`).
4. `apply_and_materialize`: `feast apply` of feature_repo/, then load the days into the online store (up to the newest
   partition, so re-running an old day never rolls the online store back).

Each day's partitions are computed from the lake as of that day only and replaced on a re-run: idempotent, and a
backfill equals the daily runs.
"""

DEFAULT_ARGS = {"owner": "ml-team", "retries": 1, "retry_delay": dt.timedelta(minutes=1)}


def _asset(table: str) -> Asset:
    return Asset(uri=lake_uri(table), name=lake_asset_name(table), group="omnicart-lake")


ONLINE_STORE = Asset(uri=ONLINE_STORE_URI, name="feast_online_store", group="omnicart-features")
IMPORTED = Asset(uri=IMPORT_URI, name=IMPORT_ASSET_NAME, group="omnicart-lake")


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


def _window(params, triggering_asset_events, run_date) -> dict:
    """[first, last] day to build: the params of a manual run, else the days the triggering asset events name, else
    the day that ended at the run's logical date (or when it was triggered)."""
    first, last = params.get("first_day"), params.get("last_day")
    if first or last:
        first, last = first or last, last or first
    else:
        days = sorted(
            {
                str(event.extra[key])
                for events in (triggering_asset_events or {}).values()
                for event in events
                for key in (DAY_KEY, LAST_DAY_KEY)
                if key in (event.extra or {})
            }
        )
        if days:
            first, last = days[0], days[-1]
        else:
            first = last = (run_date - dt.timedelta(microseconds=1)).date().isoformat()
    if first > last:
        raise ValueError(f"first_day {first} is after last_day {last}")
    return {"first": first, "last": last}


def _days(window: dict) -> tuple[dt.date, dt.date]:
    return dt.date.fromisoformat(window["first"]), dt.date.fromisoformat(window["last"])


@dag(
    dag_id="materialize_features",
    # every input updated by the daily ingest, or an import of whatever tables a shop's mapping feeds
    schedule=AssetAll(*(_asset(table) for table in FEATURE_INPUTS)) | IMPORTED,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["omnicart", "features", "feast"],
    doc_md=DOC,
    params={
        "first_day": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Manual runs: first day (YYYY-MM-DD) to build; empty: the days the asset events name.",
        ),
        "last_day": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Manual runs: last day to build (defaults to first_day).",
        ),
    },
)
def materialize_features():
    @task
    def window(params=None, triggering_asset_events=None, logical_date=None, dag_run=None) -> dict:
        return _window(params, triggering_asset_events, logical_date or dag_run.run_after)

    @task(outlets=[_asset(CUSTOMER_FEATURES), _asset(ITEM_FEATURES)])
    def customer_item_stats(days: dict) -> dict:
        from omnicart.features import build_feature_days

        return build_feature_days(_settings(), *_days(days))

    @task(outlets=[_asset(t) for t in (CUSTOMER_CHANNEL_FEATURES, ITEM_WINDOW_FEATURES, CUSTOMER_LAST_EVENT)])
    def omnichannel_features(days: dict) -> dict:
        from omnicart.features import build_omnichannel_days

        return build_omnichannel_days(_settings(), *_days(days))

    @task(outlets=[_asset(ITEM_TEXT_EMBEDDINGS)])
    def text_embeddings(days: dict) -> int:
        from omnicart.features import build_text_embedding_days

        return build_text_embedding_days(_settings(), *_days(days))

    @task(outlets=[ONLINE_STORE])
    def apply_and_materialize(days: dict) -> dict:
        from feature_repo.apply import apply_and_materialize as load

        return load(_settings(), *_days(days))

    days = window()
    built = [customer_item_stats(days), omnichannel_features(days), text_embeddings(days)]
    built >> apply_and_materialize(days)


materialize_features()
