"""The Feast store of the settings' profile.

Embedded (the default): SQLite online store, file registry, both under home. Production: Redis online store
(``redis_url``) and a SQL registry in PostgreSQL (``postgres_url``, schema ``feast``). Both keep the file offline store
over the lake's Parquet partitions (in production the home on shared storage): the feature views' sources are the
lake's files, and Feast's PostgreSQL offline store reads only PostgreSQL tables, so it would need a second copy of
the lake in the database for the same point-in-time joins. The callers never see which profile runs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from omnicart import lake, schemas, stores, text
from omnicart.schemas import C, F
from omnicart.settings import Settings

log = logging.getLogger(__name__)

PROJECT = "omnicart"


def store_config(settings: Settings) -> dict[str, Any]:
    """The registry and online store of the settings' profile, as ``RepoConfig`` takes them."""
    if settings.profile == "production":
        return {
            "registry": {
                "registry_type": "sql",
                "path": settings.postgres_store_url("feast"),
                "cache_ttl_seconds": 60,
            },
            "online_store": {"type": "redis", "connection_string": stores.redis_connection_string(settings.redis_url)},
        }
    return {
        "registry": str(settings.feast_dir / "registry.db"),
        "online_store": {"type": "sqlite", "path": str(settings.feast_dir / "online.db")},
    }


def feature_store(settings: Settings) -> Any:
    """A FeatureStore of the settings' profile over ``<home>/feast`` (creates the folder, and in production the
    PostgreSQL schemas, if missing)."""
    from feast import FeatureStore, RepoConfig

    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    if settings.profile == "production":
        stores.ensure_postgres_schemas(settings)
    config = RepoConfig(
        project=PROJECT,
        provider="local",
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=settings.feast_dir,
        **store_config(settings),
    )
    return FeatureStore(config=config)


def apply(settings: Settings, objects: Sequence[Any]) -> None:
    """``feast apply`` of the given definitions (idempotent)."""
    feature_store(settings).apply(list(objects))


def materialize(settings: Settings, first: dt.date, last: dt.date) -> None:
    """Load the features of the days [first, last] into the online store; re-running rewrites the same rows."""
    start = dt.datetime.combine(first, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    feature_store(settings).materialize(start_date=start, end_date=end)


def online_features(store: Any, refs: Sequence[str], key: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Online feature values for each id (a dict per id, None where the store has no value)."""
    return online_rows(store, refs, [{key: i} for i in ids])


def view_store(settings: Settings, view: str, table: str, purpose: str) -> Any | None:
    """The feature store when feature view ``view`` can be read: ``materialize_features`` has written its lake
    ``table`` and the view is applied; otherwise None, logged: the caller trains without it."""
    if not lake.partitions(settings.lake_dir, table):
        log.warning("no %s in the lake: %s trains without them", table, purpose)
        return None
    store = feature_store(settings)
    try:
        store.get_feature_view(view)
    except Exception:  # Feast raises its own not-found error types per registry kind
        log.warning("feature view %s is not applied: %s trains without it", view, purpose)
        return None
    return store


def item_window_store(settings: Settings, purpose: str) -> Any | None:
    """The feature store when its item windows (``item_window``) can be read; otherwise None, logged."""
    return view_store(settings, F.item_window_view, schemas.ITEM_WINDOW_FEATURES, purpose)


def customer_channel_store(settings: Settings, purpose: str) -> Any | None:
    """The feature store when its customer × channel windows (``customer_channel``) can be read; otherwise None."""
    return view_store(settings, F.customer_channel_view, schemas.CUSTOMER_CHANNEL_FEATURES, purpose)


def item_text_store(settings: Settings, purpose: str) -> Any | None:
    """The feature store when its item text vectors (``item_text``) can be read; otherwise None, logged."""
    return view_store(settings, F.item_text_view, schemas.ITEM_TEXT_EMBEDDINGS, purpose)


def features_at(store: Any, refs: Sequence[str], keys: pd.DataFrame, entities: Sequence[str]) -> pd.DataFrame:
    """Point-in-time features from the offline store: for each row of ``keys`` (the ``entities`` columns and
    event_timestamp; a naive time is taken as UTC) the values as the store knew them at that time. One row per key,
    in order; NaN where the view had no row within its TTL (the file offline store drops such entity rows, so they are
    joined back here)."""
    names = [ref.split(":", 1)[1] for ref in refs]
    on = [*entities, C.event_timestamp]
    keys = keys[on].reset_index(drop=True)
    keys[C.event_timestamp] = pd.to_datetime(keys[C.event_timestamp], utc=True)
    found = store.get_historical_features(entity_df=keys.drop_duplicates(), features=list(refs)).to_df()
    found[C.event_timestamp] = pd.to_datetime(found[C.event_timestamp], utc=True)
    found = found.drop_duplicates(on)[[*on, *names]]
    return keys.merge(found, on=on, how="left")


def item_features_at(store: Any, refs: Sequence[str], keys: pd.DataFrame) -> pd.DataFrame:
    """``features_at`` of item views: ``keys`` holds item_id and event_timestamp."""
    return features_at(store, refs, keys, [C.item_id])


def item_text_at(store: Any, item_ids: Sequence[str], at: pd.Timestamp) -> np.ndarray:
    """Each item's latest text vector (view ``item_text``) that the offline store held at ``at``: one row of
    ``text.DIM`` float32 per item, in order; NaN for an item without one by then (a row stamped after ``at``, or
    none at all). The view never expires a vector, so an item embedded long ago still has its vector."""
    keys = pd.DataFrame({C.item_id: pd.Series(list(item_ids), dtype=str), C.event_timestamp: pd.Timestamp(at)})
    found = item_features_at(store, [f"{F.item_text_view}:{F.text_embedding}"], keys)[F.text_embedding]
    out = np.full((len(keys), text.DIM), np.nan, dtype=np.float32)
    for n, vector in enumerate(found):
        if vector is not None and np.ndim(vector) == 1 and len(vector) == text.DIM:
            out[n] = vector
    return out


def online_rows(store: Any, refs: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Online feature values for entity rows with several keys (e.g. customer_id and channel); None where missing."""
    response = store.get_online_features(features=list(refs), entity_rows=list(rows)).to_dict()
    return [{name: values[n] for name, values in response.items()} for n in range(len(rows))]
