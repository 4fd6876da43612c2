"""Drift alert emails to the ML team: the drifted columns in plain text, Evidently's HTML report attached.

Callers decide when to alert (``if result.drifted: send_drift_alert(result, ...)``, or the incident decisions of
``monitoring.incidents`` for family checks); this module only writes and sends.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

from monitoring.drift import DriftResult

if TYPE_CHECKING:
    from monitoring.checks import FamilyCheck

SUBJECT_PREFIX = "[omnicart]"


def build_drift_alert(
    result: DriftResult,
    *,
    family: str,
    sender: str,
    recipients: Sequence[str],
    severity: str = "warning",
) -> EmailMessage:
    """The alert email for ``result``: subject names family, severity and day; the HTML report is attached."""
    if not recipients:
        raise ValueError("a drift alert needs at least one recipient")
    n = len(result.drifted_columns)
    day = f" on {result.day.isoformat()}" if result.day else ""
    columns_word = "column" if n == 1 else "columns"

    msg = EmailMessage()
    msg["Subject"] = f"{SUBJECT_PREFIX} drift {severity.upper()}: {family} — {n} {columns_word} drifted{day}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="omnicart.local")
    msg.set_content(_body(result, family=family, severity=severity))

    report = result.report_html
    if report is not None and report.is_file():
        # As base64 bytes, so the report arrives byte for byte (a text part would get CRLF line endings).
        msg.add_attachment(
            report.read_bytes(), maintype="text", subtype="html", filename=report.name, params={"charset": "utf-8"}
        )
    return msg


def send_drift_alert(
    result: DriftResult,
    *,
    family: str,
    smtp_host: str,
    smtp_port: int,
    sender: str,
    recipients: Sequence[str],
    severity: str = "warning",
    timeout: float = 10.0,
) -> EmailMessage:
    """Build the alert for ``result`` and send it through ``smtp_host:smtp_port``; returns the sent message."""
    msg = build_drift_alert(result, family=family, sender=sender, recipients=recipients, severity=severity)
    return send_message(msg, smtp_host=smtp_host, smtp_port=smtp_port, timeout=timeout)


def send_message(msg: EmailMessage, *, smtp_host: str, smtp_port: int, timeout: float = 10.0) -> EmailMessage:
    """Deliver ``msg`` to its From/To through ``smtp_host:smtp_port``; returns it."""
    recipients = [a.strip() for a in str(msg["To"]).split(",") if a.strip()]
    with smtplib.SMTP(smtp_host, smtp_port, timeout=timeout) as smtp:
        smtp.send_message(msg, from_addr=str(msg["From"]), to_addrs=recipients)
    return msg


def _body(result: DriftResult, *, family: str, severity: str) -> str:
    day = result.day.isoformat() if result.day else "(no day given)"
    lines = [
        f"Data drift {severity.upper()} for model family '{family}' on {day}.",
        f"Compared {result.current_rows} current rows with {result.reference_rows} reference rows.",
        "",
    ]
    if result.drifted_columns:
        lines.append("Drifted columns (distance; method; test p-value):")
        for column, score in sorted(result.drifted_columns.items(), key=lambda kv: -kv[1]):
            p = result.p_values.get(column)
            p_text = f"; p={p:.2g}" if p is not None else ""
            lines.append(f"  - {column}: {score:.3f} ({result.methods.get(column, '?')}{p_text})")
    else:
        lines.append("No column drifted.")
    steady = sorted(set(result.column_scores) - set(result.drifted_columns))
    if steady:
        lines += ["", "Columns without drift: " + ", ".join(f"{c} {result.column_scores[c]:.3f}" for c in steady)]
    if result.report_html is not None:
        lines += ["", f"Evidently report: {result.report_html}", "(the report is attached as HTML)"]
    return "\n".join(lines) + "\n"


# --- family checks: alert, reminder, recovery -----------------------------------------------------------------------
def build_family_mail(
    check: FamilyCheck,
    *,
    action: str,
    sender: str,
    recipients: Sequence[str],
    incident_opened: str | None = None,
    retrain_asset: str | None = None,
    report_url: str | None = None,
    attach_max_bytes: int = 20_000_000,
    in_reply_to: str | None = None,
) -> EmailMessage:
    """The mail for a family check: ``action`` is "alert" (an incident opens), "reminder" (it is still open) or
    "recovery" (the family checks clean again). Subject names family, severity (or RECOVERED) and day; the body lists
    drifted columns with distances, thresholds and p-values, outcome metrics, and where the reports are; the HTML
    reports are attached when their total size stays under ``attach_max_bytes``, and linked in any case."""
    if not recipients:
        raise ValueError("a drift alert needs at least one recipient")
    if action not in ("alert", "reminder", "recovery"):
        raise ValueError(f"no mail for action {action!r}")
    day = check.day.isoformat()
    if action == "recovery":
        subject = f"{SUBJECT_PREFIX} {check.family} RECOVERED on {day}: checks clean again"
        if incident_opened:
            subject += f" (incident opened {incident_opened})"
    else:
        summary = _summary(check)
        since = f" (reminder, open since {incident_opened})" if action == "reminder" else ""
        subject = f"{SUBJECT_PREFIX} {check.family} {check.severity.upper()}{since}: {summary} on {day}"

    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="omnicart.local")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(
        _family_body(check, action=action, opened=incident_opened, retrain_asset=retrain_asset, report_url=report_url)
    )
    reports = [Path(p) for p in check.reports.values() if Path(p).is_file()]
    if action != "recovery" and reports and sum(p.stat().st_size for p in reports) <= attach_max_bytes:
        for report in reports:
            msg.add_attachment(
                report.read_bytes(), maintype="text", subtype="html", filename=report.name, params={"charset": "utf-8"}
            )
    return msg


def _summary(check: FamilyCheck) -> str:
    parts = []
    failed = [o.metric for o in check.outcomes if o.judged and not o.ok]
    if failed:
        parts.append(", ".join(failed) + " past limit")
    n = len(check.data.drifted_columns)
    if n:
        parts.append(f"{n} {'column' if n == 1 else 'columns'} drifted")
    if check.prediction is not None and check.prediction.drifted:
        parts.append("predictions drifted")
    return "; ".join(parts) or "check failing"


def _family_body(
    check: FamilyCheck, *, action: str, opened: str | None, retrain_asset: str | None, report_url: str | None
) -> str:
    day = check.day.isoformat()
    if action == "recovery":
        lines = [f"Model family '{check.family}' checks clean again on {day}."]
        if opened:
            lines.append(f"The incident opened on {opened} is closed.")
    else:
        head = "Still failing" if action == "reminder" else "Check failing"
        lines = [f"{head}: model family '{check.family}' on {day}, severity {check.severity.upper()}."]
        if action == "reminder" and opened:
            lines.append(f"The incident has been open since {opened}.")
        lines += ["", "Why:"] + [f"  - {r}" for r in check.reasons]
    if check.reference_window:
        start, end = check.reference_window
        source = f" ({check.reference_source})" if check.reference_source else ""
        lines += [
            "",
            f"Reference: {start} .. {end}{source}; {check.data.reference_rows} rows vs {check.data.current_rows}.",
        ]
    for label, result in (("Data drift", check.data), ("Prediction drift", check.prediction)):
        if result is None:
            continue
        lines += ["", f"{label} (column: distance / threshold; method; test p-value):"]
        for column, score in sorted(result.column_scores.items(), key=lambda kv: -kv[1]):
            mark = "DRIFTED " if column in result.drifted_columns else ""
            p = result.p_values.get(column)
            threshold = result.thresholds.get(column)
            limit = f" / {threshold:.3f}" if threshold is not None else ""
            p_text = f"; p={p:.2g}" if p is not None else ""
            lines.append(f"  - {mark}{column}: {score:.3f}{limit} ({result.methods.get(column, '?')}{p_text})")
    if check.outcomes:
        lines += ["", "Outcomes:"]
        for o in check.outcomes:
            verdict = "ok" if o.ok else "PAST LIMIT"
            judged = "" if o.judged else " (not judged)"
            lines.append(f"  - {o.metric}: {o.value:.4g} on {o.rows} rows, limit {o.limit}: {verdict}{judged}")
    if retrain_asset and action != "recovery":
        lines += ["", f"Retraining requested: Airflow asset {retrain_asset} (the train_models DAG runs on it)."]
    lines += ["", "Reports:"]
    lines += [f"  - {kind}: {path}" for kind, path in check.reports.items()] or ["  - (none written)"]
    if report_url:
        lines.append(f"  - Evidently UI: {report_url}")
    return "\n".join(lines) + "\n"
