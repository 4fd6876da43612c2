"""The Feast store of a home directory: SQLite online store, Parquet offline store, file registry.

The embedded default; a Redis online store or a SQL registry is a change of this config, not of the callers.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from omnicart import lake, schemas
from omnicart.schemas import C, F
from omnicart.settings import Settings

log = logging.getLogger(__name__)

PROJECT = "omnicart"


def feature_store(settings: Settings) -> Any:
    """A FeatureStore over ``<home>/feast`` (creates the folder; Feast writes the registry there)."""
    from feast import FeatureStore, RepoConfig

    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(settings.feast_dir / "registry.db"),
        online_store={"type": "sqlite", "path": str(settings.feast_dir / "online.db")},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=settings.feast_dir,
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
    response = store.get_online_features(features=list(refs), entity_rows=[{key: i} for i in ids]).to_dict()
    return [{name: values[row] for name, values in response.items()} for row in range(len(ids))]


def item_window_store(settings: Settings, purpose: str) -> Any | None:
    """The feature store when its item windows can be read (``materialize_features`` has run and the view is
    applied); otherwise None, logged: the caller trains without them."""
    if not lake.partitions(settings.lake_dir, schemas.ITEM_WINDOW_FEATURES):
        log.warning("no item window features in the lake: %s trains without Feast item features", purpose)
        return None
    store = feature_store(settings)
    try:
        store.get_feature_view(F.item_window_view)
    except Exception:  # Feast raises its own not-found error types per registry kind
        log.warning(
            "feature view %s is not applied: %s trains without Feast item features", F.item_window_view, purpose
        )
        return None
    return store


def item_features_at(store: Any, refs: Sequence[str], keys: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time item features from the offline store: for each row of ``keys`` (item_id, event_timestamp in
    UTC) the values as the store knew them at that time. One row per key, in order; NaN where the view had no row
    within its TTL (the file offline store drops such entity rows, so they are joined back here)."""
    names = [ref.split(":", 1)[1] for ref in refs]
    keys = keys[[C.item_id, C.event_timestamp]].reset_index(drop=True)
    entities = keys.drop_duplicates()
    found = store.get_historical_features(entity_df=entities, features=list(refs)).to_df()
    found[C.event_timestamp] = pd.to_datetime(found[C.event_timestamp], utc=True)
    found = found.drop_duplicates([C.item_id, C.event_timestamp])[[C.item_id, C.event_timestamp, *names]]
    return keys.merge(found, on=[C.item_id, C.event_timestamp], how="left")
