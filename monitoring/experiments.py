"""The daily evaluation of online experiments and the mail that tells the ML team what was decided and why.

``evaluate_all`` returns data (one summary per family with a running experiment); ``mail`` sends it (one message
for all the day's decisions, so the team reads them together).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from monitoring.alerts import SUBJECT_PREFIX, send_message
from omnicart.experiments import lifecycle
from omnicart.experiments.config import METRICS
from omnicart.schemas import FAMILIES
from omnicart.settings import Settings


def evaluate_all(settings: Settings, day: dt.date) -> list[dict[str, Any]]:
    """Decide every running experiment on the data of ``day``; each summary says what was done and why."""
    summaries = []
    for family in FAMILIES:
        result = lifecycle.evaluate(settings, family, day)
        if result is None:
            continue
        experiment, decision = result
        summaries.append(
            {
                "family": family,
                "experiment": experiment.config.name,
                "challenger_version": experiment.config.challenger_version,
                "metric": METRICS.get(family, ""),
                "redeploy": lifecycle.needs_redeploy(decision),
                **decision.to_dict(),
            }
        )
    return summaries


def build_mail(
    summaries: Sequence[dict[str, Any]], day: dt.date, *, sender: str, recipients: Sequence[str]
) -> EmailMessage:
    """One message for the day's decisions: the subject names each family's action, the body the reasons."""
    if not recipients:
        raise ValueError("an experiment mail needs at least one recipient")
    actions = ", ".join(f"{s['family']} {s['action']}" for s in summaries)
    msg = EmailMessage()
    msg["Subject"] = f"{SUBJECT_PREFIX} experiments {day.isoformat()}: {actions}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="omnicart.local")
    lines = [f"Online experiments on {day.isoformat()}.", ""]
    for s in summaries:
        lines.append(
            f"{s['family']} — {s['experiment']} (challenger version {s['challenger_version']}): {s['action'].upper()}"
        )
        lines.append(f"  why: {s['reason']}")
        lines.append(f"  metric: {s['metric']}")
        lines.append(f"  challenger share: {s['share']:.0%} → {s['next_share']:.0%}")
        u = s.get("uplift")
        if u:
            lines.append(
                f"  uplift: {u['relative']:+.2%} (95% CI {u['relative_low']:+.2%} … {u['relative_high']:+.2%}), "
                f"{u['n_control']} champion and {u['n_treatment']} challenger units, {u['method']}"
            )
        if s.get("srm_p_value") is not None:
            lines.append(f"  sample-ratio check p = {s['srm_p_value']:.3g}")
        if s.get("information_fraction") is not None:
            lines.append(
                f"  {s['information_fraction']:.0%} of the planned information (about {s['planned_units']} units)"
            )
        lines.append("")
    lines.append(
        "Roll back a promotion with `omnicart models rollback FAMILY`; see `omnicart experiments status FAMILY`."
    )
    msg.set_content("\n".join(lines))
    return msg


def mail(settings: Settings, summaries: Sequence[dict[str, Any]], day: dt.date) -> bool:
    """Send the day's decisions to the ML team; nothing to say (no experiment ran), no mail."""
    if not summaries:
        return False
    msg = build_mail(summaries, day, sender=settings.alert_from, recipients=settings.alert_to)
    send_message(msg, smtp_host=settings.smtp_host, smtp_port=settings.smtp_port)
    return True
