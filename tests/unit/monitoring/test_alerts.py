"""Drift alerts: built with the right subject, body and attachment, and delivered to a real local SMTP sink."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge.mailsink import MailSink
from monitoring.alerts import build_drift_alert, send_drift_alert
from monitoring.drift import DriftResult, check_drift
from omnicart.schemas import C

SENDER = "omnicart@localhost"
RECIPIENTS = ("ml-team@localhost", "oncall@localhost")
REPORT_HTML = "<html><body><h1>Data drift</h1><p>price, segment drifted</p></body></html>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def result(tmp_path: Path) -> DriftResult:
    report = tmp_path / "reports" / "recommend-2026-01-15.html"
    report.parent.mkdir(parents=True)
    report.write_text(REPORT_HTML, encoding="utf-8")
    return DriftResult(
        drifted=True,
        drifted_columns={C.price: 0.912, C.segment: 0.296},
        column_scores={C.price: 0.912, C.segment: 0.296, C.channel: 0.031},
        methods={C.price: "wasserstein", C.segment: "jensenshannon", C.channel: "jensenshannon"},
        report_html=report,
        reference_rows=2100,
        current_rows=300,
        day=date(2026, 1, 15),
        p_values={C.price: 1e-40, C.segment: 0.0, C.channel: 0.6},
    )


@pytest.fixture
def sink(tmp_path: Path):
    with MailSink(tmp_path / "mail", port=free_port()) as sink:
        yield sink


def test_subject_names_family_severity_count_and_day(result):
    msg = build_drift_alert(result, family="recommend", sender=SENDER, recipients=RECIPIENTS)
    assert msg["Subject"] == "[omnicart] drift WARNING: recommend — 2 columns drifted on 2026-01-15"
    assert msg["From"] == SENDER
    assert msg["To"] == ", ".join(RECIPIENTS)


def test_body_lists_drifted_columns_with_scores_and_report_path(result):
    body = build_drift_alert(result, family="pricing", sender=SENDER, recipients=RECIPIENTS).get_body(("plain",))
    text = body.get_content()
    assert f"{C.price}: 0.912 (wasserstein" in text
    assert f"{C.segment}: 0.296 (jensenshannon" in text
    assert text.index(C.price) < text.index(C.segment)  # largest drift first
    assert str(result.report_html) in text
    assert f"{C.channel} 0.031" in text  # the columns that held steady are named too


def test_alert_needs_a_recipient(result):
    with pytest.raises(ValueError, match="recipient"):
        build_drift_alert(result, family="recommend", sender=SENDER, recipients=())


def test_alert_is_delivered_with_html_report(result, sink):
    sent = send_drift_alert(
        result,
        family="recommend",
        smtp_host=sink.host,
        smtp_port=sink.port,
        sender=SENDER,
        recipients=RECIPIENTS,
        severity="critical",
    )
    [received] = sink.messages()
    assert received["Subject"] == sent["Subject"]
    assert "recommend" in received["Subject"] and "CRITICAL" in received["Subject"]
    text = received.get_body(("plain",)).get_content()
    assert C.price in text and C.segment in text and "0.912" in text
    [attachment] = list(received.iter_attachments())
    assert attachment.get_content_type() == "text/html"
    assert attachment.get_filename() == result.report_html.name
    assert attachment.get_content() == REPORT_HTML


def test_sink_stores_each_message_as_an_eml_file_in_arrival_order(result, sink):
    for family in ("recommend", "pricing", "support"):
        send_drift_alert(
            result,
            family=family,
            smtp_host=sink.host,
            smtp_port=sink.port,
            sender=SENDER,
            recipients=RECIPIENTS[:1],
        )
    files = sorted(sink.directory.glob("*.eml"))
    assert len(files) == 3
    assert [m["Subject"].split(": ")[1].split(" ")[0] for m in sink.messages()] == ["recommend", "pricing", "support"]


def test_stored_messages_outlive_the_sink(result, tmp_path):
    port = free_port()
    sink = MailSink(tmp_path / "mail", port=port).start()
    send_drift_alert(
        result, family="support", smtp_host="127.0.0.1", smtp_port=port, sender=SENDER, recipients=RECIPIENTS
    )
    sink.stop()
    assert not sink.running
    assert len(MailSink(tmp_path / "mail", port=port).messages()) == 1
    with pytest.raises(OSError):
        send_drift_alert(
            result, family="x", smtp_host="127.0.0.1", smtp_port=port, sender=SENDER, recipients=RECIPIENTS
        )


def test_alert_for_a_real_drift_check_carries_evidently_report(tmp_path, sink):
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({C.price: rng.lognormal(3.5, 0.6, 1000), C.channel: rng.choice(["web", "app"], 1000)})
    current = reference.sample(300, random_state=1).assign(**{C.price: lambda d: d[C.price] * 1.6})
    result = check_drift(
        reference, current, [C.price, C.channel], threshold=0.1, report_path=tmp_path / "r.html", day=date(2026, 1, 9)
    )
    send_drift_alert(
        result, family="pricing", smtp_host=sink.host, smtp_port=sink.port, sender=SENDER, recipients=RECIPIENTS
    )
    [received] = sink.messages()
    assert received["Subject"] == "[omnicart] drift WARNING: pricing — 1 column drifted on 2026-01-09"
    assert f"  - {C.price}: " in received.get_body(("plain",)).get_content()
    [attachment] = list(received.iter_attachments())
    assert attachment.get_content() == result.report_html.read_text(encoding="utf-8")


def test_mailsink_runs_as_a_foreground_process(result, tmp_path):
    port, directory = free_port(), tmp_path / "mail"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.mailsink", str(directory), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
        text=True,
    )
    try:
        assert "listening" in proc.stdout.readline()
        send_drift_alert(
            result, family="recommend", smtp_host="127.0.0.1", smtp_port=port, sender=SENDER, recipients=RECIPIENTS
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(MailSink(directory).messages()) == 1
