"""Channel readers: CSV, Parquet and JSON-lines files read against a small declarative schema per channel table.

Readers keep each row's line (text formats) or row number (Parquet) so that a quarantined row can cite its source.
Anything wrong with the *file* as a whole (unreadable, wrong encoding, truncated, required columns missing) raises
``MalformedFileError`` before anything is written; anything wrong with a *row* is left to ``validate``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from omnicart import schemas
from omnicart.schemas import C

Dtype = Literal["str", "int", "float", "bool", "timestamp", "date"]
Format = Literal["csv", "parquet", "jsonl"]

# Columns a reader adds to every frame; validation removes them from what it keeps.
LINE = "__line__"  # 1-based line (CSV, JSON lines) or row (Parquet) of the record in its file
PARSE_ERROR = "__parse_error__"  # set when the record itself could not be parsed (bad JSON, wrong field count)


class MalformedFileError(ValueError):
    """A file that cannot be read as a whole; nothing from it is written."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Column:
    """One column of a channel table: its type, whether a value is required, and what values are plausible."""

    name: str
    dtype: Dtype = "str"
    required: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None

    @property
    def pii(self) -> bool:
        return self.name in schemas.PII_COLUMNS


@dataclass(frozen=True)
class TableSchema:
    """A channel table: its columns, the lake table it feeds, its duplicate key and its foreign keys.

    ``references`` maps a column to the lake table whose same-named column must hold the value (e.g. an event's
    item_id must be in the catalog); nulls are not checked.
    """

    name: str
    table: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    timestamp: str | None = C.event_timestamp
    references: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def _events(name: str, channels: Sequence[str], event_types: Sequence[str] = schemas.EVENT_TYPES) -> TableSchema:
    return TableSchema(
        name=name,
        table=schemas.EVENTS,
        columns=(
            Column(C.event_id, required=True),
            Column(C.event_timestamp, "timestamp", required=True),
            Column(C.customer_id),
            Column(C.channel, required=True, allowed=tuple(channels)),
            Column(C.identifier),
            Column(C.event_type, required=True, allowed=tuple(event_types)),
            Column(C.item_id, required=True),
            Column(C.quantity, "int", min=1),
            Column(C.price, "float", min=0),
            Column(C.order_id),
            Column(C.rating, "float", min=1, max=5),
        ),
        key=(C.event_id,),
        references={C.item_id: schemas.ITEMS},
    )


# Channel tables as the shop's systems deliver them, each declared once.
CLICKSTREAM = _events("clickstream", ("web", "app"))
TILL = _events("till", ("store",), ("purchase", "return"))
SOCIAL = _events("social", ("social",))
EVENTS = _events("events", schemas.CHANNELS)  # any channel, e.g. the simulator's merged feed
CRM = TableSchema(
    name="crm",
    table=schemas.CUSTOMERS,
    columns=(
        Column(C.customer_id, required=True),
        *(Column(c) for c in schemas.PII_COLUMNS),
        Column(C.segment),
        Column(C.signup_date, "date"),
        Column(C.event_timestamp, "timestamp", required=True),
    ),
    key=(C.customer_id,),
)
CATALOG = TableSchema(
    name="catalog",
    table=schemas.ITEMS,
    columns=(
        Column(C.item_id, required=True),
        Column(C.title),
        Column(C.description),
        Column(C.category),
        Column(C.brand),
        Column(C.price, "float", min=0),
        Column(C.cost, "float", min=0),
        Column(C.image_url),
        Column(C.event_timestamp, "timestamp", required=True),
    ),
    key=(C.item_id,),
)
PRICE_HISTORY = TableSchema(
    name="price_history",
    table=schemas.PRICES,
    columns=(
        Column(C.event_timestamp, "timestamp", required=True),
        Column(C.item_id, required=True),
        Column(C.price, "float", required=True, min=0),
        Column(C.cost, "float", min=0),
        Column(C.competitor_price, "float", min=0),
        Column(C.units_sold, "int", min=0),
    ),
    key=(C.item_id, C.event_timestamp),
    references={C.item_id: schemas.ITEMS},
)
SUPPORT = TableSchema(
    name="support",
    table=schemas.SUPPORT,
    columns=(
        Column(C.ticket_id, required=True),
        Column(C.event_timestamp, "timestamp", required=True),
        Column(C.customer_id),
        Column(C.channel, allowed=schemas.CHANNELS),
        Column(C.question, required=True),
        Column(C.answer),
        Column(C.intent),
        Column(C.item_id),
    ),
    key=(C.ticket_id,),
    references={C.item_id: schemas.ITEMS},
)
IDENTITY_RECORDS = TableSchema(
    name="identities",
    table=schemas.IDENTITIES,
    columns=(
        Column(C.event_timestamp, "timestamp", required=True),
        Column(C.channel, required=True, allowed=schemas.CHANNELS),
        Column(C.identifier, required=True),
        Column(C.name),
        Column(C.email),
        Column(C.phone),
    ),
    # A repeated record, not a repeated identifier: a family tablet legitimately comes with each owner's email.
    key=(C.channel, C.identifier, C.name, C.email, C.phone),
)

CHANNEL_SCHEMAS: dict[str, TableSchema] = {
    s.name: s for s in (CLICKSTREAM, TILL, SOCIAL, EVENTS, CRM, CATALOG, PRICE_HISTORY, SUPPORT, IDENTITY_RECORDS)
}
# The schema each lake table is validated with when a mapping or the simulator feeds it directly.
TABLE_SCHEMAS: dict[str, TableSchema] = {
    schemas.EVENTS: EVENTS,
    schemas.CUSTOMERS: CRM,
    schemas.ITEMS: CATALOG,
    schemas.PRICES: PRICE_HISTORY,
    schemas.SUPPORT: SUPPORT,
    schemas.IDENTITIES: IDENTITY_RECORDS,
}


@dataclass(frozen=True, eq=False)
class SourceFrame:
    """Raw records of one file: its columns as found, plus ``LINE`` and ``PARSE_ERROR``."""

    path: Path
    format: Format
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)


def infer_format(path: Path) -> Format:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last in {".csv", ".tsv", ".txt"}:
        return "csv"
    if last in {".parquet", ".pq"}:
        return "parquet"
    if last in {".jsonl", ".json", ".ndjson"}:
        return "jsonl"
    raise MalformedFileError(path, "cannot tell the format from the name; say which of csv, parquet, jsonl it is")


def read_file(
    path: str | Path,
    *,
    fmt: Format | None = None,
    encoding: str = "utf-8",
    delimiter: str = ",",
    limit: int | None = None,
    required: Sequence[str] = (),
) -> SourceFrame:
    """Read every record of a file (at most ``limit``), keeping each one's line; raises ``MalformedFileError``."""
    path = Path(path)
    if not path.is_file():
        raise MalformedFileError(path, "no such file")
    fmt = fmt or infer_format(path)
    if fmt == "parquet":
        frame = _read_parquet(path, limit)
    elif fmt == "csv":
        frame = _read_csv(path, encoding, delimiter, limit)
    elif fmt == "jsonl":
        frame = _read_jsonl(path, encoding, limit)
    else:
        raise MalformedFileError(path, f"unknown format {fmt!r}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = [c for c in frame.columns if c not in (LINE, PARSE_ERROR)]
        raise MalformedFileError(path, f"missing required column(s) {missing}; found {found}")
    return SourceFrame(path, fmt, frame)


def read_channel(path: str | Path, schema: TableSchema | str, **options) -> SourceFrame:
    """Read a file of a channel table (``CHANNEL_SCHEMAS`` name or schema); its required columns must be there."""
    schema = CHANNEL_SCHEMAS[schema] if isinstance(schema, str) else schema
    return read_file(path, required=schema.required, **options)


def _read_parquet(path: Path, limit: int | None) -> pd.DataFrame:
    try:
        file = pq.ParquetFile(path)
        if limit is None:
            table = file.read()
        else:
            batches, n = [], 0
            for batch in file.iter_batches(batch_size=min(max(limit, 1), 65_536)):
                batches.append(batch)
                n += batch.num_rows
                if n >= limit:
                    break
            table = pa.Table.from_batches(batches, schema=file.schema_arrow).slice(0, limit)
        frame = table.to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise MalformedFileError(path, f"unreadable Parquet ({exc}); is the file truncated or not Parquet?") from exc
    frame[LINE] = range(1, len(frame) + 1)
    frame[PARSE_ERROR] = None
    return frame


def _open_text(path: Path, encoding: str) -> str:
    """The whole file decoded strictly: a wrong declared encoding fails here, naming the line."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix.lower() == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise MalformedFileError(path, f"unreadable gzip ({exc})") from exc
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MalformedFileError(
            path,
            f"not valid {encoding}: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line}); "
            f"declare the file's real encoding",
        ) from exc
    except LookupError as exc:
        raise MalformedFileError(path, f"unknown encoding {encoding!r}") from exc


def _read_csv(path: Path, encoding: str, delimiter: str, limit: int | None) -> pd.DataFrame:
    text = _open_text(path, encoding)
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration as exc:
        raise MalformedFileError(path, "empty file: no header line") from exc
    except csv.Error as exc:
        raise MalformedFileError(path, f"unreadable CSV header ({exc})") from exc
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise MalformedFileError(path, f"duplicate column names in header {header}")
    width = len(header)
    rows: list[list[str | None]] = []
    lines: list[int] = []
    errors: list[str | None] = []
    previous_end = reader.line_num
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if len(record) != width:
                rows.append([None] * width)
                errors.append(f"expected {width} fields, found {len(record)}")
            else:
                rows.append([v if v != "" else None for v in record])
                errors.append(None)
            lines.append(start)
            if limit is not None and len(rows) >= limit:
                break
    except csv.Error as exc:
        raise MalformedFileError(path, f"unreadable CSV at line {reader.line_num} ({exc})") from exc
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame[LINE] = lines
    frame[PARSE_ERROR] = errors
    return frame


def _read_jsonl(path: Path, encoding: str, limit: int | None) -> pd.DataFrame:
    text = _open_text(path, encoding)
    records: list[dict] = []
    lines: list[int] = []
    errors: list[str | None] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError(f"a JSON {type(value).__name__}, not an object")
            records.append(value)
            errors.append(None)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            records.append({})
            errors.append(f"not a JSON object: {str(exc)[:120]}")
        lines.append(number)
        if limit is not None and len(records) >= limit:
            break
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame = frame.astype(object).where(frame.notna(), None) if len(frame.columns) else frame
    frame[LINE] = lines
    frame[PARSE_ERROR] = errors
    return frame
