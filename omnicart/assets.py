"""The Airflow Assets of the lake: one per table, named here so producer and consumer DAGs agree.

No Airflow import: DAG files build ``Asset(uri=lake_uri(table), name=...)`` from these strings at parse time.
"""

from __future__ import annotations

from omnicart import schemas

SCHEME = "omnicart"
# Tables ingest_omnichannel writes (an Asset each), and those materialize_features waits for (all of them).
INGESTED_TABLES: tuple[str, ...] = (
    schemas.ITEMS,
    schemas.CUSTOMERS,
    schemas.IDENTITIES,
    schemas.PRICES,
    schemas.EVENTS,
    schemas.SUPPORT,
    schemas.QUARANTINE,
    schemas.IDENTITY_MAP,
)
FEATURE_INPUTS: tuple[str, ...] = (
    schemas.ITEMS,
    schemas.CUSTOMERS,
    schemas.PRICES,
    schemas.EVENTS,
    schemas.IDENTITY_MAP,
)
ONLINE_STORE_URI = f"{SCHEME}://feast/online"
DAY_KEY = "day"  # the asset event's extra: the day (ISO date) whose partition the task wrote
LAST_DAY_KEY = "last_day"  # with DAY_KEY, when one event covers a range of days (an import): the last of them
# An import writes whichever tables its mapping names, so its task declares an alias and attaches the lake tables
# it wrote at run time; the import asset says "new data for these days" to materialize_features, whose inputs a
# bring-your-own-data import rarely updates all together (the daily ingest does).
IMPORT_ALIAS = "omnicart_import"
IMPORT_URI = f"{SCHEME}://lake/import"
IMPORT_ASSET_NAME = "lake_import"


def lake_uri(table: str) -> str:
    """The Asset URI of a lake table, e.g. ``omnicart://lake/events``."""
    return f"{SCHEME}://lake/{table}"


def lake_asset_name(table: str) -> str:
    return f"lake_{table}"
