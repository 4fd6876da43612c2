"""Daily drift and outcome checks of every model family; a failing family emails the team and requests retraining."""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Asset, dag, task

from monitoring.config import DEFAULT_FAMILIES, retrain_asset_uri

DOC = """
### monitor_models
For the day that ended at the data interval's end (the run of logical date 2026-01-22 checks 2026-01-21), per model
family (recommend, pricing, support):

1. `check_<family>`: Evidently compares the day's feature columns with the champion's training window (MLflow run
   params `train_start` .. `as_of`), logged predictions with the earlier ones, and scores outcomes that arrived
   (recommend hit rate, pricing forecast error, support escalations and feedback). HTML reports go to
   `home/reports/<family>/`, runs to the family's project in the Evidently workspace (`home/evidently`, the
   `evidently ui` of `omnicart up`). Skipped when the family has no data for the day.
2. `notify_<family>`: one mail per incident to the team (subject: family and severity), a reminder while it stays
   open, a recovery mail when the family is clean again; state in `home/monitoring/incidents/<family>.json`.
3. `retrain_<family>`: when the check failed and a mail went out, emits the asset
   `omnicart://retrain/<family>`; the `train_models` DAG is scheduled on these assets. Skipped otherwise.

Idempotent by logical date: a re-run of a day replaces its reports and workspace runs and sends no second mail.
Backfill with `airflow backfill create --dag-id monitor_models --from-date START --to-date END` (runs go in date
order, one at a time, so incidents advance day by day; days older than the last decided one mail nothing).
"""

DEFAULT_ARGS = {"owner": "ml-team", "retries": 2, "retry_delay": dt.timedelta(minutes=1)}


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


def _day(data_interval_end) -> dt.date:
    """The checked day: the one that ended at the data interval's end."""
    return (data_interval_end - dt.timedelta(microseconds=1)).date()


@dag(
    dag_id="monitor_models",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["omnicart", "monitoring", "drift", "retraining"],
    doc_md=DOC,
)
def monitor_models():
    @task
    def check(family: str, data_interval_end=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from monitoring.run import NoData, monitor_family

        try:
            return monitor_family(_settings(), family, _day(data_interval_end)).to_dict()
        except NoData as exc:
            raise AirflowSkipException(str(exc)) from exc

    @task
    def notify(result: dict) -> dict:
        from monitoring.checks import FamilyCheck
        from monitoring.run import notify as send_notice

        return send_notice(_settings(), FamilyCheck.from_dict(result)).to_dict()

    @task
    def retrain(decision: dict, outlet_events=None) -> str:
        """Emits this task's outlet (the family's retrain asset) only when the decision asks for retraining."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision["retrain"]:
            raise AirflowSkipException(f"{decision['family']}: no retraining needed on {decision['day']}")
        asset = Asset(retrain_asset_uri(decision["family"]))
        outlet_events[asset].extra = {
            "family": decision["family"],
            "day": decision["day"],
            "severity": decision["severity"],
            "incident_opened": decision["incident_opened"],
        }
        return asset.uri

    for family in DEFAULT_FAMILIES:
        result = check.override(task_id=f"check_{family}")(family)
        decision = notify.override(task_id=f"notify_{family}")(result)
        retrain.override(task_id=f"retrain_{family}", outlets=[Asset(retrain_asset_uri(family))])(decision)


monitor_models()
