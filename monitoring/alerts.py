"""Drift alert emails to the ML team: the drifted columns in plain text, Evidently's HTML report attached.

Callers decide when to alert (``if result.drifted: send_drift_alert(result, ...)``); this module only writes and sends.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from monitoring.drift import DriftResult

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
    if report.is_file():
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
    with smtplib.SMTP(smtp_host, smtp_port, timeout=timeout) as smtp:
        smtp.send_message(msg, from_addr=sender, to_addrs=list(recipients))
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
    lines += ["", f"Evidently report: {result.report_html}", "(the report is attached as HTML)"]
    return "\n".join(lines) + "\n"
