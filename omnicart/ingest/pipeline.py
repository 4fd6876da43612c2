"""Channel files into the lake: read, pseudonymise, validate, then write kept rows and the quarantine.

Order matters for the data rules: every file is read and checked before anything is written (a malformed file
leaves the lake untouched), and personal data is tokenised before validation so that not even a quarantined row
holds it in clear text. Kept rows go to their lake table's day partitions; quarantined rows to the ``quarantine``
table, partitioned by the row's own day (or the run's day when it has none).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from omnicart import lake, schemas
from omnicart.ingest import readers
from omnicart.ingest.readers import TableSchema
from omnicart.ingest.validate import (
    SUBJECT_TOKEN,
    QuarantineSummary,
    ValidationResult,
    concat_results,
    empty_quarantine,
    validate,
)
from omnicart.privacy.pseudonymise import scrub_columns, token
from omnicart.privacy.suppression import suppressed
from omnicart.schemas import C
from omnicart.settings import Settings

FREE_TEXT_COLUMNS = (C.question, C.answer)
# Tables that others reference are validated (and so known) first.
_TABLE_ORDER = (schemas.ITEMS, schemas.CUSTOMERS, schemas.IDENTITIES, schemas.PRICES, schemas.EVENTS, schemas.SUPPORT)


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did: counts per lake table (rows in = kept + quarantined) and the partitions it wrote."""

    by_table: dict[str, QuarantineSummary]
    partitions: dict[str, list[dt.date]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def summary(self) -> QuarantineSummary:
        total = QuarantineSummary.empty()
        for s in self.by_table.values():
            total = total + s
        return total


def pseudonymise_frame(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Personal-data columns to keyed tokens, channel identifiers to the token of their kind, free text scrubbed.

    Gives the same tokens as ``privacy.pseudonymise`` (one HMAC per distinct value, so large files stay fast).
    """
    if not key:
        raise ValueError("a pseudonymisation key is required")
    out = frame.copy()
    for column in schemas.PII_COLUMNS:
        if column in out.columns:
            out[column] = _tokens(out[column], key, column)
    if C.identifier in out.columns and C.channel in out.columns:
        kinds = out[C.channel].map(schemas.CHANNEL_IDENTIFIER)
        values = out[C.identifier].astype(object)
        for kind in kinds.dropna().unique():
            mask = (kinds == kind) & values.notna()
            values[mask] = _tokens(values[mask], key, kind)
        out[C.identifier] = values
    present = [c for c in FREE_TEXT_COLUMNS if c in out.columns]
    return scrub_columns(out, key, present) if present else out


def with_subject_token(frame: pd.DataFrame, key: str, suppress: frozenset[str]) -> pd.DataFrame:
    """Add the token of each row's customer id, so erased customers' rows are recognised (only when any are)."""
    if not suppress or C.customer_id not in frame.columns:
        return frame
    return frame.assign(**{SUBJECT_TOKEN: _tokens(frame[C.customer_id], key, C.customer_id)})


def _tokens(values: pd.Series, key: str, kind: str) -> pd.Series:
    mask = values.notna()
    text = values[mask].map(lambda v: v if isinstance(v, str) else str(v))
    lookup = {v: token(key, kind, v) for v in pd.unique(text)}
    out = values.astype(object).copy()
    out[mask] = text.map(lookup)
    return out


def known_values(settings: Settings, table: str, column: str, end: dt.date | None = None) -> set[str]:
    """The distinct values of a lake table's column (e.g. the catalog's item ids) up to ``end``."""
    frame = lake.read_table(settings.lake_dir, table, end=end, columns=[column])
    return set(frame[column].dropna()) if column in frame.columns else set()


def ingest_files(
    settings: Settings,
    files: Mapping[str, str | Path | Sequence[str | Path]],
    *,
    day: dt.date | None = None,
    encoding: str = "utf-8",
    limit: int | None = None,
) -> IngestReport:
    """Ingest channel files, e.g. ``{"clickstream": [...], "till": "till.csv", "catalog": "items.parquet"}``.

    With ``day`` (a daily run) only rows of that UTC day are accepted, and each touched table's partition of that day
    is replaced (also when nothing was kept), so a re-run is idempotent. Raises ``MalformedFileError`` before
    writing anything when any file cannot be read.
    """
    started = time.perf_counter()
    sources = []
    for channel, paths in files.items():
        schema = readers.CHANNEL_SCHEMAS[channel]
        for path in [paths] if isinstance(paths, str | Path) else paths:
            sources.append((schema, readers.read_channel(path, schema, encoding=encoding, limit=limit)))
    frames = [(schema, src.frame, str(src.path)) for schema, src in sources]
    return _validate_and_write(settings, frames, day=day, started=started)


def ingest_landed_day(settings: Settings, day: dt.date) -> IngestReport:
    """Validate and ingest one day of the landing area (as ``land_simulated_day`` wrote it) into the lake.

    The validating counterpart of ``daily.ingest_day``: same tables and tokens, plus quarantine.
    """
    started = time.perf_counter()
    frames = []
    for table, schema in readers.TABLE_SCHEMAS.items():
        path = lake.partition_dir(settings.landing_dir, table, day) / lake.PART_FILE
        if path.is_file():
            src = readers.read_file(path, fmt="parquet", required=schema.required)
            frames.append((schema, src.frame, str(path)))
    return _validate_and_write(settings, frames, day=day, started=started)


def _validate_and_write(
    settings: Settings,
    frames: Iterable[tuple[TableSchema, pd.DataFrame, str]],
    *,
    day: dt.date | None,
    started: float,
) -> IngestReport:
    key = settings.secret("pseudonym_key")
    window = None
    if day is not None:
        start = pd.Timestamp(day, tz="UTC")
        window = (start, start + pd.Timedelta(days=1))
    blocked = suppressed(settings)
    order = {t: i for i, t in enumerate(_TABLE_ORDER)}
    frames = sorted(frames, key=lambda f: order.get(f[0].table, len(order)))
    results: dict[str, list[ValidationResult]] = {}
    batch_known: dict[str, set[str]] = {}
    for schema, frame, source_file in frames:
        references = {}
        for column, table in schema.references.items():
            known = batch_known.get(table, set()) | known_values(settings, table, column, end=day)
            if known:  # nothing to check against (no catalog yet): the check is skipped, not failed
                references[column] = known
        result = validate(
            with_subject_token(pseudonymise_frame(frame, key), key, blocked),
            schema,
            source_file=source_file,
            references=references,
            window=window,
            suppress=blocked,
        )
        results.setdefault(schema.table, []).append(result)
        if schema.table == schemas.ITEMS:
            batch_known.setdefault(schema.table, set()).update(result.kept[C.item_id])
    kept = {table: [r.kept for r in rs] for table, rs in results.items()}
    quarantined, _ = concat_results(r for rs in results.values() for r in rs)
    partitions = write_tables(settings, kept, quarantined, day=day)
    by_table = {table: concat_results(rs)[1] for table, rs in results.items()}
    return IngestReport(by_table, partitions, round(time.perf_counter() - started, 3))


def write_tables(
    settings: Settings,
    kept: Mapping[str, Sequence[pd.DataFrame]],
    quarantined: pd.DataFrame,
    *,
    day: dt.date | None = None,
    fallback_day: dt.date | None = None,
) -> dict[str, list[dt.date]]:
    """Write kept rows to their tables' day partitions and quarantined rows to the quarantine table.

    With ``day`` every table in ``kept`` gets exactly that day's partition (replaced); otherwise each row goes to the
    day of its timestamp and each touched day is replaced. Quarantine partitions are merged: rows from the same
    source files are replaced, rows from other files stay.
    """
    written: dict[str, list[dt.date]] = {}
    for table, frames in kept.items():
        nonempty = [f for f in frames if len(f)]
        frame = pd.concat(nonempty, ignore_index=True) if nonempty else (frames[0] if frames else pd.DataFrame())
        if day is not None:
            lake.write_partition(settings.lake_dir, table, day, frame)
            written[table] = [day]
            continue
        days = frame[C.event_timestamp].dt.date
        for d, part in frame.groupby(days, sort=True):
            lake.write_partition(settings.lake_dir, table, d, part.reset_index(drop=True))
        written[table] = sorted(set(days))
    if len(quarantined):
        if day is not None:  # a daily run owns its day's quarantine, whatever the rows' own timestamps say
            qdays = pd.Series(day, index=quarantined.index)
        else:
            fallback = fallback_day or _latest_day(kept) or dt.date(1970, 1, 1)
            stamps = quarantined[C.event_timestamp]
            qdays = stamps.dt.date.where(stamps.notna(), fallback)
        for d, part in quarantined.groupby(qdays, sort=True):
            write_quarantine(settings, d, part)
        written[schemas.QUARANTINE] = sorted(set(qdays))
    return written


def write_quarantine(settings: Settings, day: dt.date, rows: pd.DataFrame) -> None:
    """Merge quarantined rows into the day's quarantine partition, replacing earlier rows of the same files."""
    path = lake.partition_dir(settings.lake_dir, schemas.QUARANTINE, day) / lake.PART_FILE
    frame = rows.reset_index(drop=True)
    if path.is_file():
        earlier = pq.read_table(path).to_pandas()
        earlier = earlier[~earlier[C.source_file].isin(set(rows[C.source_file]))]
        if len(earlier):
            frame = pd.concat([earlier, frame], ignore_index=True)
    frame = frame if len(frame) else empty_quarantine()
    lake.write_partition(settings.lake_dir, schemas.QUARANTINE, day, frame)


def _latest_day(kept: Mapping[str, Sequence[pd.DataFrame]]) -> dt.date | None:
    days = [f[C.event_timestamp].max().date() for fs in kept.values() for f in fs if len(f)]
    return max(days) if days else None
