"""Run the platform's DAGs with Airflow itself (``dag.test()``: the real task runner and metadata DB, no scheduler),
and the Airflow environment of the profile (the production profile's scheduler runs them instead: ``omnicart up``).

Airflow reads its configuration from the environment when first imported, so ``prepare`` must run before any
``airflow`` import in the process; the CLI and the tests call it at their edge.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omnicart import stores
from omnicart.settings import Settings


def project_dir() -> Path:
    """The folder holding dags/, feature_repo/ and infra/ (the repository root)."""
    return Path(__file__).resolve().parents[1]


def dags_folder() -> Path:
    return project_dir() / "dags"


def airflow_env(settings: Settings, dags: Path | None = None) -> dict[str, str]:
    """Environment for every Airflow process of this home: our DAGs, no examples, loopback, and the metadata DB of the
    profile: SQLite under home (embedded) or schema ``airflow`` on ``postgres_url`` with the configured executor
    (production)."""
    return {
        **metadata_db_env(settings),
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags or dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__SMTP__SMTP_HOST": settings.smtp_host,
        "AIRFLOW__SMTP__SMTP_PORT": str(settings.smtp_port),
    }


def metadata_db_env(settings: Settings) -> dict[str, str]:
    """The production profile's Airflow metadata DB and executor; nothing in the embedded profile (Airflow's SQLite
    under ``AIRFLOW_HOME``)."""
    if settings.profile != "production":
        return {}
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.postgres_store_url("airflow"),
        # Airflow's API server also opens an asyncio engine; psycopg 3 serves both (Airflow would pick asyncpg)
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": settings.postgres_store_url("airflow", driver="psycopg"),
        "AIRFLOW__CORE__EXECUTOR": settings.airflow_executor,
    }


def prepare(settings: Settings, dags: Path | None = None) -> None:
    """Point this process's Airflow at the settings' home and create or upgrade its metadata DB."""
    env = airflow_env(settings, dags)
    os.environ.update(env)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    if settings.profile == "production":
        stores.ensure_postgres_schemas(settings)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], env={**os.environ, **env}, check=True, capture_output=True)


def run_dag(dag_id: str, day: dt.date, conf: dict[str, Any] | None = None, dags: Path | None = None) -> Any:
    """Run one daily DAG to the end in this process for the data of ``day`` (logical date: the midnight after it);
    returns the DagRun (check ``.state``)."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(dags or dags_folder()))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise LookupError(f"no DAG {dag_id!r} in {dags or dags_folder()}")
    after = day + dt.timedelta(days=1)
    when = pendulum.datetime(after.year, after.month, after.day, tz="UTC")
    return dag.test(logical_date=when, run_conf=conf or {})


def task_states(dag_run: Any) -> dict[str, str]:
    """Task id → final state of a finished run."""
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
