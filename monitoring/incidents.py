"""Alert de-duplication: one incident per family while its checks keep failing, one mail when it opens, a reminder
after ``reminder_days`` without mail, and a recovery mail when the family checks clean again.

``decide`` is a pure function of the family's state and a day's verdict, so the benchmark and the tests drive it
without SMTP; ``load``/``save`` keep the state as JSON under ``home/monitoring/incidents/<family>.json``. Days are
logical dates: a re-run of a day already decided replays that decision and mails nothing; a day older than the
last one decided (a late backfill) is recorded but mails nothing, since the incident has moved on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from omnicart.settings import Settings

Action = Literal["alert", "reminder", "recovery", "none"]
HISTORY_DAYS = 400  # decisions kept per family (older ones are dropped from the file)


@dataclass(frozen=True)
class Incident:
    """An open run of failing checks of one family."""

    opened: str  # ISO day the first failing check was for
    last_mail: str  # ISO day of the last mail (alert or reminder)
    severity: str
    mails: int = 1
    message_id: str = ""  # the opening alert's Message-ID, so reminders and recovery thread under it
    last_failing: str = ""


@dataclass(frozen=True)
class Decision:
    """What a day's verdict means for the family: which mail (if any) and whether to request retraining."""

    family: str
    day: str
    action: Action
    retrain: bool
    failing: bool
    severity: str
    incident_opened: str | None = None
    replayed: bool = False  # this day was decided before; nothing is sent again
    late: bool = False  # older than the last decided day: recorded only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FamilyState:
    """The family's open incident (if any), its last decided day, and the decisions by day."""

    family: str
    incident: Incident | None = None
    last_day: str | None = None
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    closed: tuple[dict[str, Any], ...] = ()  # past incidents: opened, closed, mails, severity

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["closed"] = list(self.closed)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FamilyState:
        incident = Incident(**data["incident"]) if data.get("incident") else None
        return cls(
            family=data["family"],
            incident=incident,
            last_day=data.get("last_day"),
            decisions=dict(data.get("decisions", {})),
            closed=tuple(data.get("closed", ())),
        )


def decide(
    state: FamilyState,
    day: dt.date,
    *,
    failing: bool,
    severity: str,
    reminder_days: int,
    retrain_on_reminder: bool = True,
) -> tuple[FamilyState, Decision]:
    """The next state and the decision for ``day``'s verdict (pure; nothing is sent or written)."""
    key = day.isoformat()
    if key in state.decisions:
        return state, replace(Decision(**state.decisions[key]), replayed=True, retrain=False)
    if state.last_day is not None and key < state.last_day:
        decision = Decision(state.family, key, "none", False, failing, severity, late=True)
        return _record(state, decision, last_day=state.last_day), decision

    incident = state.incident
    closed = state.closed
    if failing and incident is None:
        incident = Incident(opened=key, last_mail=key, severity=severity, last_failing=key)
        decision = Decision(state.family, key, "alert", True, True, severity, incident_opened=key)
    elif failing and incident is not None:
        due = (day - dt.date.fromisoformat(incident.last_mail)).days >= reminder_days
        incident = replace(
            incident,
            severity=severity,
            last_failing=key,
            last_mail=key if due else incident.last_mail,
            mails=incident.mails + (1 if due else 0),
        )
        action: Action = "reminder" if due else "none"
        decision = Decision(
            state.family, key, action, due and retrain_on_reminder, True, severity, incident_opened=incident.opened
        )
    elif incident is not None:  # clean again
        closed = (*closed, {"opened": incident.opened, "closed": key, "mails": incident.mails + 1})
        decision = Decision(state.family, key, "recovery", False, False, severity, incident_opened=incident.opened)
        incident = None
    else:
        decision = Decision(state.family, key, "none", False, False, severity)
    new = replace(state, incident=incident, closed=closed)
    return _record(new, decision, last_day=key), decision


def with_message_id(state: FamilyState, message_id: str) -> FamilyState:
    """Remember the opening alert's Message-ID (after it was sent)."""
    if state.incident is None or state.incident.message_id:
        return state
    return replace(state, incident=replace(state.incident, message_id=message_id))


def _record(state: FamilyState, decision: Decision, *, last_day: str) -> FamilyState:
    decisions = {**state.decisions, decision.day: decision.to_dict()}
    if len(decisions) > HISTORY_DAYS:
        decisions = dict(sorted(decisions.items())[-HISTORY_DAYS:])
    return replace(state, decisions=decisions, last_day=last_day)


def state_path(settings: Settings, family: str) -> Path:
    return settings.home_dir / "monitoring" / "incidents" / f"{family}.json"


def load(settings: Settings, family: str) -> FamilyState:
    path = state_path(settings, family)
    if not path.is_file():
        return FamilyState(family=family)
    return FamilyState.from_dict(json.loads(path.read_text()))


def save(settings: Settings, state: FamilyState) -> Path:
    """Write atomically (a reader never sees half a file)."""
    path = state_path(settings, state.family)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(state.to_dict(), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path
