"""One check of one model family on one day: data drift of its features, drift of its predictions, and the quality of
its outcomes once they arrive, with a severity that says whether (and how loudly) to alert.

``check_family`` measures and reports (HTML files under ``home/reports/<family>/``, runs in the Evidently workspace);
it never alerts. ``monitoring.run.notify`` turns a failing check into mail and a retraining request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from monitoring import families
from monitoring.config import MonitoringConfig
from monitoring.drift import DriftResult, check_drift
from omnicart.schemas import C
from omnicart.settings import Settings

Severity = Literal["ok", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"ok": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class OutcomeResult:
    """One outcome metric of the day against its limits."""

    metric: str
    value: float
    rows: int
    ok: bool
    judged: bool  # False when too few rows (or no limits): reported, never alerted on
    limit: str  # the limit in words, e.g. ">= 0.0123 (half the champion's 0.0246)"


@dataclass(frozen=True)
class FamilyCheck:
    """Everything one family's check found on ``day``."""

    family: str
    day: dt.date
    severity: Severity
    reasons: tuple[str, ...]
    data: DriftResult
    prediction: DriftResult | None = None
    outcomes: tuple[OutcomeResult, ...] = ()
    reference_window: tuple[dt.date, dt.date] | None = None
    reference_source: str = ""
    reports: dict[str, str] = field(default_factory=dict)  # kind -> HTML report path
    workspace: dict[str, str] = field(default_factory=dict)  # "project" -> id, kind -> run id

    @property
    def failing(self) -> bool:
        return self.severity != "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (XCom, the incident state, the CLI)."""
        out = dataclasses.asdict(self)
        out["day"] = self.day.isoformat()
        out["data"] = self.data.to_dict()
        out["prediction"] = self.prediction.to_dict() if self.prediction else None
        out["reasons"] = list(self.reasons)
        out["outcomes"] = [dataclasses.asdict(o) for o in self.outcomes]
        out["reference_window"] = [d.isoformat() for d in self.reference_window] if self.reference_window else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FamilyCheck:
        values = dict(data)
        values["day"] = dt.date.fromisoformat(values["day"])
        values["data"] = DriftResult.from_dict(values["data"])
        values["prediction"] = DriftResult.from_dict(values["prediction"]) if values.get("prediction") else None
        values["reasons"] = tuple(values.get("reasons", ()))
        values["outcomes"] = tuple(OutcomeResult(**o) for o in values.get("outcomes", ()))
        window = values.get("reference_window")
        values["reference_window"] = tuple(dt.date.fromisoformat(d) for d in window) if window else None
        return cls(**values)


def check_family(
    settings: Settings,
    family: str,
    day: dt.date,
    *,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    predictions: pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame] | None = None,
    outcomes: pd.DataFrame | None = None,
    baselines: Mapping[str, float] | None = None,
    reference_window: tuple[dt.date, dt.date] | None = None,
    reference_source: str = "",
    config: MonitoringConfig | None = None,
    report: bool = True,
    workspace: bool = True,
) -> FamilyCheck:
    """Check ``family`` on ``day``: ``current`` against ``reference`` on the family's columns, logged predictions
    (a frame with ``event_timestamp``: the day's rows against the earlier ones, or a (reference, current) pair), and
    the day's joined outcome rows against the configured limits (``baselines``: the champion's run metrics).

    ``report`` writes the HTML reports under home/reports/<family>/; ``workspace`` adds the runs to the family's
    project in the Evidently workspace. Neither changes the verdict.
    """
    spec = families.get(family)
    config = config or MonitoringConfig.from_settings(settings)
    columns = [c for c in spec.columns if c in current.columns and c in reference.columns]
    if not columns:
        raise ValueError(f"{family}: the data holds none of the family's columns {list(spec.columns)}")
    report_dir = settings.reports_dir / family
    tags = [f"family:{family}"]
    snapshots: dict[str, Any] = {}
    reports: dict[str, str] = {}

    data = _drift(
        config, family, day, reference, current, columns, spec.categorical, "data", report_dir, report, workspace, tags
    )
    snapshots["data"] = data.snapshot
    if data.report_html:
        reports["data"] = str(data.report_html)

    prediction = None
    pair = _split_predictions(predictions, day) if predictions is not None else None
    if pair is not None:
        pred_columns = [c for c in spec.prediction_columns if c in pair[0].columns and c in pair[1].columns]
        if pred_columns and not pair[0].empty and not pair[1].empty:
            prediction = _drift(
                config,
                family,
                day,
                pair[0],
                pair[1],
                pred_columns,
                spec.prediction_categorical,
                "prediction",
                report_dir,
                report,
                workspace,
                tags,
            )
            snapshots["prediction"] = prediction.snapshot
            if prediction.report_html:
                reports["prediction"] = str(prediction.report_html)

    results: tuple[OutcomeResult, ...] = ()
    if outcomes is not None and spec.outcome_metrics is not None:
        results = judge_outcomes(config, family, spec.outcome_metrics(outcomes), baselines or {})
        if workspace:
            snapshots["outcome"] = _outcome_snapshot(outcomes, spec.outcome_columns, day, tags, results)

    severity, reasons = grade(config, data, prediction, results)
    ids: dict[str, str] = {}
    if workspace:
        from monitoring.workspace import log_runs

        ids = log_runs(
            settings,
            family,
            day,
            snapshots,
            description=spec.description,
            columns={c: data.methods[c] for c in columns},
            outcome_columns=spec.outcome_columns,
        )
    return FamilyCheck(
        family=family,
        day=day,
        severity=severity,
        reasons=tuple(reasons),
        data=data,
        prediction=prediction,
        outcomes=results,
        reference_window=reference_window,
        reference_source=reference_source,
        reports=reports,
        workspace=ids,
    )


def grade(
    config: MonitoringConfig,
    data: DriftResult,
    prediction: DriftResult | None,
    outcomes: tuple[OutcomeResult, ...],
) -> tuple[Severity, list[str]]:
    """Severity and its reasons. Critical: an outcome past its limit, or data drift in at least
    ``drift_critical_share`` of the columns or with a distance of ``drift_critical_score``; warning: any other drift."""
    reasons: list[str] = []
    severity: Severity = "ok"

    def raise_to(level: Severity) -> None:
        nonlocal severity
        if SEVERITY_RANK[level] > SEVERITY_RANK[severity]:
            severity = level

    for o in outcomes:
        if o.judged and not o.ok:
            reasons.append(f"outcome {o.metric} = {o.value:.4g} outside {o.limit} ({o.rows} rows)")
            raise_to("critical")
    if data.drifted:
        share = len(data.drifted_columns) / max(len(data.column_scores), 1)
        top = max(data.drifted_columns.values())
        reasons.append(
            f"data drift in {len(data.drifted_columns)} of {len(data.column_scores)} columns: "
            + ", ".join(f"{c} {s:.3f}" for c, s in sorted(data.drifted_columns.items(), key=lambda kv: -kv[1]))
        )
        raise_to(
            "critical" if share >= config.drift_critical_share or top >= config.drift_critical_score else "warning"
        )
    if prediction is not None and prediction.drifted:
        reasons.append(
            "prediction drift: "
            + ", ".join(f"{c} {s:.3f}" for c, s in sorted(prediction.drifted_columns.items(), key=lambda kv: -kv[1]))
        )
        raise_to("warning")
    return severity, reasons


def judge_outcomes(
    config: MonitoringConfig,
    family: str,
    metrics: Mapping[str, tuple[float, int]],
    baselines: Mapping[str, float],
) -> tuple[OutcomeResult, ...]:
    """Each outcome metric against its rule: absolute min/max, and a relative drop from the champion's metric."""
    out = []
    for metric, (value, rows) in metrics.items():
        rule = config.outcome_rule(family, metric)
        if rule is None or math.isnan(value):
            out.append(OutcomeResult(metric, value, rows, ok=True, judged=False, limit="no limit"))
            continue
        limits, ok = [], True
        if rule.min is not None:
            limits.append(f">= {rule.min:.4g}")
            ok &= value >= rule.min
        if rule.max is not None:
            limits.append(f"<= {rule.max:.4g}")
            ok &= value <= rule.max
        base = baselines.get(rule.baseline_metric) if rule.baseline_metric else None
        if base is not None and rule.max_relative_drop is not None and base > 0:
            floor = base * (1 - rule.max_relative_drop)
            limits.append(f">= {floor:.4g} ({rule.max_relative_drop:.0%} below the champion's {base:.4g})")
            ok &= value >= floor
        judged = rows >= rule.min_rows and bool(limits)
        out.append(
            OutcomeResult(metric, value, rows, ok=bool(ok) or not judged, judged=judged, limit=" and ".join(limits))
        )
    return tuple(out)


def _drift(
    config: MonitoringConfig,
    family: str,
    day: dt.date,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    categorical: tuple[str, ...],
    kind: str,
    report_dir: Path,
    report: bool,
    workspace: bool,
    tags: list[str],
) -> DriftResult:
    rules = {c: config.column_rule(family, c) for c in columns}
    cat = [c for c in columns if (rules[c].categorical if rules[c].categorical is not None else c in categorical)]
    methods = {}
    for c in columns:
        if rules[c].distance or rules[c].test:
            default = ("jensenshannon", "chisquare") if c in cat else ("wasserstein", "ks")
            methods[c] = (rules[c].distance or default[0], rules[c].test or default[1])
    numeric_forced = [c for c in columns if rules[c].categorical is False]
    ref, cur = reference, current
    if numeric_forced:  # a numeric rule on a column stored as text: compare the numbers
        ref = reference.assign(**{c: pd.to_numeric(reference[c], errors="coerce") for c in numeric_forced})
        cur = current.assign(**{c: pd.to_numeric(current[c], errors="coerce") for c in numeric_forced})
    return check_drift(
        ref,
        cur,
        columns,
        threshold=config.drift_threshold,
        significance=config.drift_significance,
        categorical=cat,
        column_thresholds={c: r.threshold for c, r in rules.items() if r.threshold is not None},
        column_significance={c: r.significance for c, r in rules.items() if r.significance is not None},
        column_methods=methods,
        report_path=report_dir / f"{kind}-drift-{day.isoformat()}.html" if report else None,
        report_rows=config.drift_report_rows,
        day=day,
        snapshot=workspace,
        name=f"{family} {kind} {day.isoformat()}",
        tags=[*tags, kind],
        metadata={"family": family, "kind": kind, "day": day.isoformat()},
    )


def _split_predictions(
    predictions: pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame], day: dt.date
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    if isinstance(predictions, tuple):
        return predictions
    if predictions.empty:
        return None
    if C.event_timestamp not in predictions.columns:
        raise ValueError("a predictions frame needs an event_timestamp column (or pass a (reference, current) pair)")
    days = pd.to_datetime(predictions[C.event_timestamp], utc=True).dt.date
    return predictions[days < day], predictions[days == day]


def _outcome_snapshot(
    outcomes: pd.DataFrame, columns: tuple[str, ...], day: dt.date, tags: list[str], results: tuple[OutcomeResult, ...]
) -> Any:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue, RowCount

    present = [c for c in columns if c in outcomes.columns and outcomes[c].notna().any()]
    if outcomes.empty or not present:
        return None
    frame = outcomes[present].astype(float)
    metadata = {r.metric: f"{r.value:.6g}" for r in results}
    return Report(
        [RowCount(), *(MeanValue(column=c) for c in present)], metadata=metadata, tags=[*tags, "outcome"]
    ).run(
        Dataset.from_pandas(frame, data_definition=DataDefinition(numerical_columns=present)),
        None,
        timestamp=dt.datetime(day.year, day.month, day.day, 23, 59, 59),
    )
