"""Daily checks and the alerts that follow them (kept apart: checks return data).

* ``check_day`` / ``alert``: the skeleton's check of the shop's enriched events (shop_daily), one mail per drifted day.
* ``monitor_family`` / ``notify``: the per-family checks of the ``monitor_models`` DAG. The reference is the
  champion's training window (the MLflow run's ``train_start`` .. ``as_of``), the current data is the day; ``notify``
  de-duplicates through the family's incident (alert, reminder, recovery) and says whether to request retraining.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pandas as pd

from monitoring.drift import DriftResult, check_drift
from omnicart import lake, schemas
from omnicart.schemas import C
from omnicart.settings import Settings

if TYPE_CHECKING:
    from monitoring.checks import FamilyCheck
    from monitoring.incidents import Decision

FAMILY = "shop-data"
CATEGORICAL = (C.channel, C.event_type, C.category, C.segment)


def daily_frame(settings: Settings, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Events of [start, end] with the item's category and the customer's segment: the columns drift is checked on."""
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, start, end)
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=end)[[C.item_id, C.category]]
    customers = lake.read_table(settings.lake_dir, schemas.CUSTOMERS, end=end)[[C.customer_id, C.segment]]
    frame = events.merge(items.drop_duplicates(C.item_id), on=C.item_id, how="left")
    frame = frame.merge(customers.drop_duplicates(C.customer_id), on=C.customer_id, how="left")
    return frame[list(schemas.DRIFT_COLUMNS)]


def check_day(settings: Settings, day: dt.date) -> DriftResult:
    """Compare ``day`` with the ``drift_reference_days`` before it; the HTML report goes under home/reports."""
    reference = daily_frame(settings, day - dt.timedelta(days=settings.drift_reference_days), day - dt.timedelta(1))
    current = daily_frame(settings, day, day)
    return check_drift(
        reference,
        current,
        list(schemas.DRIFT_COLUMNS),
        threshold=settings.drift_threshold,
        report_path=settings.reports_dir / FAMILY / f"drift-{day}.html",
        day=day,
        categorical=CATEGORICAL,
    )


def alert(settings: Settings, result: DriftResult, family: str = FAMILY) -> bool:
    """Email the ML team when ``result`` found drift; returns whether a mail was sent."""
    if not result.drifted:
        return False
    from monitoring.alerts import send_drift_alert

    send_drift_alert(
        result,
        family=family,
        smtp_host=settings.smtp_host,
        smtp_port=settings.smtp_port,
        sender=settings.alert_from,
        recipients=list(settings.alert_to),
    )
    return True


# --- per-family monitoring (the monitor_models DAG) -----------------------------------------------------------------
class NoData(ValueError):
    """Nothing to check for this family and day (no rows on the day, or none in the reference window)."""


def champion_run(settings: Settings, family: str) -> tuple[str | None, dict[str, str], dict[str, float]]:
    """The champion's version, its run's params and metrics; (None, {}, {}) when the family has none.

    With the default SQLite tracking store and no database yet, MLflow is not touched (nothing was ever trained).
    """
    if settings.mlflow_tracking_uri is None and not (settings.home_dir / "mlflow.db").exists():
        return None, {}, {}
    from omnicart import registry

    version = registry.champion_version(settings, family)
    if version is None:
        return None, {}, {}
    mlc = registry.client(settings)
    run = mlc.get_run(mlc.get_model_version(registry.model_name(family), version).run_id)
    return version, dict(run.data.params), dict(run.data.metrics)


def reference_window(
    settings: Settings, family: str, day: dt.date, *, params: dict[str, str] | None = None, version: str | None = None
) -> tuple[dt.date, dt.date, str]:
    """(start, end, source): the champion's training window [train_start, as_of) (run params) capped to its most
    recent ``drift_max_reference_days`` and to the days before ``day``; without a champion, the
    ``drift_reference_days`` before ``day``."""
    from monitoring.config import MonitoringConfig

    config = MonitoringConfig.from_settings(settings)
    params = params or {}
    yesterday = day - dt.timedelta(days=1)
    if params.get("as_of"):
        end = min(dt.date.fromisoformat(params["as_of"]) - dt.timedelta(days=1), yesterday)
        start = end - dt.timedelta(days=config.drift_max_reference_days - 1)
        if params.get("train_start"):  # a run without it (pricing so far) trained on at least the cap
            start = max(dt.date.fromisoformat(params["train_start"]), start)
        if start <= end:
            return start, end, f"champion v{version} training window"
    start = day - dt.timedelta(days=config.drift_reference_days)
    return start, yesterday, f"the {config.drift_reference_days} days before (no champion window)"


def monitor_family(settings: Settings, family: str, day: dt.date) -> FamilyCheck:
    """Check ``family`` on ``day`` from the lake: features against the champion's training window, logged
    predictions and outcomes when there are any. Raises ``NoData`` when the day or the reference is empty."""
    from monitoring import families
    from monitoring.checks import check_family

    spec = families.get(family)
    version, params, metrics = champion_run(settings, family)
    start, end, source = reference_window(settings, family, day, params=params, version=version)
    reference = spec.load(settings, start, end)
    current = spec.load(settings, day, day)
    if current.empty:
        raise NoData(f"{family}: no data on {day} to check")
    if reference.empty:
        raise NoData(f"{family}: no reference data in {start} .. {end}")
    predictions = families.load_predictions(settings, family, start, day)
    outcomes = spec.load_outcomes(settings, day) if spec.load_outcomes else None
    return check_family(
        settings,
        family,
        day,
        reference=reference,
        current=current,
        predictions=predictions if not predictions.empty else None,
        outcomes=outcomes,
        baselines=metrics,
        reference_window=(start, end),
        reference_source=source,
    )


def notify(settings: Settings, check: FamilyCheck) -> Decision:
    """Advance the family's incident with ``check`` and send the mail it calls for (alert, reminder, recovery).

    The state is saved only after the mail went out, so a failed send is retried by the task's retry, not lost.
    """
    from monitoring import incidents
    from monitoring.alerts import build_family_mail, send_message
    from monitoring.config import MonitoringConfig, retrain_asset_uri

    config = MonitoringConfig.from_settings(settings)
    state = incidents.load(settings, check.family)
    new_state, decision = incidents.decide(
        state,
        check.day,
        failing=check.failing,
        severity=check.severity,
        reminder_days=config.alert_reminder_days,
        retrain_on_reminder=config.retrain_on_reminder,
    )
    if decision.replayed:
        return decision
    if decision.action != "none":
        project, run_id = check.workspace.get("project"), check.workspace.get("data")
        url = (
            f"http://{settings.host}:{settings.evidently_port}/projects/{project}/reports/{run_id}"
            if project and run_id
            else None
        )
        msg = build_family_mail(
            check,
            action=decision.action,
            sender=config.alert_from,
            recipients=config.alert_to,
            incident_opened=decision.incident_opened,
            retrain_asset=retrain_asset_uri(check.family) if decision.retrain else None,
            report_url=url,
            attach_max_bytes=config.alert_attach_max_bytes,
            in_reply_to=state.incident.message_id if state.incident and state.incident.message_id else None,
        )
        send_message(msg, smtp_host=settings.smtp_host, smtp_port=settings.smtp_port)
        if decision.action == "alert":
            new_state = incidents.with_message_id(new_state, str(msg["Message-ID"]))
    incidents.save(settings, new_state)
    return decision
