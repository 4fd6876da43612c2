"""Closing the loop with real Airflow and a real SMTP server: the simulator injects a price shock, the monitor_models
DAG checks every family, exactly one pricing alert arrives, and the pricing retrain asset is emitted; a clean day
sends nothing and emits nothing.

The DAG runs on the session's platform (its lake, Airflow DB, MLflow) but mails to a sink of its own, so the
skeleton's mail assertions do not depend on the order the modules run in.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import pytest

from monitoring import incidents
from monitoring.config import retrain_asset_uri
from omnicart import orchestration
from omnicart.ingest.daily import land_and_ingest
from omnicart.mailsink import MailSink
from omnicart.settings import get_settings
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


@dataclass
class Loop:
    clean_day: dt.date
    drift_day: dt.date
    clean_run: Any
    drift_run: Any
    clean_mails: list
    drift_mails: list


def asset_events(uri: str, run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri, AssetEvent.source_run_id == run_id)
        )
        return [{"extra": e.extra, "task": e.source_task_id} for e in session.scalars(query)]


@pytest.fixture(scope="module")
def loop(platform, tmp_path_factory) -> Loop:
    s = platform.settings
    drift_day = s.sim_start + dt.timedelta(days=s.drift_day)
    clean_day = drift_day - dt.timedelta(days=1)
    land_and_ingest(s, s.sim_start, drift_day)  # idempotent: the same partitions the skeleton writes
    sink = MailSink(tmp_path_factory.mktemp("monitor-mail"), port=free_port()).start()
    saved = os.environ.get("OMNICART_SMTP_PORT")
    os.environ["OMNICART_SMTP_PORT"] = str(sink.port)
    get_settings.cache_clear()
    try:
        clean_run = orchestration.run_dag("monitor_models", clean_day)
        clean_mails = sink.messages()
        drift_run = orchestration.run_dag("monitor_models", drift_day)
        drift_mails = sink.messages()[len(clean_mails) :]
    finally:
        os.environ["OMNICART_SMTP_PORT"] = saved if saved is not None else str(s.smtp_port)
        get_settings.cache_clear()
        sink.stop()
    return Loop(clean_day, drift_day, clean_run, drift_run, clean_mails, drift_mails)


def test_both_runs_succeed(loop):
    for run in (loop.clean_run, loop.drift_run):
        states = orchestration.task_states(run)
        assert str(run.state) == "success", states
        assert {states[f"check_{f}"] for f in ("recommend", "pricing", "support")} == {"success"}


def test_clean_day_sends_nothing_and_requests_no_retraining(loop):
    assert loop.clean_mails == []
    states = orchestration.task_states(loop.clean_run)
    assert {states[f"retrain_{f}"] for f in ("recommend", "pricing", "support")} == {"skipped"}
    assert asset_events(retrain_asset_uri("pricing"), loop.clean_run.run_id) == []


def test_price_shock_sends_exactly_one_pricing_alert(loop):
    pricing = [m for m in loop.drift_mails if str(m["Subject"]).startswith("[omnicart] pricing ")]
    assert len(pricing) == 1, [m["Subject"] for m in loop.drift_mails]
    [mail] = pricing
    subject = str(mail["Subject"])
    assert ("CRITICAL" in subject or "WARNING" in subject) and str(loop.drift_day) in subject
    body = mail.get_body(("plain",)).get_content()
    assert "DRIFTED competitor_gap" in body and "omnicart://retrain/pricing" in body
    [report] = [p for p in mail.iter_attachments() if p.get_filename() == f"data-drift-{loop.drift_day}.html"]
    assert len(report.get_content()) > 10_000
    # No other family is mailed twice, and support (untouched by a price shock) not at all.
    families = [str(m["Subject"]).split(" ")[1] for m in loop.drift_mails]
    assert len(families) == len(set(families)) and "support" not in families


def test_price_shock_emits_the_pricing_retrain_asset(loop, platform):
    states = orchestration.task_states(loop.drift_run)
    assert states["retrain_pricing"] == "success" and states["retrain_support"] == "skipped"
    [event] = asset_events(retrain_asset_uri("pricing"), loop.drift_run.run_id)
    assert event["task"] == "retrain_pricing"
    assert event["extra"]["family"] == "pricing" and event["extra"]["day"] == loop.drift_day.isoformat()
    state = incidents.load(platform.settings, "pricing")
    assert state.incident is not None and state.incident.opened == loop.drift_day.isoformat()


def test_a_rerun_of_the_drift_day_mails_nothing_more(loop, platform):
    from monitoring.checks import FamilyCheck
    from monitoring.run import notify

    state = incidents.load(platform.settings, "pricing")
    decision = state.decisions[loop.drift_day.isoformat()]
    assert decision["action"] == "alert" and decision["retrain"]
    check = FamilyCheck.from_dict(
        {
            "family": "pricing",
            "day": loop.drift_day.isoformat(),
            "severity": decision["severity"],
            "reasons": [],
            "data": {
                "drifted": True,
                "drifted_columns": {},
                "column_scores": {},
                "methods": {},
                "report_html": None,
                "reference_rows": 1,
                "current_rows": 1,
                "day": loop.drift_day.isoformat(),
            },
        }
    )
    replay = notify(platform.settings, check)  # the platform's own sink: must stay untouched
    assert replay.replayed and not replay.retrain


def test_retraining_yields_a_new_pricing_champion_that_becomes_the_reference(loop, platform):
    """The loop's last leg, as train_models would run it on the asset event: retrain pricing as of the drift day, and
    the next check compares with the new champion's training window."""
    try:
        import training.pricing
        import training.run
    except ImportError as exc:  # pragma: no cover - depends on another issue's progress
        pytest.skip(f"no pricing trainer yet ({exc}): the retrain asset is emitted and nothing consumes it here")
    from monitoring.run import champion_run, reference_window

    s = platform.settings
    if "pricing" in getattr(training.run, "FAMILIES", {}):
        outcome = training.run.train_family(s, "pricing", loop.drift_day)
    elif hasattr(training.pricing, "train_and_register"):
        outcome = training.pricing.train_and_register(s, loop.drift_day)
    else:  # pragma: no cover
        pytest.skip("training.pricing has no train-and-register entry point yet")
    version, params, _ = champion_run(s, "pricing")
    assert version is not None and version == outcome.champion_version
    assert params["as_of"] == loop.drift_day.isoformat()
    start, end, source = reference_window(s, "pricing", loop.drift_day, params=params, version=version)
    assert source == f"champion v{version} training window"
    assert end == loop.drift_day - dt.timedelta(days=1) and start <= s.sim_start  # every clean day of the lake
