"""Alert de-duplication: one mail per incident, a reminder after the set days, a recovery mail, nothing on re-runs,
delivered to a real local SMTP sink; and the pure state machine behind it."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path

import pytest

from edge.mailsink import MailSink
from monitoring import incidents
from monitoring.checks import FamilyCheck
from monitoring.drift import DriftResult
from monitoring.run import notify
from omnicart.schemas import C
from omnicart.settings import Settings

START = dt.date(2026, 1, 10)
REPORT_HTML = "<html><body><h1>pricing drift</h1></body></html>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def day(n: int) -> dt.date:
    return START + dt.timedelta(days=n)


def family_check(tmp_path: Path, n: int, failing: bool, severity: str = "critical") -> FamilyCheck:
    report = tmp_path / "reports" / f"data-drift-{day(n)}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(REPORT_HTML, encoding="utf-8")
    scores = {C.price: 0.05, "competitor_gap": 2.5 if failing else 0.04}
    data = DriftResult(
        drifted=failing,
        drifted_columns={"competitor_gap": 2.5} if failing else {},
        column_scores=scores,
        methods=dict.fromkeys(scores, "wasserstein"),
        report_html=report,
        reference_rows=840,
        current_rows=120,
        day=day(n),
        p_values={C.price: 0.6, "competitor_gap": 1e-30 if failing else 0.7},
        thresholds=dict.fromkeys(scores, 0.15),
    )
    return FamilyCheck(
        family="pricing",
        day=day(n),
        severity=severity if failing else "ok",
        reasons=("data drift in 1 of 2 columns: competitor_gap 2.500",) if failing else (),
        data=data,
        reference_window=(day(n - 7), day(n - 1)),
        reference_source="the 7 days before",
        reports={"data": str(report)},
    )


@pytest.fixture
def sink(tmp_path: Path):
    with MailSink(tmp_path / "mail", port=free_port()) as sink:
        yield sink


@pytest.fixture
def settings(tmp_path: Path, sink: MailSink) -> Settings:
    return Settings(home=tmp_path / "home", smtp_port=sink.port, alert_to=("ml-team@localhost", "oncall@localhost"))


def subjects(sink: MailSink) -> list[str]:
    return [str(m["Subject"]) for m in sink.messages()]


def test_one_mail_per_incident_then_reminder_then_recovery(tmp_path, settings, sink):
    verdicts = [False, True, True, True, True, True, False, False]  # days 0..7; reminder after 3 days (default)
    decisions = [notify(settings, family_check(tmp_path, n, failing)) for n, failing in enumerate(verdicts)]

    assert [d.action for d in decisions] == ["none", "alert", "none", "none", "reminder", "none", "recovery", "none"]
    assert [d.retrain for d in decisions] == [False, True, False, False, True, False, False, False]
    alert, reminder, recovery = sink.messages()
    assert alert["Subject"] == "[omnicart] pricing CRITICAL: 1 column drifted on 2026-01-11"
    assert alert["To"] == "ml-team@localhost, oncall@localhost"
    assert reminder["Subject"] == (
        "[omnicart] pricing CRITICAL (reminder, open since 2026-01-11): 1 column drifted on 2026-01-14"
    )
    assert recovery["Subject"] == (
        "[omnicart] pricing RECOVERED on 2026-01-16: checks clean again (incident opened 2026-01-11)"
    )
    # Reminder and recovery thread under the opening alert.
    assert reminder["In-Reply-To"] == alert["Message-ID"] == recovery["In-Reply-To"]

    body = alert.get_body(("plain",)).get_content()
    assert "DRIFTED competitor_gap: 2.500 / 0.150 (wasserstein; p=1e-30)" in body
    assert "price: 0.050" in body and "omnicart://retrain/pricing" in body
    [attachment] = list(alert.iter_attachments())
    assert attachment.get_filename() == "data-drift-2026-01-11.html"
    assert attachment.get_content() == REPORT_HTML
    assert not list(recovery.iter_attachments())


def test_state_is_json_under_home_monitoring(tmp_path, settings, sink):
    for n, failing in enumerate([True, True, False]):
        notify(settings, family_check(tmp_path, n, failing))
    path = settings.home_dir / "monitoring" / "incidents" / "pricing.json"
    state = json.loads(path.read_text())
    assert state["incident"] is None and state["last_day"] == "2026-01-12"
    assert state["closed"] == [{"opened": "2026-01-10", "closed": "2026-01-12", "mails": 2}]
    assert [state["decisions"][d]["action"] for d in sorted(state["decisions"])] == ["alert", "none", "recovery"]


def test_rerun_of_a_day_sends_nothing_again(tmp_path, settings, sink):
    first = notify(settings, family_check(tmp_path, 0, True))
    again = notify(settings, family_check(tmp_path, 0, True))
    assert first.action == again.action == "alert"
    assert again.replayed and not again.retrain
    assert len(sink.messages()) == 1


def test_late_backfill_of_an_older_day_sends_nothing(tmp_path, settings, sink):
    notify(settings, family_check(tmp_path, 5, False))
    late = notify(settings, family_check(tmp_path, 2, True))
    assert late.late and late.action == "none" and not late.retrain
    assert sink.messages() == []
    assert incidents.load(settings, "pricing").incident is None


def test_failed_send_leaves_state_unchanged_so_the_retry_alerts(tmp_path, sink):
    down = Settings(home=tmp_path / "home", smtp_port=free_port())  # nothing listens there
    with pytest.raises(OSError):
        notify(down, family_check(tmp_path, 0, True))
    assert incidents.load(down, "pricing").last_day is None
    retry = Settings(home=tmp_path / "home", smtp_port=sink.port)
    assert notify(retry, family_check(tmp_path, 0, True)).action == "alert"
    assert len(sink.messages()) == 1


def test_families_have_separate_incidents(tmp_path, settings, sink):
    pricing = family_check(tmp_path, 0, True)
    recommend = FamilyCheck(**{**pricing.__dict__, "family": "recommend", "severity": "warning"})
    assert notify(settings, pricing).action == notify(settings, recommend).action == "alert"
    assert sorted(s.split(" ")[1] for s in subjects(sink)) == ["pricing", "recommend"]


def test_decide_reminds_every_interval_while_open():
    state = incidents.FamilyState(family="support")
    actions = []
    for n in range(9):
        state, decision = incidents.decide(state, day(n), failing=True, severity="warning", reminder_days=2)
        actions.append(decision.action)
    assert actions == ["alert", "none", "reminder", "none", "reminder", "none", "reminder", "none", "reminder"]
    assert state.incident is not None and state.incident.mails == 5


def test_decide_without_retrain_on_reminder():
    state = incidents.FamilyState(family="support")
    state, first = incidents.decide(state, day(0), failing=True, severity="warning", reminder_days=1)
    state, second = incidents.decide(
        state, day(1), failing=True, severity="critical", reminder_days=1, retrain_on_reminder=False
    )
    assert (first.action, first.retrain) == ("alert", True)
    assert (second.action, second.retrain, second.severity) == ("reminder", False, "critical")
    assert state.incident is not None and state.incident.severity == "critical"
