"""Data drift of a day's data against a reference window, computed with Evidently.

A column counts as drifted only when both gates agree:

* effect size: Evidently's distance reaches ``threshold`` (normed Wasserstein for numeric columns, Jensen-Shannon
  for categorical ones), so on large samples tiny but real differences do not alert, as p-value tests would;
* significance: Evidently's two-sample test (K-S for numeric, chi-square for categorical) rejects at ``significance``,
  so on small days sampling noise alone does not alert; normed Wasserstein of a few hundred skewed prices exceeds
  0.1 on a large share of clean days.

The module only measures and returns a ``DriftResult``; alerting lives in ``monitoring.alerts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset

# Evidently stat-test names: (effect-size distance, significance test) per column kind.
NUMERIC_METHODS = ("wasserstein", "ks")
CATEGORICAL_METHODS = ("jensenshannon", "chisquare")
DEFAULT_SIGNIFICANCE = 0.001


@dataclass(frozen=True)
class DriftResult:
    """Outcome of one drift check: which columns drifted, every column's distance, and where the report is."""

    drifted: bool
    drifted_columns: dict[str, float]  # column -> distance, only the drifted ones
    column_scores: dict[str, float]  # column -> distance, every checked column
    methods: dict[str, str]  # column -> Evidently distance method
    report_html: Path
    reference_rows: int
    current_rows: int
    day: date | None
    p_values: dict[str, float] = field(default_factory=dict)  # column -> p-value of the significance test


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    *,
    threshold: float,
    report_path: Path,
    day: date | None = None,
    categorical: Sequence[str] = (),
    significance: float = DEFAULT_SIGNIFICANCE,
) -> DriftResult:
    """Compare ``current`` with ``reference`` on ``columns``; save Evidently's HTML report to ``report_path``.

    Columns named in ``categorical``, and every non-numeric column, are treated as categorical.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("check_drift needs at least one column to compare")
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} data lacks drift columns {missing}")
        if frame.empty:
            raise ValueError(f"{name} data is empty: nothing to compare for drift (day={day})")

    cat_columns = [c for c in columns if c in set(categorical) or not _is_numeric(reference[c])]
    num_columns = [c for c in columns if c not in cat_columns]
    methods = {c: CATEGORICAL_METHODS if c in cat_columns else NUMERIC_METHODS for c in columns}

    distances = {c: ValueDrift(column=c, method=methods[c][0], threshold=threshold) for c in columns}
    tests = {c: ValueDrift(column=c, method=methods[c][1], threshold=significance) for c in columns}
    preset = DataDriftPreset(
        columns=columns,
        per_column_method={c: methods[c][0] for c in columns},
        threshold=threshold,
        # Dataset verdict in the HTML: any column past the distance; the significance tests show as their own widgets.
        drift_share=1 / len(columns),
    )
    report = Report([preset, *distances.values(), *tests.values()])
    definition = DataDefinition(numerical_columns=num_columns, categorical_columns=cat_columns)
    # A category absent from the reference has expected count 0: chi-square is infinite (p = 0), as it should be.
    with np.errstate(divide="ignore"):
        snapshot = report.run(
            current_data=Dataset.from_pandas(current[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
        )
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(report_path))

    scores = {c: float(snapshot.context.get_metric_result(m).value) for c, m in distances.items()}
    p_values = {c: float(snapshot.context.get_metric_result(m).value) for c, m in tests.items()}
    drifted = {c: s for c, s in scores.items() if s >= threshold and p_values[c] < significance}
    return DriftResult(
        drifted=bool(drifted),
        drifted_columns=drifted,
        column_scores=scores,
        methods={c: m[0] for c, m in methods.items()},
        report_html=report_path,
        reference_rows=len(reference),
        current_rows=len(current),
        day=day,
        p_values=p_values,
    )


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
