"""`omnicart experiments`: clear errors and a state that survives between commands (no serving running)."""

from __future__ import annotations

import datetime as dt
import socket

import pytest
from typer.testing import CliRunner

from edge.cli import app
from omnicart.experiments import config as xconfig
from omnicart.settings import get_settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: the commands must not try to redeploy
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OMNICART_HOME", str(tmp_path))
    monkeypatch.setenv("OMNICART_SERVE_PORT", str(port))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_start_without_a_champion_fails_clearly_and_writes_nothing(home) -> None:
    result = CliRunner().invoke(app, ["experiments", "start", "recommend", "--version", "2"])
    assert result.exit_code == 1 and "no champion" in result.output
    assert xconfig.load(home, "recommend") is None
    result = CliRunner().invoke(app, ["experiments", "start", "nonsense", "--version", "2"])
    assert result.exit_code == 2


def test_status_and_stop(home) -> None:
    runner = CliRunner()
    assert "no experiment" in runner.invoke(app, ["experiments", "status", "pricing"]).output
    assert runner.invoke(app, ["experiments", "stop", "pricing"]).exit_code == 1
    experiment = xconfig.start("pricing", "4", dt.date(2026, 3, 1))
    experiment.state.history.append(
        {"day": "2026-03-01", "action": "widen", "share": 0.05, "next_share": 0.1, "reason": "guardrails hold"}
    )
    xconfig.save(home, experiment)
    shown = runner.invoke(app, ["experiments", "status", "pricing"], terminal_width=200).output
    assert "pricing-v4" in shown and "running" in shown and "guardrails hold" in shown
    stopped = runner.invoke(app, ["experiments", "stop", "pricing"])
    assert stopped.exit_code == 0, stopped.output
    assert xconfig.load(home, "pricing").state.status == "stopped"
