"""The Evidently workspace under ``home/evidently`` (what ``omnicart up`` serves with ``evidently ui``): one project
per model family, one run per check and kind (data, prediction, outcome), dated by the checked day.

Re-running a day replaces that day's runs (an index per family under ``home/monitoring/workspace/`` remembers their
ids), so backfills leave one point per day on the dashboards.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from omnicart.settings import Settings

PROJECT_PREFIX = "omnicart · "
KINDS = ("data", "prediction", "outcome")


def workspace_dir(settings: Settings) -> Path:
    return settings.home_dir / "evidently"


def open_workspace(settings: Settings) -> Any:
    """The local Evidently workspace of this home (created on first use), for projects, runs and dashboards.

    Evidently's ``Workspace(path)`` also starts a dataset manager that parses every stored run (seconds per hundred
    runs, so minutes after a year of daily checks); we never upload datasets, so we open the same folder with the
    same file layout and skip that manager.
    """
    from evidently.ui.storage.local.base import LocalState
    from evidently.ui.workspace import Workspace

    class RunsWorkspace(Workspace):
        def __init__(self, path: str) -> None:
            self.path = path
            self.state = LocalState(path)

    path = workspace_dir(settings)
    path.mkdir(parents=True, exist_ok=True)
    return RunsWorkspace(str(path))


def project_name(family: str) -> str:
    return f"{PROJECT_PREFIX}{family}"


def family_project(
    ws: Any,
    family: str,
    *,
    description: str = "",
    columns: Mapping[str, str] | None = None,
    outcome_columns: Sequence[str] = (),
) -> Any:
    """The family's project, created with its dashboard on first use. ``columns``: column -> distance method."""
    name = project_name(family)
    for project in ws.search_project(name):
        if project.name == name:
            return project
    project = ws.create_project(name, description=description or f"Drift and outcome checks of the {family} family")
    _add_panels(project, columns or {}, outcome_columns)
    return project


def _add_panels(project: Any, columns: Mapping[str, str], outcome_columns: Sequence[str]) -> None:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    dashboard = project.dashboard
    dashboard.add_panel(
        line_plot_panel(
            "Share of drifted columns",
            [
                PanelMetric(
                    legend=kind, metric="DriftedColumnsCount", metric_labels={"value_type": "share"}, tags=[kind]
                )
                for kind in ("data", "prediction")
            ],
            description="Per checked day; data = features, prediction = logged model outputs",
        ),
        tab="Drift",
    )
    if columns:
        dashboard.add_panel(
            line_plot_panel(
                "Drift distance per column",
                [
                    PanelMetric(
                        legend=column,
                        metric="ValueDrift",
                        metric_labels={"column": column, "method": method},
                        tags=["data"],
                    )
                    for column, method in columns.items()
                ],
                description="Evidently distance (Wasserstein normed / Jensen-Shannon) against the reference window",
            ),
            tab="Drift",
        )
    if outcome_columns:
        dashboard.add_panel(
            line_plot_panel(
                "Outcomes",
                [
                    PanelMetric(legend=c, metric="MeanValue", metric_labels={"column": c}, tags=["outcome"])
                    for c in outcome_columns
                ],
                description="Daily means of the outcome columns (hit, absolute error, escalated ...)",
            ),
            tab="Outcomes",
        )


def log_runs(
    settings: Settings, family: str, day: date, snapshots: Mapping[str, Any], **project: Any
) -> dict[str, str]:
    """Add the day's snapshots (kind -> Evidently Snapshot) to the family's project, replacing that day's earlier
    runs of the same kinds; returns kind -> run id, plus ``project`` -> project id."""
    ws = open_workspace(settings)
    proj = family_project(ws, family, **project)
    index_path = settings.home_dir / "monitoring" / "workspace" / f"{family}.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    previous = index.get(day.isoformat(), {})
    ids: dict[str, str] = {"project": str(proj.id)}
    for kind, snapshot in snapshots.items():
        if snapshot is None:
            continue
        old = previous.get(kind)
        if old is not None and old in {str(run) for run in ws.list_runs(proj.id)}:
            ws.delete_run(proj.id, old)
        ref = ws.add_run(proj.id, snapshot, name=f"{family} {kind} {day.isoformat()}")
        ids[kind] = str(ref.id)
    index[day.isoformat()] = {**{k: v for k, v in previous.items() if k not in ids}, **ids}
    _write_json(index_path, index)
    return ids


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
