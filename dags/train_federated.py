"""train_federated: a weekly round schedule of federated pricing over the data owners (Flower, SecAgg+, DP), gated
against the federated champion and registered in MLflow like any family."""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, task

DOC = """
### train_federated
Data owners (stores, regions, partner shops) that may not pool their raw sales train one demand model together.
Each owner's rows live in its own file under `federated_owners_dir` (`omnicart federated owners --dataset
dominicks_beer` writes Dominick's stores as owners). Tasks: list the owners → build each owner's shard from its
file alone (one mapped task per owner) → a Flower run over the shards (SecAgg+: the server unmasks only the sum;
client-level DP when `dp_epsilon` is set) → the model and the current federated champion on every owner's held-out
weeks → register `omnicart-pricing-federated` in MLflow and promote it to `champion` only when it wins (the gate of
every family). The run's `data_interval_end` decides the data: periods that had ended by then are known, the last
`federated_holdout_weeks` of them are held out, the model trains on the weeks before; so a backfill of past weeks
trains on what was known then. See docs/federated.md.
"""

DEFAULT_ARGS = {"owner": "ml-team", "retries": 1, "retry_delay": dt.timedelta(minutes=2)}


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


@dag(
    dag_id="train_federated",
    schedule="@weekly",
    # early enough for backfills over the public owners' data (Dominick's weeks run 1989-1997)
    start_date=pendulum.datetime(1989, 9, 14, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["omnicart", "training", "federated", "registry"],
    doc_md=DOC,
    params={
        "rounds": Param(3, type="integer", minimum=1, description="Federated rounds (FedAvg with SecAgg+)."),
        "dp_epsilon": Param(
            4.0,
            type=["number", "null"],
            exclusiveMinimum=0,
            description="Client-level DP: ε of the whole run (the noise is sized for it); null trains without DP.",
        ),
        "dp_delta": Param(1e-5, type="number", exclusiveMinimum=0, exclusiveMaximum=1, description="DP: δ."),
        "clipping_norm": Param(
            1.0, type="number", exclusiveMinimum=0, description="DP: L2 norm each owner's update is clipped to."
        ),
    },
)
def train_federated():
    @task
    def list_owners() -> list[str]:
        from training.federated import owners

        return owners(_settings())

    @task
    def build_shard(owner_file: str, data_interval_end=None) -> dict:
        from training.federated import build_shard as build

        return build(_settings(), owner_file, data_interval_end)

    @task
    def train(shards: list, params=None, data_interval_end=None) -> dict:
        from training.federated import train as run

        return run(
            _settings(),
            list(shards),
            data_interval_end,
            rounds=int(params["rounds"]),
            epsilon=params["dp_epsilon"],
            delta=float(params["dp_delta"]),
            clipping_norm=float(params["clipping_norm"]),
        )

    @task
    def evaluate(shards: list, trained: dict) -> dict:
        from training.federated import evaluate as judge

        return judge(_settings(), list(shards), trained)

    @task
    def register(trained: dict, judged: dict) -> dict:
        from training.federated import register as log_and_promote

        return log_and_promote(_settings(), trained, judged)

    shards = build_shard.expand(owner_file=list_owners())
    trained = train(shards)
    register(trained, evaluate(shards, trained))


train_federated()
