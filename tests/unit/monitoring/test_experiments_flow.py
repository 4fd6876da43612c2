"""An experiment from start to decision without Airflow or Ray: real MLflow (SQLite), the lake, an SMTP sink.

The prediction log and the shop's purchases are written as serving and ingest write them; the challenger's customers
buy far more of what they were shown, so the first look promotes it: the aliases move and the mail says why."""

from __future__ import annotations

import datetime as dt
import shutil
import socket

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from edge.mailsink import MailSink
from monitoring.experiments import build_mail, evaluate_all, mail
from omnicart import lake, registry, schemas
from omnicart.experiments import config as xconfig
from omnicart.experiments import lifecycle
from omnicart.experiments.config import CHALLENGER
from omnicart.experiments.outcomes import observe
from omnicart.schemas import C
from omnicart.settings import Settings

DAY = dt.date(2026, 3, 2)


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return model_input


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two registered versions of a model, version 1 champion (made once: logging a model takes seconds)."""
    home = tmp_path_factory.mktemp("registered")
    s = Settings(home=home)
    for _ in range(2):
        registry.log_model(s, "recommend", Constant(), artifacts={}, params={}, metrics={})
    registry.promote(s, "recommend", "1")
    return home / "mlflow.db"


@pytest.fixture
def settings(tmp_path, registered) -> Settings:
    shutil.copy(registered, tmp_path / "mlflow.db")  # the artifacts stay where they are: nothing here loads them
    return Settings(home=tmp_path, smtp_port=free_port())


def write_day(settings: Settings, experiment, day: dt.date, rng, customers: int = 400) -> None:
    """A day of logged recommendations (3 items each) and purchases: challenger customers buy a shown item with
    probability 0.6, champion customers 0.2, and everyone buys some unrelated item too."""
    stamp = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=10)
    rows, buys = [], []
    for n in range(customers):
        cid = f"C{n:05d}"
        variant = experiment.variant(cid)
        shown = [f"I{(n + k) % 50:03d}" for k in range(3)]
        for rank, item in enumerate(shown, start=1):
            rows.append(
                {
                    C.event_timestamp: stamp,
                    C.served_at: stamp,
                    C.request_id: f"{day}-{n}",
                    C.customer_id: cid,
                    C.item_id: item,
                    C.rank: rank,
                    C.variant: variant,
                    C.fallback: None,
                    C.latency_ms: 5.0,
                }
            )
        if rng.random() < (0.6 if variant == CHALLENGER else 0.2):
            buys.append((cid, shown[0]))
        buys.append((cid, "I999"))
    lake.append_partition(settings.lake_dir, schemas.predictions_table("recommend"), day, pd.DataFrame(rows))
    events = pd.DataFrame(
        {
            C.event_timestamp: stamp + pd.Timedelta(hours=2),
            C.customer_id: [b[0] for b in buys],
            C.item_id: [b[1] for b in buys],
            C.event_type: "purchase",
            C.quantity: 1,
            C.price: 10.0,
        }
    )
    lake.write_partition(settings.lake_dir, schemas.EVENTS, day, events)


def test_start_refuses_what_cannot_be_tested(settings) -> None:
    with pytest.raises(lifecycle.ExperimentError, match="champion already"):
        lifecycle.start(settings, "recommend", "1", DAY)
    with pytest.raises(lifecycle.ExperimentError, match="no champion"):
        lifecycle.start(settings, "pricing", "1", DAY)
    with pytest.raises(lifecycle.ExperimentError, match="no registered version"):
        lifecycle.start(settings, "recommend", "9", DAY)
    assert xconfig.load(settings.home_dir, "recommend") is None  # nothing half-started
    lifecycle.start(settings, "recommend", "2", DAY)
    with pytest.raises(lifecycle.ExperimentError, match="running"):
        lifecycle.start(settings, "recommend", "2", DAY)
    stopped = lifecycle.stop(settings, "recommend")
    assert stopped.state.status == "stopped" and registry.alias_version(settings, "recommend", CHALLENGER) is None


def test_outcomes_count_recommended_purchases_per_exposed_day(settings) -> None:
    experiment = lifecycle.start(settings, "recommend", "2", DAY, stages=(0.5,))
    write_day(settings, experiment, DAY, np.random.default_rng(0))
    obs = observe(settings.lake_dir, experiment, DAY)
    assert len(obs.champion) + len(obs.challenger) == 400
    assert set(np.unique(np.concatenate([obs.champion, obs.challenger]))) <= {0.0, 1.0}  # I999 is never counted
    assert obs.challenger.mean() > 2 * obs.champion.mean()
    assert obs.requests["champion"][1] == 0 and obs.latency_p95_ms["challenger"] == 5.0
    assert obs.stage_units == (len(obs.champion), len(obs.challenger))


def test_a_better_challenger_is_promoted_and_the_team_is_told_why(settings) -> None:
    experiment = lifecycle.start(settings, "recommend", "2", DAY, stages=(0.5,), mde=0.5)
    assert registry.alias_version(settings, "recommend", CHALLENGER) == "2"
    rng = np.random.default_rng(1)
    write_day(settings, experiment, DAY, rng)
    write_day(settings, experiment, DAY + dt.timedelta(days=1), rng)
    summaries = evaluate_all(settings, DAY + dt.timedelta(days=1))
    assert [s["action"] for s in summaries] == ["promote"] and summaries[0]["redeploy"]
    assert registry.champion_version(settings, "recommend") == "2"
    assert registry.alias_version(settings, "recommend", registry.PREVIOUS) == "1"
    assert registry.alias_version(settings, "recommend", CHALLENGER) is None
    assert xconfig.load(settings.home_dir, "recommend").state.status == "promoted"
    assert evaluate_all(settings, DAY + dt.timedelta(days=2)) == []  # nothing runs any more
    with MailSink(settings.mail_dir, port=settings.smtp_port):
        assert mail(settings, summaries, DAY)
    messages = MailSink(settings.mail_dir, port=settings.smtp_port).messages()
    assert len(messages) == 1
    body = messages[0].get_body().get_content()
    assert "recommend promote" in messages[0]["Subject"] and "the challenger is better" in body
    assert "95% CI" in body
    assert not mail(settings, [], DAY)
    with pytest.raises(ValueError):
        build_mail(summaries, DAY, sender="a@b", recipients=[])
