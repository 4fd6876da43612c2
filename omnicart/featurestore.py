"""The Feast store of a home directory: SQLite online store, Parquet offline store, file registry.

The embedded default; a Redis online store or a SQL registry is a change of this config, not of the callers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from omnicart.settings import Settings

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
