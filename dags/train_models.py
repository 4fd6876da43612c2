"""train_models: one mapped task per model family — build dataset → train → evaluate → promote — then deploy."""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Asset, AssetAny, Param, dag, task

from monitoring.config import retrain_asset_uri
from omnicart.schemas import FAMILIES

DOC = """
### train_models
For each model family (one mapped task each): build the point-in-time dataset from Feast and the lake, train it as
a Ray Train job, evaluate it beside its baselines and the current champion on the same data, register it in MLflow
and promote it to `champion` only when it wins. Then redeploy the Ray Serve application so the champions serve.
The same code path as `omnicart train FAMILY`. It runs when `monitor_models` emits a family's retrain asset
(`omnicart://retrain/<family>`), or from the UI with `families` to retrain a chosen subset.
"""

DEFAULT_ARGS = {"owner": "ml-team", "retries": 1, "retry_delay": dt.timedelta(minutes=2)}


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


# monitor_models emits omnicart://retrain/<family> when a family drifts; any of them starts a retraining run
RETRAIN_ASSETS = [Asset(retrain_asset_uri(family)) for family in FAMILIES]


@dag(
    dag_id="train_models",
    schedule=AssetAny(*RETRAIN_ASSETS),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["omnicart", "training", "registry"],
    doc_md=DOC,
    params={
        "families": Param(
            ["recommend"],
            type="array",
            items={"type": "string", "enum": list(FAMILIES)},
            description=f"Model families to retrain ({', '.join(FAMILIES)}).",
        ),
    },
)
def train_models():
    @task
    def families(params=None, triggering_asset_events=None) -> list[str]:
        """The families whose retrain asset fired, or those of the manual trigger's params."""
        fired = {e.extra.get("family") for events in (triggering_asset_events or {}).values() for e in events}
        return sorted(f for f in fired if f) or list(params["families"])

    @task
    def train_family(family: str, data_interval_end=None) -> dict:
        from training.run import train_family as train

        day = (data_interval_end - dt.timedelta(microseconds=1)).date()
        return train(_settings(), family, day).to_dict()

    @task
    def deploy(outcomes: list[dict]) -> str:
        from serving.app import deploy as serve_deploy

        return serve_deploy(_settings())

    deploy(train_family.expand(family=families()))


train_models()
