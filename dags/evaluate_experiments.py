"""evaluate_experiments: each day, decide every running online experiment, redeploy, and mail the ML team."""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import dag, task

DOC = """
### evaluate_experiments
For each model family with a running online experiment (`omnicart experiments start FAMILY`): join the day's
prediction log with the shop's outcomes (recommend: recommended items bought that day or the next; pricing: profit
per item-day; support: answers neither escalated nor rated unhelpful), compute the uplift with its confidence
interval (CUPED where a pre-period exists) and the sample-ratio check, and decide: promote (move the MLflow
`champion` alias), widen the canary, continue, or roll back. Then redeploy Ray Serve when anything changed, and
mail the ML team which and why. See docs/experiments.md.
"""

DEFAULT_ARGS = {"owner": "ml-team", "retries": 1, "retry_delay": dt.timedelta(minutes=2)}


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


@dag(
    dag_id="evaluate_experiments",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["omnicart", "experiments", "registry"],
    doc_md=DOC,
)
def evaluate_experiments():
    @task
    def evaluate(data_interval_end=None) -> list[dict]:
        from monitoring.experiments import evaluate_all

        day = (data_interval_end - dt.timedelta(microseconds=1)).date()
        return evaluate_all(_settings(), day)

    @task
    def redeploy(summaries: list[dict]) -> str | None:
        """Serve's rolling update, when a decision changed the served versions or shares."""
        if not any(s["redeploy"] for s in summaries):
            return None
        from serving.app import deploy

        return deploy(_settings())

    @task(trigger_rule="all_done")  # the team hears of a decision even when the redeploy failed
    def mail(summaries: list[dict], data_interval_end=None) -> bool:
        from monitoring.experiments import mail as send

        day = (data_interval_end - dt.timedelta(microseconds=1)).date()
        return send(_settings(), summaries, day)

    summaries = evaluate()
    redeploy(summaries) >> mail(summaries)


evaluate_experiments()
