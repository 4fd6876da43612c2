"""Data drift of a day's data against a reference window, computed with Evidently.

A column counts as drifted only when both gates agree:

* effect size: Evidently's distance reaches the column's threshold (normed Wasserstein for numeric columns,
  Jensen-Shannon for categorical ones), so on large samples tiny but real differences do not alert, as p-value
  tests would;
* significance: Evidently's two-sample test (K-S for numeric, chi-square for categorical) rejects at
  ``significance``, so on small days sampling noise alone does not alert; normed Wasserstein of a few hundred skewed
  prices exceeds 0.1 on a large share of clean days.

The verdict runs Evidently's stat tests once per column on every row. The HTML report and the Evidently snapshot
(for the workspace UI) come from a ``DataDriftPreset`` configured with the same methods and thresholds, on at most
``report_rows`` rows per side: the preset computes each column three times and renders plots, which on 100,000 rows
× 50 columns costs more than the check itself; below the cap (a shop day) the report is exact.

The module only measures and returns a ``DriftResult``; alerting lives in ``monitoring.alerts``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.calculations.stattests import get_stattest
from evidently.legacy.core import ColumnType
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset

# Evidently stat-test names: (effect-size distance, significance test) per column kind.
NUMERIC_METHODS = ("wasserstein", "ks")
CATEGORICAL_METHODS = ("jensenshannon", "chisquare")
DEFAULT_SIGNIFICANCE = 0.001
DEFAULT_REPORT_ROWS = 5_000


@dataclass(frozen=True)
class DriftResult:
    """Outcome of one drift check: which columns drifted, every column's distance, and where the report is."""

    drifted: bool
    drifted_columns: dict[str, float]  # column -> distance, only the drifted ones
    column_scores: dict[str, float]  # column -> distance, every checked column
    methods: dict[str, str]  # column -> Evidently distance method
    report_html: Path | None  # None when no report was asked for
    reference_rows: int
    current_rows: int
    day: date | None
    p_values: dict[str, float] = field(default_factory=dict)  # column -> p-value of the significance test
    thresholds: dict[str, float] = field(default_factory=dict)  # column -> distance threshold it was held to
    report_sampled: bool = False  # the HTML report was drawn from a sample (the verdict never is)
    snapshot: Any = field(default=None, compare=False, repr=False)  # the Evidently snapshot; never serialised

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (XCom, the CLI, a family check's record), without the snapshot."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "snapshot"}
        out["report_html"] = str(self.report_html) if self.report_html else None
        out["day"] = self.day.isoformat() if self.day else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftResult:
        values = {k: v for k, v in data.items() if k != "snapshot"}
        values["report_html"] = Path(values["report_html"]) if values.get("report_html") else None
        values["day"] = date.fromisoformat(values["day"]) if values.get("day") else None
        return cls(**values)


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    *,
    threshold: float,
    report_path: Path | None = None,
    day: date | None = None,
    categorical: Sequence[str] = (),
    significance: float = DEFAULT_SIGNIFICANCE,
    column_thresholds: Mapping[str, float] | None = None,
    column_significance: Mapping[str, float] | None = None,
    column_methods: Mapping[str, tuple[str, str]] | None = None,
    report_rows: int = DEFAULT_REPORT_ROWS,
    snapshot: bool = False,
    name: str | None = None,
    tags: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
) -> DriftResult:
    """Compare ``current`` with ``reference`` on ``columns`` (the one drift entry point of the platform).

    Columns named in ``categorical``, and every non-numeric column, are treated as categorical. The ``column_*``
    mappings override threshold, significance and (distance, test) methods per column. With ``report_path`` the
    Evidently HTML report is saved there; with ``snapshot`` (or a report) the Evidently snapshot rides on the result
    (``result.snapshot``) for the workspace UI, named ``name`` with ``tags`` and ``metadata``.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("check_drift needs at least one column to compare")
    for label, frame in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{label} data lacks drift columns {missing}")
        if frame.empty:
            raise ValueError(f"{label} data is empty: nothing to compare for drift (day={day})")

    cat_columns = [c for c in columns if c in set(categorical) or not _is_numeric(reference[c])]
    methods = {c: CATEGORICAL_METHODS if c in cat_columns else NUMERIC_METHODS for c in columns}
    methods.update({c: tuple(m) for c, m in (column_methods or {}).items() if c in methods})  # type: ignore[misc]
    thresholds = {c: float((column_thresholds or {}).get(c, threshold)) for c in columns}
    alphas = {c: float((column_significance or {}).get(c, significance)) for c in columns}

    scores: dict[str, float] = {}
    p_values: dict[str, float] = {}
    for c in columns:
        kind = ColumnType.Categorical if c in cat_columns else ColumnType.Numerical
        ref, cur = _clean(reference[c], "reference", c), _clean(current[c], "current", c)
        scores[c] = _stattest(methods[c][0], ref, cur, kind, thresholds[c])
        p_values[c] = _stattest(methods[c][1], ref, cur, kind, alphas[c])
    drifted = {c: s for c, s in scores.items() if s >= thresholds[c] and p_values[c] < alphas[c]}

    snap = None
    sampled = max(len(reference), len(current)) > report_rows
    if snapshot or report_path is not None:
        snap = _report(
            reference[columns],
            current[columns],
            columns,
            cat_columns,
            methods,
            thresholds,
            alphas,
            candidates=[c for c in columns if scores[c] >= thresholds[c]],
            rows=report_rows,
            day=day,
            name=name,
            tags=list(tags),
            metadata=dict(metadata or {}),
        )
        if report_path is not None:
            report_path = Path(report_path)
            report_path.parent.mkdir(parents=True, exist_ok=True)
            snap.save_html(str(report_path))
    result = DriftResult(
        drifted=bool(drifted),
        drifted_columns=drifted,
        column_scores=scores,
        methods={c: m[0] for c, m in methods.items()},
        report_html=Path(report_path) if report_path is not None else None,
        reference_rows=len(reference),
        current_rows=len(current),
        day=day,
        p_values=p_values,
        thresholds=thresholds,
        report_sampled=sampled and snap is not None,
        snapshot=snap,
    )
    return result


def _stattest(method: str, reference: pd.Series, current: pd.Series, kind: ColumnType, threshold: float) -> float:
    test = get_stattest(reference, current, kind, method)
    # A category absent from the reference has expected count 0: chi-square is infinite (p = 0), as it should be.
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(test(reference, current, kind, threshold).drift_score)


def _clean(series: pd.Series, label: str, column: str) -> pd.Series:
    """As Evidently's ValueDrift does: infinities and missing values do not take part in the test."""
    if _is_numeric(series):
        series = series.replace([-np.inf, np.inf], np.nan)
    series = series.dropna()
    if series.empty:
        raise ValueError(f"column {column!r} of the {label} data holds no values to compare")
    return series


def _report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    cat_columns: list[str],
    methods: dict[str, tuple[str, str]],
    thresholds: dict[str, float],
    alphas: dict[str, float],
    *,
    candidates: list[str],
    rows: int,
    day: date | None,
    name: str | None,
    tags: list[str],
    metadata: dict[str, str],
) -> Any:
    """Evidently's DataDriftPreset with our methods and thresholds, plus the significance test of every column whose
    distance crossed its threshold (so the report shows why a column alerted, or why it did not)."""
    n_ref, n_cur = len(reference), len(current)
    reference, current = _sample(reference, rows, seed=1), _sample(current, rows, seed=2)
    metadata = {**metadata, "verdict_rows": f"{n_ref} reference, {n_cur} current"}
    if (len(reference), len(current)) != (n_ref, n_cur):
        metadata["report_rows"] = f"random sample of {len(reference)} reference, {len(current)} current"
    preset = DataDriftPreset(
        columns=columns,
        per_column_method={c: methods[c][0] for c in columns},
        per_column_threshold=thresholds,
        # Dataset verdict in the HTML: any column past the distance; the significance tests show as their own widgets.
        drift_share=1 / len(columns),
    )
    tests = [ValueDrift(column=c, method=methods[c][1], threshold=alphas[c]) for c in candidates]
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in cat_columns], categorical_columns=cat_columns
    )
    timestamp = datetime(day.year, day.month, day.day, 23, 59, 59) if day else None
    with np.errstate(divide="ignore", invalid="ignore"):
        return Report([preset, *tests], metadata=metadata, tags=tags).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
            timestamp=timestamp,
            name=name,
        )


def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= rows else frame.sample(rows, random_state=seed)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
