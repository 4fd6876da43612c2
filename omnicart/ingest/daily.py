"""One day's move from the landing area (raw, may hold PII) into the lake (pseudonymised).

Both steps replace that day's partitions, so re-running a day is idempotent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from omnicart import lake, schemas
from omnicart.privacy.pseudonymise import pseudonymise, scrub_columns, token
from omnicart.schemas import C
from omnicart.settings import Settings

# Tables of one simulated day and the ShopDay attribute that holds each.
LANDED_TABLES: dict[str, str] = {
    schemas.ITEMS: "items",
    schemas.CUSTOMERS: "customers",
    schemas.IDENTITIES: "identities",
    schemas.EVENTS: "events",
    schemas.PRICES: "prices",
    schemas.SUPPORT: "support",
}
FREE_TEXT_COLUMNS = (C.question, C.answer)


@dataclass(frozen=True)
class DayCounts:
    """Rows per table moved for one day."""

    day: dt.date
    rows: dict[str, int]


def land_simulated_day(settings: Settings, day: dt.date) -> DayCounts:
    """Write the shop simulator's data of ``day`` into the landing area, as the shop's systems would deliver it."""
    from omnicart.datasets.simulator import ShopSimulator

    shop_day = ShopSimulator(settings).day(day)
    rows = {}
    for table, attribute in LANDED_TABLES.items():
        frame = getattr(shop_day, attribute)
        lake.write_partition(settings.landing_dir, table, day, frame)
        rows[table] = len(frame)
    return DayCounts(day, rows)


def ingest_day(settings: Settings, day: dt.date) -> DayCounts:
    """Move ``day`` from landing to the lake, replacing personal data by keyed tokens before anything is written."""
    key = settings.secret("pseudonym_key")
    rows = {}
    for table in LANDED_TABLES:
        frame = lake.read_table(settings.landing_dir, table, day, day)
        frame = scrub_columns(pseudonymise(frame, key), key, FREE_TEXT_COLUMNS)
        if C.identifier in frame.columns and C.channel in frame.columns:
            frame = _tokenise_identifiers(frame, key)
        lake.write_partition(settings.lake_dir, table, day, frame)
        rows[table] = len(frame)
    return DayCounts(day, rows)


def _tokenise_identifiers(frame, key: str):
    """Replace each channel identifier by the token its kind gets elsewhere, so events join the identities table."""
    out = frame.copy()
    kinds = out[C.channel].map(schemas.CHANNEL_IDENTIFIER)
    mask = out[C.identifier].notna() & kinds.notna()
    out[C.identifier] = out[C.identifier].astype(object)
    out.loc[mask, C.identifier] = [
        token(key, kind, str(value)) for kind, value in zip(kinds[mask], out.loc[mask, C.identifier], strict=True)
    ]
    return out


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from start to end, inclusive."""
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


def land_and_ingest(settings: Settings, start: dt.date, end: dt.date) -> list[DayCounts]:
    """Simulate, land and ingest each day of [start, end]; each day's partitions are replaced, never appended."""
    return [ingest_day(settings, land_simulated_day(settings, day).day) for day in days_between(start, end)]
