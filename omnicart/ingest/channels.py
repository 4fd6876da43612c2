"""One day of one landing table through the validating ingest pipeline: the unit of work of ``ingest_omnichannel``.

The landing area holds a day's file per table (``land_simulated_day`` writes them for the simulator; a shop's export
job would write the same layout). Each is ingested as its channel (``readers.CHANNEL_SCHEMAS``), so every task
reports rows in = kept + quarantined for its own feed. Run the catalog first: the other feeds' item ids are checked
against it. Heavy imports stay inside the functions, so a DAG file can import this module at parse time.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from omnicart import schemas
from omnicart.settings import Settings

log = logging.getLogger(__name__)

# Channel (a readers.CHANNEL_SCHEMAS name) -> the landing and lake table it feeds, in the order they must run.
LANDING_CHANNELS: dict[str, str] = {
    "catalog": schemas.ITEMS,
    "crm": schemas.CUSTOMERS,
    "identities": schemas.IDENTITIES,
    "price_history": schemas.PRICES,
    "events": schemas.EVENTS,
    "support": schemas.SUPPORT,
}


def landing_file(settings: Settings, table: str, day: dt.date) -> Path:
    """Where the landing area keeps a table's file of ``day``."""
    from omnicart import lake

    return lake.partition_dir(settings.landing_dir, table, day) / lake.PART_FILE


def ingest_landed_channel(settings: Settings, day: dt.date, channel: str) -> dict[str, Any]:
    """Validate, pseudonymise and write one channel's landing file of ``day`` into the lake (replacing that day's
    partition) and its rejects into the quarantine; logs and returns rows in, kept and quarantined (by reason).

    A missing landing file is logged and leaves the lake untouched (0 rows); a malformed one raises before anything
    is written.
    """
    from omnicart.ingest.pipeline import ingest_files

    table = LANDING_CHANNELS[channel]
    path = landing_file(settings, table, day)
    if not path.is_file():
        log.warning("%s %s: no landing file at %s; the lake keeps what it had", channel, day, path)
        return {"channel": channel, "table": table, "day": day.isoformat(), "rows_in": 0, "kept": 0, "quarantined": 0}
    report = ingest_files(settings, {channel: path}, day=day)
    counts = report.summary.as_dict()
    log.info(
        "%s %s -> lake/%s: rows in %d, kept %d, quarantined %d %s (%.2fs)",
        channel,
        day,
        table,
        counts["rows_in"],
        counts["kept"],
        counts["quarantined"],
        {k: v for k, v in counts.items() if k not in ("rows_in", "kept", "quarantined")},
        report.seconds,
    )
    return {"channel": channel, "table": table, "day": day.isoformat(), **counts}
