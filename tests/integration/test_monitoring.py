"""Closing the loop with real Airflow, Ray Serve, MLflow and a real SMTP server.

A first pricing champion is trained and deployed by the train_models DAG; a shop prices its catalog over HTTP every
day, and serving logs each answer to the lake. The monitor_models DAG then checks every family with those served
predictions: the clean day sends nothing and emits nothing; on the price-shock day exactly one pricing alert arrives
and the pricing retrain asset is emitted. train_models runs on that asset's family, registers a new champion and
redeploys, and POST /price answers with it.

The DAGs run on the session's platform (its lake, Airflow DB, MLflow) but mail to a sink of their own, so the
skeleton's mail assertions do not depend on the order the modules run in.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from edge import orchestration
from edge.mailsink import MailSink
from monitoring import families, incidents
from monitoring.config import retrain_asset_uri
from omnicart import lake, registry, schemas
from omnicart.ingest.daily import land_and_ingest
from omnicart.schemas import C
from tests.integration.conftest import (
    asset_events,
    clear_asset_queue,
    dags_due_on_assets,
    free_port,
    settings_env,
    unpaused,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

FIRST_TRAINING_DAYS = 7  # the first champion learns from the first week; the retrained one from every clean day
PRICED_FROM = 4  # the shop prices its catalog over HTTP from this day index on (reference predictions before the day)


@dataclass
class Loop:
    clean_day: dt.date
    drift_day: dt.date
    first_version: str
    logged: pd.DataFrame  # what serving wrote to the lake for the HTTP calls
    clean_run: Any
    drift_run: Any
    clean_mails: list
    drift_mails: list
    retrain_run: Any
    due_after_clean: set[str]  # the DAGs the scheduler would start on their assets after each monitor run
    due_after_drift: set[str]


def retrain_events(run) -> list[dict]:
    """The pricing retrain asset events the monitor run ``run`` emitted."""
    return asset_events("monitor_models", run.run_id, retrain_asset_uri("pricing"))


def price_day(settings, day: dt.date) -> httpx.Response:
    """What a shop's pricing job does each morning: price every item at today's shelf and competitor prices."""
    today = lake.read_table(settings.lake_dir, schemas.PRICES, day, day)
    items = [
        {
            "product_id": r[C.item_id],
            "current_price": r[C.price],
            "competitor_price": r[C.competitor_price],
            "period": day.isoformat(),
            "explain": False,
        }
        for r in today.to_dict("records")
    ]
    headers = {"X-API-Key": settings.secret("api_key")}
    return httpx.post(f"{settings.serve_url}/price/batch", json={"items": items}, headers=headers, timeout=60)


def wait_for_log(settings, days: list[dt.date], rows: int, seconds: float = 30.0) -> pd.DataFrame:
    """The served prices of ``days`` once ``rows`` have landed (serving writes them in the background)."""
    deadline = time.monotonic() + seconds
    while True:
        logged = families.load_predictions(settings, "pricing", min(days), max(days))
        if len(logged) >= rows or time.monotonic() > deadline:
            return logged
        time.sleep(0.25)


@pytest.fixture(scope="module")
def loop(platform, tmp_path_factory) -> Loop:
    s = platform.settings
    drift_day = s.sim_start + dt.timedelta(days=s.drift_day)
    clean_day = drift_day - dt.timedelta(days=1)
    land_and_ingest(s, s.sim_start, drift_day)  # idempotent: the same partitions the skeleton writes
    sink = MailSink(tmp_path_factory.mktemp("monitor-mail"), port=free_port()).start()
    env = {"OMNICART_SMTP_PORT": str(sink.port), "OMNICART_PREDICTION_LOG_FLUSH_SECONDS": "0.5"}
    try:
        with settings_env(env):
            first_day = s.sim_start + dt.timedelta(days=FIRST_TRAINING_DAYS)
            first = orchestration.run_dag("train_models", first_day, conf={"families": ["pricing"]})
            assert str(first.state) == "success", orchestration.task_states(first)
            first_version = registry.champion_version(s, "pricing")
            assert first_version is not None

            priced = [s.sim_start + dt.timedelta(days=i) for i in range(PRICED_FROM, s.drift_day + 1)]
            for day in priced:
                response = price_day(s, day)
                assert response.status_code == 200, response.text
            logged = wait_for_log(s, priced, rows=s.sim_items * len(priced))

            with unpaused("train_models"):  # as in production: asset events queue only active DAGs
                clear_asset_queue("train_models")  # only these two monitor runs may queue it
                clean_run = orchestration.run_dag("monitor_models", clean_day)
                clean_mails = sink.messages()
                due_after_clean = dags_due_on_assets()
                drift_run = orchestration.run_dag("monitor_models", drift_day)
                drift_mails = sink.messages()[len(clean_mails) :]
                due_after_drift = dags_due_on_assets()
                clear_asset_queue("train_models")  # no scheduler here: the run below is started by hand

            # train_models on the asset the monitor emitted (the scheduler would start it on the event; dag.test cannot)
            events = retrain_events(drift_run)
            fired = sorted({e["extra"]["family"] for e in events})
            retrain_run = orchestration.run_dag("train_models", drift_day, conf={"families": fired}) if fired else None
    finally:
        sink.stop()
    return Loop(
        clean_day,
        drift_day,
        first_version,
        logged,
        clean_run,
        drift_run,
        clean_mails,
        drift_mails,
        retrain_run,
        due_after_clean,
        due_after_drift,
    )


def test_serving_logs_every_answer_to_the_lake(loop, platform):
    s = platform.settings
    logged = loop.logged
    days = pd.to_datetime(logged[C.event_timestamp], utc=True).dt.date
    assert len(logged) == s.sim_items * (s.drift_day + 1 - PRICED_FROM)
    assert days.value_counts().eq(s.sim_items).all()  # one row per item, in the partition of the day priced
    assert set(logged[C.model_version]) == {loop.first_version}
    assert logged[C.price].gt(0).all() and logged[C.predicted_units].notna().all()
    assert logged[C.category].notna().all()  # joined from the catalog for the checks


def test_both_monitor_runs_succeed(loop):
    for run in (loop.clean_run, loop.drift_run):
        states = orchestration.task_states(run)
        assert str(run.state) == "success", states
        assert {states[f"check_{f}"] for f in ("recommend", "pricing", "support")} == {"success"}


def test_clean_day_sends_nothing_and_requests_no_retraining(loop, platform):
    assert loop.clean_mails == []
    states = orchestration.task_states(loop.clean_run)
    assert {states[f"retrain_{f}"] for f in ("recommend", "pricing", "support")} == {"skipped"}
    assert retrain_events(loop.clean_run) == []
    # ... and it was judged on the served predictions and their outcomes, not only on the lake's prices
    decision = incidents.load(platform.settings, "pricing").decisions[loop.clean_day.isoformat()]
    assert decision["action"] == "none" and not decision["failing"]
    reports = Path(platform.settings.reports_dir) / "pricing"
    assert (reports / f"prediction-drift-{loop.clean_day}.html").is_file()


def test_price_shock_sends_exactly_one_pricing_alert(loop):
    pricing = [m for m in loop.drift_mails if str(m["Subject"]).startswith("[omnicart] pricing ")]
    assert len(pricing) == 1, [m["Subject"] for m in loop.drift_mails]
    [mail] = pricing
    subject = str(mail["Subject"])
    assert ("CRITICAL" in subject or "WARNING" in subject) and str(loop.drift_day) in subject
    body = mail.get_body(("plain",)).get_content()
    assert "DRIFTED competitor_gap" in body and "omnicart://retrain/pricing" in body
    # the served prices of the day were checked too: their drift and their forecast error against the day's sales
    assert "Prediction drift (column" in body and f"{C.predicted_units}:" in body
    assert "Outcomes:" in body and "wape" in body
    [report] = [p for p in mail.iter_attachments() if p.get_filename() == f"data-drift-{loop.drift_day}.html"]
    assert len(report.get_content()) > 10_000
    # No other family is mailed twice, and support (untouched by a price shock) not at all.
    families_mailed = [str(m["Subject"]).split(" ")[1] for m in loop.drift_mails]
    assert len(families_mailed) == len(set(families_mailed)) and "support" not in families_mailed


def test_price_shock_emits_the_pricing_retrain_asset(loop, platform):
    states = orchestration.task_states(loop.drift_run)
    assert states["retrain_pricing"] == "success" and states["retrain_support"] == "skipped"
    [event] = retrain_events(loop.drift_run)
    assert event["task"] == "retrain_pricing"
    assert event["extra"]["family"] == "pricing" and event["extra"]["day"] == loop.drift_day.isoformat()
    state = incidents.load(platform.settings, "pricing")
    assert state.incident is not None and state.incident.opened == loop.drift_day.isoformat()


def test_the_retrain_asset_makes_the_scheduler_start_train_models(loop):
    """train_models is scheduled on the retrain assets (AssetAny): the scheduler's own query finds it due after the
    drift day's monitor run emitted the pricing asset, and not after the clean day's, which emitted nothing."""
    assert "train_models" not in loop.due_after_clean
    assert "train_models" in loop.due_after_drift


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


def test_retraining_deploys_a_new_champion_that_answers_and_becomes_the_reference(loop, platform):
    """The loop's last leg: train_models on the pricing asset registers and promotes a new champion, its deploy task
    redeploys Serve, POST /price answers with the new version, and the next check compares with its window."""
    from monitoring.run import champion_run, reference_window

    s = platform.settings
    assert loop.retrain_run is not None, "the drift run emitted no retrain asset"
    states = orchestration.task_states(loop.retrain_run)
    assert str(loop.retrain_run.state) == "success", states
    assert states["deploy"] == "success"
    version, params, _ = champion_run(s, "pricing")
    assert version is not None and version != loop.first_version
    assert params["as_of"] == loop.drift_day.isoformat()

    item = lake.read_table(s.lake_dir, schemas.ITEMS)[C.item_id].iloc[0]
    headers = {"X-API-Key": s.secret("api_key")}
    answer = httpx.post(f"{s.serve_url}/price", json={"product_id": item}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == version
    # /health sums every replica's counters, each reported within ~0.1 s of a change
    deadline, health = time.monotonic() + 5, {}
    while time.monotonic() < deadline and not health.get("prediction_log", {}).get("logged"):
        health = httpx.get(f"{s.serve_url}/health", headers=headers, timeout=30).json()
        time.sleep(0.05)
    assert health["models"]["pricing"] == version and health["prediction_log"]["logged"] >= 1

    start, end, source = reference_window(s, "pricing", loop.drift_day, params=params, version=version)
    assert source == f"champion v{version} training window"
    assert end == loop.drift_day - dt.timedelta(days=1) and start <= s.sim_start  # every clean day of the lake
