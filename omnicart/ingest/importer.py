"""Bring your own data: a YAML mapping from any shop's files and columns onto the canonical tables.

A mapping (see ``infra/mappings/``) lists sources; each names a file, its format and target table, and says how to
build every canonical column from the shop's columns: rename (``from``), constants (``value``), casts, value maps,
string transforms, parsers (datetimes in a local timezone, epoch seconds, display prices such as "$29.99"), rules
(``cases``: e.g. event_type "return" when the invoice starts with "C") and content hashes as ids. ``filters`` drop
rows by rule (quarantined as "filtered", so rows in = kept + quarantined still holds) and ``derive`` builds another
table from the kept rows (e.g. the catalog from invoice lines). Everything then goes through the same
pseudonymise → validate → quarantine → write path as the channel files.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from omnicart import schemas
from omnicart.ingest import readers
from omnicart.ingest.pipeline import known_values, pseudonymise_frame, with_subject_token, write_tables
from omnicart.ingest.readers import LINE, PARSE_ERROR, TableSchema
from omnicart.ingest.validate import (
    BAD_TIMESTAMP,
    BAD_TYPE,
    FILTERED,
    PRESET_DETAIL,
    PRESET_REASON,
    QuarantineSummary,
    ValidationResult,
    concat_results,
    validate,
)
from omnicart.privacy.suppression import suppressed
from omnicart.schemas import C
from omnicart.settings import Settings


# --- the mapping file ----------------------------------------------------------------------------------------------
class MappingError(ValueError):
    """A mapping that cannot be used (unreadable, unknown table or source, a condition that tests nothing)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Condition(_Model):
    """A row test on a source column (``column``) or an already mapped canonical field (``field``)."""

    column: str | None = None
    field_: str | None = Field(None, alias="field")
    eq: Any = None
    ne: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    not_in: list[Any] | None = None
    startswith: str | None = None
    not_startswith: str | None = None
    regex: str | None = None
    not_regex: str | None = None
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None
    is_null: bool | None = None
    all_: list[Condition] | None = Field(None, alias="all")
    any_: list[Condition] | None = Field(None, alias="any")
    not_: Condition | None = Field(None, alias="not")

    @model_validator(mode="after")
    def _one_subject(self) -> Condition:
        combinators = [self.all_, self.any_, self.not_]
        if sum(x is not None for x in combinators) + ((self.column or self.field_) is not None) != 1:
            raise ValueError("a condition has exactly one of: column, field, all, any, not")
        return self


class Case(_Model):
    when: Condition
    value: Any


class FieldSpec(_Model):
    """How one canonical column is built; steps run in the order listed here."""

    from_: str | list[str] | None = Field(None, alias="from")  # a list: the first non-null of those columns
    value: Any = None
    hash: list[str] | None = None
    cases: list[Case] | None = None
    default: Any = None
    index: int | None = None  # element of a list value (negative counts from the end)
    transform: list[Literal["strip", "upper", "lower", "abs", "first", "last", "join", "title"]] = []
    map: dict[str, Any] | None = None
    map_unknown: Literal["keep", "null"] = "keep"
    cast: Literal["str", "int", "float", "id"] | None = None
    parse: Literal["datetime", "unix", "money", "date"] | None = None
    format: str | None = None
    timezone: str | None = None  # the zone naive local times are in; stored as UTC
    unit: Literal["s", "ms"] = "s"
    on_error: Literal["quarantine", "null"] = "quarantine"

    @model_validator(mode="after")
    def _one_origin(self) -> FieldSpec:
        origins = [self.from_ is not None, self.value is not None, self.hash is not None, self.cases is not None]
        if sum(origins) != 1:
            raise ValueError("a field has exactly one of: from, value, hash, cases")
        return self


class Filter(_Model):
    name: str
    when: Condition  # rows matching are quarantined as "filtered: <name>"


class Aggregate(_Model):
    field_: str = Field(alias="field")
    how: Literal["first", "last", "min", "max", "median", "mean", "sum", "count", "nunique"] = "last"


class Derive(_Model):
    """Another table built from the kept rows, one row per ``key`` (e.g. items from invoice lines)."""

    table: str
    key: str
    columns: dict[str, Aggregate]


class Source(_Model):
    name: str
    path: str
    format: Literal["csv", "parquet", "jsonl"] | None = None
    encoding: str = "utf-8"
    delimiter: str = ","
    table: str
    schema_: str | None = Field(None, alias="schema")  # a readers.CHANNEL_SCHEMAS name; default: the table's
    columns: dict[str, FieldSpec]
    filters: list[Filter] = []
    derive: list[Derive] = []

    @property
    def table_schema(self) -> TableSchema:
        return readers.CHANNEL_SCHEMAS[self.schema_] if self.schema_ else readers.TABLE_SCHEMAS[self.table]


class MappingFile(_Model):
    name: str
    description: str = ""
    sources: list[Source]


def load_mapping(path: str | Path) -> MappingFile:
    """Parse and check a mapping file; errors name the field at fault."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: cannot read the mapping ({exc})") from exc
    mapping = MappingFile.model_validate(data)
    for source in mapping.sources:
        if source.table not in readers.TABLE_SCHEMAS:
            raise MappingError(f"{path}: source {source.name!r}: unknown table {source.table!r}")
        for d in source.derive:
            if d.table not in readers.TABLE_SCHEMAS:
                raise MappingError(f"{path}: source {source.name!r}: cannot derive unknown table {d.table!r}")
    return mapping


INPUT_ERRORS: tuple[type[Exception], ...] = (readers.MalformedFileError, MappingError, ValidationError)
"""What ``import_file`` raises when the input is at fault; it raises them before writing anything."""


# --- the report ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportReport:
    """Counts per source (and derived table): rows in, kept, quarantined by reason; partitions written."""

    mapping: str
    sources: dict[str, QuarantineSummary]
    derived: dict[str, QuarantineSummary] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)  # table -> number of day partitions written
    spans: dict[str, tuple[dt.date, dt.date]] = field(default_factory=dict)  # table -> first and last day written
    seconds: float = 0.0

    @property
    def summary(self) -> QuarantineSummary:
        total = QuarantineSummary.empty()
        for s in self.sources.values():
            total = total + s
        return total

    @property
    def rows_in(self) -> int:
        return self.summary.rows_in

    @property
    def kept(self) -> int:
        return self.summary.kept

    @property
    def quarantined(self) -> dict[str, int]:
        return dict(self.summary.by_reason)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts and day spans (what the Airflow task returns as its XCom)."""
        return {
            "mapping": self.mapping,
            "rows_in": self.rows_in,
            "kept": self.kept,
            "quarantined": self.quarantined,
            "sources": {name: s.as_dict() for name, s in self.sources.items()},
            "derived": {name: s.as_dict() for name, s in self.derived.items()},
            "partitions": dict(self.partitions),
            "spans": {table: [first.isoformat(), last.isoformat()] for table, (first, last) in self.spans.items()},
            "seconds": self.seconds,
        }


# --- importing -----------------------------------------------------------------------------------------------------
def default_data_root() -> Path:
    """``../shared/datasets`` beside the project checkout, where the public datasets live."""
    return Path(__file__).resolve().parents[3] / "shared" / "datasets"


def import_file(
    settings: Settings,
    mapping_path: str | Path,
    source_path: str | Path | None = None,
    *,
    source: str | None = None,
    limit: int | None = None,
    data_root: str | Path | None = None,
) -> ImportReport:
    """Import the mapping's sources into the lake (PII pseudonymised); returns what was kept and quarantined.

    ``source_path`` replaces the file of the mapping's only source (or of ``source``, by name); relative paths in the
    mapping resolve against ``data_root`` (default ``default_data_root()``). ``limit`` reads the first N records of
    each file. Every file is read and checked before anything is written: a fault of the input raises one of
    ``INPUT_ERRORS`` with the lake untouched.
    """
    started = time.perf_counter()
    mapping = load_mapping(mapping_path)
    chosen = [s for s in mapping.sources if source is None or s.name == source]
    if not chosen:
        raise MappingError(f"{mapping_path}: no source named {source!r}")
    if source_path is not None and len(chosen) != 1:
        raise MappingError(f"{mapping_path} has {len(chosen)} sources; say which one source_path replaces (source=)")
    root = Path(data_root) if data_root is not None else default_data_root()

    loaded = []
    for spec in chosen:
        path = Path(source_path) if source_path is not None else _resolve(spec.path, root)
        needed = sorted({c for f in spec.columns.values() for c in _source_columns(f)})
        src = readers.read_file(path, fmt=spec.format, encoding=spec.encoding, delimiter=spec.delimiter, limit=limit)
        missing = [c for c in needed if c not in src.frame.columns]
        if missing:
            raise readers.MalformedFileError(path, f"missing column(s) {missing} that mapping {mapping.name!r} reads")
        loaded.append((spec, src))

    key = settings.secret("pseudonym_key")
    blocked = suppressed(settings)
    kept: dict[str, list[pd.DataFrame]] = {}
    results: dict[str, ValidationResult] = {}
    derived_results: dict[str, ValidationResult] = {}
    batch_known: dict[str, set[str]] = {}
    for spec, src in loaded:
        schema = spec.table_schema
        frame = pseudonymise_frame(apply_mapping(src.frame, spec), key)
        derives_own = {d.table for d in spec.derive}
        references = {}
        for column, table in schema.references.items():
            if table in derives_own:
                continue  # the referenced table is built from these very rows
            known = batch_known.get(table, set()) | known_values(settings, table, column)
            if known:
                references[column] = known
        result = validate(
            with_subject_token(frame, key, blocked),
            schema,
            source_file=str(src.path),
            references=references,
            suppress=blocked,
        )
        results[spec.name] = result
        kept.setdefault(schema.table, []).append(result.kept)
        if schema.table == schemas.ITEMS:
            batch_known.setdefault(schemas.ITEMS, set()).update(result.kept[C.item_id])
        ok_rows = frame[frame.index.isin(_kept_positions(result, frame))]
        for d in spec.derive:
            derived = validate(
                _derive(ok_rows, d),  # from rows already pseudonymised
                readers.TABLE_SCHEMAS[d.table],
                source_file=f"{src.path}#derived:{d.table}",
            )
            derived_results[f"{spec.name}:{d.table}"] = derived
            kept.setdefault(d.table, []).append(derived.kept)
            if d.table == schemas.ITEMS:
                batch_known.setdefault(schemas.ITEMS, set()).update(derived.kept[C.item_id])

    quarantined, _ = concat_results([*results.values(), *derived_results.values()])
    written = write_tables(settings, kept, quarantined)
    return ImportReport(
        mapping=mapping.name,
        sources={name: r.summary for name, r in results.items()},
        derived={name: r.summary for name, r in derived_results.items()},
        partitions={table: len(days) for table, days in written.items()},
        spans={table: (min(days), max(days)) for table, days in written.items() if days},
        seconds=round(time.perf_counter() - started, 3),
    )


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _source_columns(spec: FieldSpec) -> list[str]:
    cols: list[str] = []
    if spec.from_ is not None:
        cols += [spec.from_] if isinstance(spec.from_, str) else list(spec.from_)
    if spec.hash is not None:
        cols += spec.hash
    for case in spec.cases or []:
        cols += _condition_columns(case.when)
    return cols


def _condition_columns(cond: Condition) -> list[str]:
    if cond.column is not None:
        return [cond.column]
    nested = [*(cond.all_ or []), *(cond.any_ or []), *([cond.not_] if cond.not_ else [])]
    return [c for sub in nested for c in _condition_columns(sub)]


def _kept_positions(result: ValidationResult, frame: pd.DataFrame) -> np.ndarray:
    """Row positions of ``frame`` that validation kept (quarantined rows are known by their line)."""
    bad_lines = set(result.quarantined[C.source_line]) if len(result.quarantined) else set()
    return frame.index[~frame[LINE].isin(bad_lines)].to_numpy()


# --- building the canonical frame ----------------------------------------------------------------------------------
def apply_mapping(raw: pd.DataFrame, spec: Source) -> pd.DataFrame:
    """The canonical frame of one source: its mapped columns, filters and parse failures as preset reasons."""
    out = pd.DataFrame(index=raw.index)
    reason = pd.Series(None, index=raw.index, dtype=object)
    detail = pd.Series(None, index=raw.index, dtype=object)
    for name, fspec in spec.columns.items():
        values, failed = _build(raw, fspec, name)
        out[name] = values
        if failed is not None and failed.any():
            code = BAD_TIMESTAMP if fspec.parse in ("datetime", "unix", "date") else BAD_TYPE
            text = raw_text(raw, fspec)
            new = failed & reason.isna()
            reason[new] = code
            shown = "" if name in schemas.PII_COLUMNS else " " + text[new].str.slice(0, 40)
            detail[new] = f"{name}: cannot parse as {fspec.parse}" + shown
    for flt in spec.filters:
        hit = _evaluate(flt.when, raw, out).to_numpy() & reason.isna().to_numpy()
        reason[hit] = FILTERED
        detail[hit] = f"filter {flt.name}"
    out[PRESET_REASON] = reason
    out[PRESET_DETAIL] = detail
    out[LINE] = raw[LINE] if LINE in raw.columns else np.arange(1, len(raw) + 1)
    if PARSE_ERROR in raw.columns:
        out[PARSE_ERROR] = raw[PARSE_ERROR]
    return out


def raw_text(raw: pd.DataFrame, spec: FieldSpec) -> pd.Series:
    if isinstance(spec.from_, str):
        return raw[spec.from_].astype(str)
    return pd.Series("", index=raw.index)


def _build(raw: pd.DataFrame, spec: FieldSpec, name: str) -> tuple[pd.Series, pd.Series | None]:
    """One canonical column, and the mask of values a parser rejected (None when nothing was parsed)."""
    n = len(raw)
    if spec.value is not None:
        values = pd.Series([spec.value] * n, index=raw.index, dtype=object)
    elif spec.hash is not None:
        hashed = pd.util.hash_pandas_object(raw[spec.hash].astype(str), index=False).to_numpy()
        values = pd.Series(np.char.mod("%016x", hashed), index=raw.index, dtype=object)
    elif spec.cases is not None:
        values = pd.Series([spec.default] * n, index=raw.index, dtype=object)
        decided = np.zeros(n, dtype=bool)
        for case in spec.cases:
            hit = _evaluate(case.when, raw, None).to_numpy() & ~decided
            values[hit] = case.value
            decided |= hit
    else:
        columns = [spec.from_] if isinstance(spec.from_, str) else list(spec.from_)
        values = _clean(raw[columns[0]], spec)
        for other in columns[1:]:
            values = values.where(values.notna(), _clean(raw[other], spec))
    if spec.map is not None:
        keep = spec.map_unknown == "keep"
        values = _per_value(values, lambda v: spec.map.get(str(v), v if keep else None))
    if spec.cast is not None:
        values = _cast(values, spec.cast)
    failed = None
    if spec.parse is not None:
        parsed = _parse(values, spec)
        failed = values.notna() & parsed.isna()
        values = parsed
        if spec.on_error == "null":
            failed = None
    return values, failed


def _clean(values: pd.Series, spec: FieldSpec) -> pd.Series:
    def one(v):
        if spec.index is not None:
            v = _element(v, spec.index)
        for step in spec.transform:
            v = _TRANSFORMS[step](v)
        # Empty strings (and empty lists) are missing values, whatever the shop's export wrote.
        return None if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v) else v

    return _per_value(values, one)


def _per_value(values: pd.Series, fn) -> pd.Series:
    """``fn`` of every non-null value, computed once per distinct value (lists and dicts one by one)."""
    values = values.astype(object).where(values.notna(), None)
    try:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    except TypeError:  # unhashable values (lists from JSON)
        return values.map(lambda v: None if v is None else fn(v))
    done = np.asarray([fn(u) for u in uniques] + [None], dtype=object)
    return pd.Series(done[codes], index=values.index, dtype=object)


def _element(value, index: int):
    if isinstance(value, list | tuple | np.ndarray):
        return value[index] if -len(value) <= index < len(value) else None
    return value


def _str_op(fn):
    return lambda v: fn(v) if isinstance(v, str) else v


def _abs(v):
    if isinstance(v, int | float) and not isinstance(v, bool):
        return abs(v)
    try:
        return abs(float(v))
    except (TypeError, ValueError):
        return v  # left for validation to reject as bad_type


_TRANSFORMS = {  # each on one non-null value
    "strip": _str_op(lambda v: " ".join(v.split())),
    "upper": _str_op(str.upper),
    "lower": _str_op(str.lower),
    "title": _str_op(str.title),
    "abs": _abs,
    "first": lambda v: _element(v, 0),
    "last": lambda v: _element(v, -1),
    "join": lambda v: " ".join(str(x).strip() for x in v if str(x).strip()) if isinstance(v, list | tuple) else v,
}


def _cast(values: pd.Series, kind: str) -> pd.Series:
    if kind == "str":
        return _per_value(values, lambda v: v if isinstance(v, str) else str(v))
    if kind == "id":  # identifiers read as numbers: 13085.0 -> "13085"
        return _per_value(values, _as_id)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & numbers.isna()
    out = numbers.astype(object).where(numbers.notna(), None)
    # Unconvertible values stay as text, so validation quarantines them as bad_type with the value shown.
    return out.where(~bad, values)


def _as_id(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text[:-2] if re.fullmatch(r"\d+\.0", text) else text


_MONEY = re.compile(r"^\s*[^\d\s.,-]{0,3}\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s*[A-Za-z]{0,3}\s*$")


def _money(value) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _MONEY.match(str(value))
    if not match:
        return None  # empty, a range ("$10 - $50"), or junk
    return float(match.group(1).replace(",", "") + (match.group(2) or ""))


def _parse(values: pd.Series, spec: FieldSpec) -> pd.Series:
    if spec.parse == "money":
        return _per_value(values, _money).astype(float)
    if spec.parse == "unix":
        numbers = pd.to_numeric(values, errors="coerce")
        return pd.to_datetime(numbers, unit=spec.unit, utc=True, errors="coerce")
    text = values.where(values.notna(), None)
    if spec.format:
        ts = pd.to_datetime(text, format=spec.format, errors="coerce")
    else:
        ts = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=spec.timezone is None)
    if spec.timezone and ts.dt.tz is None:
        # Local wall-clock times: ambiguous or missing ones (DST changes) cannot be placed and are rejected.
        ts = ts.dt.tz_localize(spec.timezone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    elif ts.dt.tz is None:
        ts = ts.dt.tz_localize("UTC")
    else:
        ts = ts.dt.tz_convert("UTC")
    if spec.parse == "date":
        return ts.dt.date.where(ts.notna(), None).astype(object)
    return ts


def _evaluate(cond: Condition, raw: pd.DataFrame, mapped: pd.DataFrame | None) -> pd.Series:
    """The rows for which the condition holds (nulls never match a comparison)."""
    if cond.all_ is not None:
        out = pd.Series(True, index=raw.index)
        for sub in cond.all_:
            out &= _evaluate(sub, raw, mapped)
        return out
    if cond.any_ is not None:
        out = pd.Series(False, index=raw.index)
        for sub in cond.any_:
            out |= _evaluate(sub, raw, mapped)
        return out
    if cond.not_ is not None:
        return ~_evaluate(cond.not_, raw, mapped)
    if cond.column is not None:
        values = raw[cond.column]
    else:
        if mapped is None or cond.field_ not in mapped.columns:
            raise MappingError(f"condition on field {cond.field_!r}, which is not mapped (yet)")
        values = mapped[cond.field_]
    present = values.notna()
    if cond.is_null is not None:
        return ~present if cond.is_null else present
    text = values.astype(str)
    tests = []
    if cond.eq is not None:
        tests.append(values == cond.eq)
    if cond.ne is not None:
        tests.append(values != cond.ne)
    if cond.in_ is not None:
        tests.append(values.isin(cond.in_))
    if cond.not_in is not None:
        tests.append(~values.isin(cond.not_in))
    if cond.startswith is not None:
        tests.append(text.str.startswith(cond.startswith))
    if cond.not_startswith is not None:
        tests.append(~text.str.startswith(cond.not_startswith))
    if cond.regex is not None:
        tests.append(text.str.fullmatch(cond.regex))
    if cond.not_regex is not None:
        tests.append(~text.str.fullmatch(cond.not_regex))
    numbers = pd.to_numeric(values, errors="coerce")
    for op, bound in (("lt", cond.lt), ("le", cond.le), ("gt", cond.gt), ("ge", cond.ge)):
        if bound is not None:
            tests.append(getattr(numbers, op)(bound))
    if not tests:
        raise MappingError(f"condition on {cond.column or cond.field_!r} tests nothing")
    out = present
    for t in tests:
        out = out & t.fillna(False).astype(bool)
    return out


def _derive(rows: pd.DataFrame, spec: Derive) -> pd.DataFrame:
    """One row per key, aggregated from the kept rows (``last`` and ``first`` skip nulls, in file order)."""
    rows = rows[rows[spec.key].notna()]
    grouped = rows.groupby(spec.key, sort=True)
    out = pd.DataFrame(index=pd.Index(sorted(rows[spec.key].unique()), name=spec.key))
    for name, agg in spec.columns.items():
        series = grouped[agg.field_].agg(agg.how)
        out[name] = series.reindex(out.index)
    out = out.reset_index()
    out[LINE] = np.arange(1, len(out) + 1)
    return out


def report_table(report: ImportReport) -> list[dict[str, Any]]:
    """Rows for a printed table: one per source and derived table."""
    rows = [{"source": name, **s.as_dict()} for name, s in report.sources.items()]
    rows += [{"source": f"{name} (derived)", **s.as_dict()} for name, s in report.derived.items()]
    return rows


def summary_lines(report: ImportReport) -> list[str]:
    """Short human-readable lines, for the CLI."""
    lines = []
    for row in report_table(report):
        reasons = {k: v for k, v in row.items() if k not in ("source", "rows_in", "kept", "quarantined")}
        lines.append(
            f"{row['source']}: {row['rows_in']:,} rows in, {row['kept']:,} kept, {row['quarantined']:,} quarantined"
            + (f" {reasons}" if reasons else "")
        )
    lines.append(f"{sum(report.partitions.values())} partitions written in {report.seconds:.1f} s")
    return lines
