"""Validation and quarantine: every row read is either kept (typed to its schema) or quarantined with a reason.

Checks, in order, first failure wins: unparseable record, filtered by a mapping rule, erased subject, missing
required value, wrong type, bad timestamp, out of range, value not allowed, unknown reference, duplicate key.
The invariant ``rows in = kept + quarantined`` is asserted on every result. Callers pseudonymise personal data
*before* validating, so a quarantined record never holds raw PII either.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from omnicart import schemas
from omnicart.ingest.readers import LINE, PARSE_ERROR, Column, SourceFrame, TableSchema
from omnicart.schemas import C

# Reasons a row is quarantined (the ``reason`` column of the quarantine table).
MALFORMED = "malformed_record"
FILTERED = "filtered"
ERASED = "erased"
MISSING = "missing_required"
BAD_TYPE = "bad_type"
BAD_TIMESTAMP = "bad_timestamp"
OUT_OF_RANGE = "out_of_range"
NOT_ALLOWED = "not_allowed"
UNKNOWN_REFERENCE = "unknown_reference"
DUPLICATE = "duplicate"
REASONS = (
    MALFORMED,
    FILTERED,
    ERASED,
    MISSING,
    BAD_TYPE,
    BAD_TIMESTAMP,
    OUT_OF_RANGE,
    NOT_ALLOWED,
    UNKNOWN_REFERENCE,
    DUPLICATE,
)

# Optional columns a caller (the importer) sets to quarantine rows before the checks, e.g. for a filter rule.
PRESET_REASON = "__reason__"
PRESET_DETAIL = "__detail__"

EARLIEST = pd.Timestamp("1990-01-01", tz="UTC")  # anything earlier is a parsing accident (e.g. epoch seconds as ns)
QUARANTINE_COLUMNS = (
    C.source_table,
    C.source_file,
    C.source_line,
    C.reason,
    C.detail,
    C.record,
    C.event_timestamp,
)
_BOOLS = {"true": True, "1": True, "yes": True, "y": True, "false": False, "0": False, "no": False, "n": False}
# Columns whose values identify a person: an erased subject's rows are found through them.
SUBJECT_COLUMNS = (C.customer_id, C.identifier, *schemas.PII_COLUMNS)
SUBJECT_TOKEN = "__subject_token__"  # optional: the token of each row's customer id, set by ingest when suppressing


@dataclass(frozen=True)
class QuarantineSummary:
    """Row counts of one validation (or several, added up): in, kept, quarantined, and per reason."""

    rows_in: int
    kept: int
    quarantined: int
    by_reason: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rows_in != self.kept + self.quarantined or sum(self.by_reason.values()) != self.quarantined:
            raise AssertionError(f"rows are not accounted for: {self}")

    def __add__(self, other: QuarantineSummary) -> QuarantineSummary:
        reasons = Counter(self.by_reason)
        reasons.update(other.by_reason)
        return QuarantineSummary(
            self.rows_in + other.rows_in, self.kept + other.kept, self.quarantined + other.quarantined, dict(reasons)
        )

    @classmethod
    def empty(cls) -> QuarantineSummary:
        return cls(0, 0, 0, {})

    def as_dict(self) -> dict:
        return {"rows_in": self.rows_in, "kept": self.kept, "quarantined": self.quarantined, **self.by_reason}


@dataclass(frozen=True, eq=False)
class ValidationResult:
    """Kept rows (the schema's columns, typed), quarantined rows (``QUARANTINE_COLUMNS``) and their counts."""

    kept: pd.DataFrame
    quarantined: pd.DataFrame
    summary: QuarantineSummary


def validate(
    source: SourceFrame | pd.DataFrame,
    schema: TableSchema,
    *,
    source_file: str | None = None,
    references: Mapping[str, Collection[str]] | None = None,
    window: tuple[pd.Timestamp, pd.Timestamp] | None = None,
    suppress: Collection[str] = (),
) -> ValidationResult:
    """Check every row of ``source`` against ``schema``; split into kept and quarantined rows.

    ``references`` maps a column to the values it may hold (e.g. item_id → the catalog's ids); columns not in it are
    not checked. ``window`` = [start, end) bounds the schema's timestamp (a daily run accepts only its day).
    ``suppress`` holds tokens and customer ids of erased subjects: their rows are quarantined with no data kept.
    """
    if isinstance(source, SourceFrame):
        frame, source_file = source.frame, source_file or str(source.path)
    else:
        frame = source
    n = len(frame)
    frame = frame.reset_index(drop=True)
    lines = frame[LINE] if LINE in frame.columns else pd.Series(np.arange(1, n + 1))
    flags = _Flags(n)

    if PARSE_ERROR in frame.columns:
        flags.set(frame[PARSE_ERROR].notna(), MALFORMED, frame[PARSE_ERROR])
    if PRESET_REASON in frame.columns:
        flags.set(frame[PRESET_REASON].notna(), frame[PRESET_REASON], frame.get(PRESET_DETAIL))
    if suppress:
        suppress = set(suppress)
        hit = np.zeros(n, dtype=bool)
        for column in (*SUBJECT_COLUMNS, SUBJECT_TOKEN):
            if column in frame.columns:
                hit |= frame[column].isin(suppress).to_numpy()
        flags.set(hit, ERASED, "subject erased; record not kept")

    typed: dict[str, pd.Series] = {}
    for column in schema.columns:
        raw = frame[column.name] if column.name in frame.columns else pd.Series([None] * n, dtype=object)
        present = raw.notna().to_numpy()
        if column.required:
            flags.set(~present, MISSING, f"{column.name} is required")
        values, bad = _cast(raw, column, present)
        reason = BAD_TIMESTAMP if column.dtype in ("timestamp", "date") else BAD_TYPE
        if bad.any():
            shown = "" if column.pii else raw.map(lambda v: f" {str(v)[:40]!r}")
            detail = f"{column.name}: not a {column.dtype}" + (shown if isinstance(shown, str) else shown.astype(str))
            flags.set(bad, reason, detail)
        typed[column.name] = values

    ts_name = schema.timestamp
    if ts_name and ts_name in typed:
        ts = typed[ts_name]
        flags.set((ts < EARLIEST).to_numpy(na_value=False), BAD_TIMESTAMP, f"{ts_name} before {EARLIEST.date()}")
        if window is not None:
            start, end = window
            outside = ((ts < start) | (ts >= end)).to_numpy(na_value=False)
            flags.set(outside, BAD_TIMESTAMP, f"{ts_name} outside [{start}, {end})")

    for column in schema.columns:
        values = typed[column.name]
        if column.min is not None or column.max is not None:
            low = values < column.min if column.min is not None else pd.Series(False, index=values.index)
            high = values > column.max if column.max is not None else pd.Series(False, index=values.index)
            bad = (low | high).to_numpy(dtype=bool, na_value=False)
            if bad.any():
                flags.set(bad, OUT_OF_RANGE, f"{column.name} outside [{column.min}, {column.max}]: " + _text(values))
        if column.allowed is not None:
            bad = (values.notna() & ~values.isin(column.allowed)).to_numpy()
            if bad.any():
                flags.set(bad, NOT_ALLOWED, f"{column.name} not one of {list(column.allowed)}: " + _text(values))

    for column, known in (references or {}).items():
        if column in typed:
            values = typed[column]
            known = known if isinstance(known, set | frozenset | pd.Index) else set(known)
            bad = (values.notna() & ~values.isin(known)).to_numpy()
            if bad.any():
                table = schema.references.get(column, "the reference")
                flags.set(bad, UNKNOWN_REFERENCE, f"{column} not in {table}: " + _text(values))

    if schema.key:
        key = pd.DataFrame({k: typed[k] for k in schema.key})
        ok = flags.ok()
        dup = np.zeros(n, dtype=bool)
        dup[ok] = key[ok].duplicated(keep="first").to_numpy()
        flags.set(dup, DUPLICATE, f"repeats key {list(schema.key)}")

    out = pd.DataFrame(typed)
    ok = flags.ok()
    kept = _finish_dtypes(out[ok].reset_index(drop=True), schema)
    quarantined = _quarantine_rows(out, flags, ~ok, lines, schema, source_file, ts_name)
    counts = Counter(quarantined[C.reason]) if len(quarantined) else Counter()
    summary = QuarantineSummary(n, int(ok.sum()), int((~ok).sum()), dict(sorted(counts.items())))
    return ValidationResult(kept, quarantined, summary)


class _Flags:
    """The first reason (and its detail) found for each row."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)

    def set(self, mask, reason, detail=None) -> None:
        mask = np.asarray(mask, dtype=bool) & (self.reason == None)  # noqa: E711 - element-wise on an object array
        if not mask.any():
            return
        self.reason[mask] = reason.to_numpy()[mask] if isinstance(reason, pd.Series) else reason
        if isinstance(detail, pd.Series):
            self.detail[mask] = detail.to_numpy()[mask]
        else:
            self.detail[mask] = detail

    def ok(self) -> np.ndarray:
        return self.reason == None  # noqa: E711


def _cast(raw: pd.Series, column: Column, present: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """The column in its declared type (null where absent or unparseable) and the mask of unparseable values."""
    dtype = column.dtype
    if dtype == "str":
        values = raw.astype(object)
        if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
            return values.where(present, None), np.zeros(len(raw), dtype=bool)
        not_str = present & ~values.map(lambda v: isinstance(v, str)).to_numpy()
        if not_str.any():
            values = values.copy()
            values[not_str] = values[not_str].map(_as_text)
        return values.where(present, None), np.zeros(len(raw), dtype=bool)
    if dtype in ("int", "float"):
        if pd.api.types.is_bool_dtype(raw.dtype):
            numbers = raw.astype(float)
        else:
            numbers = pd.to_numeric(raw, errors="coerce").astype(float)
        finite = np.isfinite(numbers.to_numpy())
        bad = present & ~finite
        if dtype == "int":
            bad |= present & finite & (np.mod(np.where(finite, numbers.to_numpy(), 0.0), 1) != 0)
        numbers = numbers.where(~bad & present)
        return numbers, bad
    if dtype == "bool":
        values = raw.map(lambda v: v if isinstance(v, bool) else _BOOLS.get(str(v).strip().lower()))
        bad = present & values.isna().to_numpy()
        return values.where(~bad & present, None), bad
    if dtype == "timestamp":
        ts = _to_utc(raw)
        return ts, present & ts.isna().to_numpy()
    if dtype == "date":
        ts = _to_utc(raw)
        bad = present & ts.isna().to_numpy()
        return ts.dt.date.where(ts.notna(), None).astype(object), bad
    raise ValueError(f"unknown dtype {dtype!r} of column {column.name}")


def _text(values: pd.Series) -> pd.Series:
    return values.map(lambda v: str(v)[:60])


def _as_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 13085.0 read as a number is the id "13085"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return value if isinstance(value, str) else str(value)


def _to_utc(raw: pd.Series) -> pd.Series:
    """Timestamps as UTC; naive values are taken as UTC, unparseable ones become NaT."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        return raw.dt.tz_localize("UTC")
    values = raw.where(raw.notna(), None)
    try:
        return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    except (ValueError, TypeError):
        return pd.Series([_one_timestamp(v) for v in values], index=raw.index, dtype="datetime64[ns, UTC]")


def _one_timestamp(value) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    if ts is pd.NaT:
        return pd.NaT
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _finish_dtypes(kept: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    for column in schema.columns:
        values = kept[column.name]
        if column.dtype == "int":
            kept[column.name] = values.astype("int64") if values.notna().all() else values.astype("Int64")
        elif column.dtype == "float":
            kept[column.name] = values.astype("float64")
        elif column.dtype == "timestamp":
            kept[column.name] = pd.to_datetime(values, utc=True)
    return kept


def _quarantine_rows(
    typed: pd.DataFrame,
    flags: _Flags,
    bad: np.ndarray,
    lines: pd.Series,
    schema: TableSchema,
    source_file: str | None,
    ts_name: str | None,
) -> pd.DataFrame:
    rows = typed[bad]
    reasons = flags.reason[bad]
    erased = reasons == ERASED
    if len(rows):
        text = rows.to_json(orient="records", lines=True, date_format="iso", default_handler=str)
        records = np.asarray(text.rstrip("\n").split("\n"), dtype=object)
        records[erased] = None  # an erased subject's data is not kept anywhere
    else:
        records = np.asarray([], dtype=object)
    return pd.DataFrame(
        {
            C.source_table: schema.table,
            C.source_file: source_file,
            C.source_line: np.asarray(lines, dtype=np.int64)[bad],
            C.reason: reasons.astype(object),
            C.detail: flags.detail[bad].astype(object),
            C.record: records,
            C.event_timestamp: (
                pd.to_datetime(rows[ts_name].reset_index(drop=True), utc=True)
                if ts_name in rows.columns
                else pd.Series(pd.NaT, index=range(len(rows)), dtype="datetime64[ns, UTC]")
            ),
        },
        index=range(len(rows)),
    )


def concat_results(results: Iterable[ValidationResult]) -> tuple[pd.DataFrame, QuarantineSummary]:
    """All quarantined rows and the summed counts of several results."""
    results = list(results)
    summary = QuarantineSummary.empty()
    for r in results:
        summary = summary + r.summary
    frames = [r.quarantined for r in results if len(r.quarantined)]
    quarantined = pd.concat(frames, ignore_index=True) if frames else empty_quarantine()
    return quarantined, summary


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in QUARANTINE_COLUMNS}).astype(
        {C.source_line: "int64", C.event_timestamp: "datetime64[ns, UTC]"}
    )
