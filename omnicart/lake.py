"""Date-partitioned Parquet tables: ``<root>/<table>/dt=YYYY-MM-DD/part.parquet``.

One file per day keeps every daily task idempotent: a re-run replaces that day's partition atomically, so a reader
never sees a half-written file and a backfill equals the daily runs.

Append-only tables (the predictions serving logs) add chunk files ``part-<stamp>-<id>.parquet`` beside it with
``append_partition``: each chunk is written whole and renamed into place, so writers never rewrite what another wrote
and readers see every chunk that has landed. ``write_partition`` still replaces the whole day, chunks included.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from omnicart.schemas import C

PART_FILE = "part.parquet"
CHUNK_GLOB = "part-*.parquet"  # chunks appended by append_partition
_PREFIX = f"{C.dt}="


def _table_dir(root: Path, table: str) -> Path:
    if not table or table in {".", ".."} or "/" in table or "\\" in table:
        raise ValueError(f"invalid table name: {table!r}")
    return Path(root) / table


def partition_dir(root: Path, table: str, day: date) -> Path:
    """The directory holding one day's partition of a table."""
    return _table_dir(root, table) / f"{_PREFIX}{day.isoformat()}"


def write_partition(
    root: Path,
    table: str,
    day: date,
    df: pd.DataFrame,
    schema: pa.Schema | None = None,
    replaces: Sequence[Path] | None = None,
) -> Path:
    """Write ``df`` as the table's partition for ``day``, atomically replacing any earlier one; returns the file.

    ``schema`` fixes the Arrow types (else inferred), so that a day whose column is all null or all empty lists
    still agrees with the table's other partitions. Appended chunks present when the write starts are replaced too,
    or only those of ``replaces`` (the files ``df`` was read from), so that a rewrite keeps chunks appended since.
    """
    directory = partition_dir(root, table, day)
    directory.mkdir(parents=True, exist_ok=True)
    chunks = sorted(directory.glob(CHUNK_GLOB)) if replaces is None else [p for p in replaces if p.name != PART_FILE]
    target = _write_file(directory, PART_FILE, df, schema)
    for chunk in chunks:
        chunk.unlink(missing_ok=True)
    return target


def append_partition(root: Path, table: str, day: date, df: pd.DataFrame) -> Path:
    """Add ``df`` to the table's partition for ``day`` as a new chunk file (atomic; never touches other files)."""
    directory = partition_dir(root, table, day)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    return _write_file(directory, name, df, None)


def _write_file(directory: Path, name: str, df: pd.DataFrame, schema: pa.Schema | None) -> Path:
    # A temp file in the same directory makes os.replace an atomic rename on the same filesystem.
    target = directory / name
    fd, tmp_name = tempfile.mkstemp(prefix=".part-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        df.to_parquet(tmp_name, engine="pyarrow", index=False, schema=schema)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def partition_files(root: Path, table: str, day: date) -> list[Path]:
    """The files of one day's partition: the written part first, then the appended chunks in the order they landed."""
    directory = partition_dir(root, table, day)
    main = [directory / PART_FILE] if (directory / PART_FILE).is_file() else []
    return main + sorted(directory.glob(CHUNK_GLOB))


def read_partition(root: Path, table: str, day: date, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Every row of one day's partition (its part and its appended chunks)."""
    return read_files(partition_files(root, table, day), columns)


def read_files(files: Sequence[Path], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of these partition files (from ``partition_files``), in order."""
    frames = [pq.read_table(f, columns=list(columns) if columns else None).to_pandas() for f in files]
    return _concat(frames, columns)


def partitions(root: Path, table: str) -> list[date]:
    """The days for which the table has a partition, sorted."""
    table_dir = _table_dir(root, table)
    if not table_dir.is_dir():
        return []
    days = []
    for child in table_dir.iterdir():
        if not child.name.startswith(_PREFIX) or not (
            (child / PART_FILE).is_file() or next(child.glob(CHUNK_GLOB), None)
        ):
            continue
        try:
            days.append(date.fromisoformat(child.name[len(_PREFIX) :]))
        except ValueError:
            continue  # not one of ours
    return sorted(days)


def read_table(
    root: Path,
    table: str,
    start: date | None = None,
    end: date | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows of the partitions with ``start <= dt <= end`` (either bound optional), in date order.

    Returns an empty DataFrame (with ``columns`` if given) when no partition matches. No ``dt`` column is added.
    """
    days = [d for d in partitions(root, table) if (start is None or d >= start) and (end is None or d <= end)]
    cols = list(columns) if columns is not None else None
    frames = [pq.read_table(f, columns=cols).to_pandas() for d in days for f in partition_files(root, table, d)]
    return _concat(frames, cols)


def _concat(frames: list[pd.DataFrame], columns: Sequence[str] | None) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(columns) if columns is not None else [])
    # Empty partitions carry no rows and, concatenated, would only blur the dtypes of the others.
    nonempty = [f for f in frames if len(f)] or frames[:1]
    if len(nonempty) == 1:
        return nonempty[0]
    return pd.concat(nonempty, ignore_index=True)


def delete_partition(root: Path, table: str, day: date) -> bool:
    """Remove the table's partition for ``day``; returns whether there was one."""
    directory = partition_dir(root, table, day)
    if not directory.exists():
        return False
    shutil.rmtree(directory)
    return True
