"""A canary end to end over HTTP: a challenger version started from the CLI takes its sticky share of /recommend,
every answer and logged prediction names its variant, the shop's purchases follow, the evaluate_experiments DAG
(Airflow) decides on the joined log and outcomes, promotes the challenger in MLflow, redeploys Ray Serve and mails
the ML team."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from edge import orchestration
from edge.cli import app as cli
from omnicart import lake, registry, schemas
from omnicart.experiments import config as xconfig
from omnicart.schemas import C
from tests.integration.conftest import mails, xcom_return

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

CUSTOMERS = 240


@pytest.fixture(scope="module")
def served(platform):
    """The shop's clean days in the lake and Feast, a recommend champion (version 1), the same model registered again
    as version 2 (the challenger), and the Serve app deployed."""
    from feature_repo.apply import apply_and_materialize
    from omnicart.features import build_feature_days, build_omnichannel_days
    from omnicart.ingest.daily import land_and_ingest
    from serving.app import deploy
    from training.run import train_family

    s = platform.settings
    first, day = s.sim_start, s.sim_end - dt.timedelta(days=1)  # the last simulated day is the drifted one
    land_and_ingest(s, first, day)
    build_feature_days(s, first, day)
    build_omnichannel_days(s, first, day)
    apply_and_materialize(s, first, day)
    champion = train_family(s, "recommend", day)
    registry.promote(s, "recommend", champion.version)
    mlc = registry.client(s)
    model = mlc.get_model_version(registry.model_name("recommend"), champion.version)
    challenger = mlc.create_model_version(registry.model_name("recommend"), source=model.source, run_id=model.run_id)
    deploy(s)
    events = lake.read_table(s.lake_dir, schemas.EVENTS, day, day)
    customers = sorted(set(events[C.customer_id].dropna().astype(str)))[:CUSTOMERS]
    return s, champion.version, str(challenger.version), customers


def _recommend(s, customer: str) -> dict:
    response = httpx.post(
        f"{s.serve_url}/recommend",
        json={"customer_id": customer, "k": 3},
        headers={"X-API-Key": s.secret("api_key")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False:  # a frame or a dict is an answer whatever its truth value
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_canary_split_outcomes_decision_promotion_redeploy_and_mail(platform, served) -> None:
    s, champion, challenger, customers = served
    today = dt.date.today()
    # 1. start: half of the customers (a large share keeps the test short), planned for a large effect
    started = CliRunner().invoke(
        cli,
        ["experiments", "start", "recommend", "--version", challenger, "--stages", "0.5", "--mde", "0.9"],
    )
    assert started.exit_code == 0, started.output
    assert registry.alias_version(s, "recommend", registry.CHALLENGER) == challenger
    experiment = xconfig.running(s.home_dir, "recommend")
    assert experiment is not None and experiment.share == 0.5
    # the latency guardrail (1.5 × the champion's p95) is loosened: on a shared 2-core machine two replicas' p95
    # over a hundred requests differ more than that by load alone
    experiment = xconfig.Experiment(dataclasses.replace(experiment.config, max_latency_ratio=20.0), experiment.state)
    xconfig.save(s.home_dir, experiment)
    # the CLI's rolling update made every replica load the challenger: answers carry their variant
    _wait(lambda: _recommend(s, customers[0])["variant"] is not None, 300, "the challenger to serve")

    # 2. the split over HTTP: sticky per customer, at the share, each variant answered by its version
    answers = {}
    for customer in customers:
        answer = _recommend(s, customer)
        assert answer["variant"] == experiment.variant(customer)
        assert answer["model_version"] == (challenger if answer["variant"] == "challenger" else champion)
        answers[customer] = answer
    again = _recommend(s, customers[1])
    assert again["variant"] == answers[customers[1]]["variant"]
    share = np.mean([a["variant"] == "challenger" for a in answers.values()])
    assert 0.3 < share < 0.7

    # 3. the prediction log (written by the replicas every few seconds) holds each answer with its variant
    def logged():
        rows = lake.read_table(s.lake_dir, schemas.predictions_table("recommend"), today, today)
        rows = rows[rows[C.variant].notna()] if C.variant in rows.columns else rows.iloc[0:0]
        return rows if rows[C.customer_id].nunique() >= len(customers) else None

    rows = _wait(logged, 120, "the prediction log")
    assert set(rows[C.variant]) == {"champion", "challenger"}
    assert (rows.groupby(C.customer_id)[C.variant].nunique() == 1).all()

    # 4. outcomes: the challenger's customers buy what it showed far more often (the shop's purchases, as ingest
    # writes them)
    rng = np.random.default_rng(0)
    buys = [
        (customer, answer["items"][0]["item_id"])
        for customer, answer in answers.items()
        if answer["items"] and rng.random() < (0.8 if answer["variant"] == "challenger" else 0.1)
    ]
    stamp = pd.Timestamp(today, tz="UTC") + pd.Timedelta(hours=20)
    purchases = pd.DataFrame(
        {
            C.event_id: [f"X{i:05d}" for i in range(len(buys))],
            C.event_timestamp: stamp,
            C.customer_id: [b[0] for b in buys],
            C.channel: "web",
            C.event_type: "purchase",
            C.item_id: [b[1] for b in buys],
            C.quantity: 1,
            C.price: 10.0,
        }
    )
    lake.write_partition(s.lake_dir, schemas.EVENTS, today, purchases)

    # 5. the daily DAG decides, promotes, redeploys and mails
    before = len(mails(s.mail_dir))
    run = orchestration.run_dag("evaluate_experiments", today)
    states = orchestration.task_states(run)
    assert str(run.state) == "success" and set(states.values()) == {"success"}, states
    (summary,) = xcom_return(run, "evaluate")
    assert summary["action"] == "promote", summary
    assert summary["uplift"]["relative"] > 1 and summary["srm_p_value"] > 0.001
    assert registry.champion_version(s, "recommend") == challenger
    assert registry.alias_version(s, "recommend", registry.PREVIOUS) == champion
    assert registry.alias_version(s, "recommend", registry.CHALLENGER) is None
    assert xcom_return(run, "redeploy") == s.serve_url
    # every customer now gets the new champion, without a variant (the experiment ended)
    after = _wait(lambda: (a := _recommend(s, customers[0]))["variant"] is None and a, 300, "the promoted champion")
    assert after["model_version"] == challenger
    new = mails(s.mail_dir)[before:]
    assert len(new) == 1
    message = email.message_from_bytes(new[0].read_bytes(), policy=email.policy.default)
    assert "recommend promote" in message["Subject"]
    assert "the challenger is better" in message.get_body().get_content()
