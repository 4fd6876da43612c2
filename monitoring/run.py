"""Daily drift check of the shop's data, and the alert that follows it (kept apart: checks return data)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.drift import DriftResult, check_drift
from omnicart import lake, schemas
from omnicart.schemas import C
from omnicart.settings import Settings

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


def to_dict(result: DriftResult) -> dict[str, Any]:
    """A JSON-friendly form (for XCom and the CLI)."""
    out = dataclasses.asdict(result)
    out["report_html"] = str(result.report_html)
    out["day"] = result.day.isoformat() if result.day else None
    return out


def from_dict(data: dict[str, Any]) -> DriftResult:
    values = dict(data)
    values["report_html"] = Path(values["report_html"])
    values["day"] = dt.date.fromisoformat(values["day"]) if values.get("day") else None
    return DriftResult(**values)


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
