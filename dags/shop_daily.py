"""The walking skeleton: one day of the shop through every component, from raw channel data to a served model."""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, task

DOC = """
### shop_daily
For the day that ended at the data interval's end (the run of logical date 2026-01-22 processes
2026-01-21): simulate the shop's channel data into the landing area and ingest it into the lake (PII
pseudonymised) → build feature partitions (customer stats and the omnichannel windows), `feast apply` and
materialize into the online store → train the recommender as a Ray Train job (its ranker reads the item windows
point-in-time from Feast), register it in MLflow and promote it to `champion` if it beats the current one →
deploy the champion with Ray Serve → check the day's data for drift with Evidently and email the ML team if it drifted.

Every task replaces its day's partitions, so re-runs and backfills are safe. `history_days` (manual trigger) also
(re)builds that many days before the interval, which a fresh installation needs for training and the drift reference.
"""

DEFAULT_ARGS = {"owner": "ml-team", "retries": 1, "retry_delay": dt.timedelta(minutes=1)}


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


def _window(data_interval_end, params) -> tuple[dt.date, dt.date]:
    """The run processes the day that ended at its data interval's end (a run at midnight of the 6th: the 5th)."""
    day = (data_interval_end - dt.timedelta(microseconds=1)).date()
    return day - dt.timedelta(days=int(params["history_days"])), day


@dag(
    dag_id="shop_daily",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["omnicart", "skeleton", "recommend", "monitoring"],
    doc_md=DOC,
    params={"history_days": Param(0, type="integer", minimum=0, maximum=365, description="Days before to rebuild.")},
)
def shop_daily():
    @task
    def ingest(data_interval_end=None, params=None) -> dict:
        from omnicart.ingest.daily import land_and_ingest

        first, day = _window(data_interval_end, params)
        counts = land_and_ingest(_settings(), first, day)
        return {"first": first.isoformat(), "day": day.isoformat(), "rows": counts[-1].rows}

    @task
    def features(window: dict) -> dict:
        from omnicart.features import build_feature_days, build_omnichannel_days

        first, day = dt.date.fromisoformat(window["first"]), dt.date.fromisoformat(window["day"])
        rows = build_feature_days(_settings(), first, day)
        # the omnichannel windows too: the recommender's ranker reads the item windows from Feast
        return {**rows, **build_omnichannel_days(_settings(), first, day)}

    @task
    def materialize(window: dict, _features: dict) -> None:
        from feature_repo.apply import apply_and_materialize

        apply_and_materialize(_settings(), dt.date.fromisoformat(window["first"]), dt.date.fromisoformat(window["day"]))

    @task
    def train(window: dict) -> dict:
        from training.run import train_family

        return train_family(_settings(), "recommend", dt.date.fromisoformat(window["day"])).to_dict()

    @task
    def deploy(_outcome: dict) -> str:
        from serving.app import deploy as serve_deploy

        return serve_deploy(_settings())

    @task
    def check_drift(window: dict) -> dict:
        from monitoring.run import check_day

        return check_day(_settings(), dt.date.fromisoformat(window["day"])).to_dict()

    @task
    def alert(result: dict) -> bool:
        from monitoring.drift import DriftResult
        from monitoring.run import alert as send_alert

        return send_alert(_settings(), DriftResult.from_dict(result))

    window = ingest()
    built = features(window)
    loaded = materialize(window, built)
    outcome = train(window)
    loaded >> outcome
    deploy(outcome)
    alert(check_drift(window))


shop_daily()
