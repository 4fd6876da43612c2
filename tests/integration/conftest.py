"""A small simulated shop run through the real components: Airflow's DAG runner and metadata DB, Feast with a
SQLite online store, a local Ray cluster with Serve on a free loopback port, MLflow on SQLite, and an SMTP sink."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge import orchestration, services
from edge.mailsink import MailSink
from omnicart.raycluster import free_ports
from omnicart.settings import Settings, get_settings

SIM_DAYS = 12
DRIFT_DAY = SIM_DAYS  # the day after the clean history: price shock


@contextmanager
def settings_env(values: dict[str, str], unset: Iterable[str] = ()) -> Iterator[None]:
    """``OMNICART_*`` overrides for a block (restored after, by pytest's MonkeyPatch), with the settings cache
    cleared on the way in and out so ``get_settings()`` reads them."""
    try:
        with pytest.MonkeyPatch.context() as env:
            for key, value in values.items():
                env.setenv(key, value)
            for key in unset:
                env.delenv(key, raising=False)
            get_settings.cache_clear()
            yield
    finally:
        get_settings.cache_clear()


def set_paused(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=paused))


@contextmanager
def unpaused(dag_id: str) -> Iterator[None]:
    """``dag_id`` active for a block (DAGs start paused here): asset events queue only active DAGs, and a paused
    DAG's backfill runs wait."""
    set_paused(dag_id, False)
    try:
        yield
    finally:
        set_paused(dag_id, True)


def clear_asset_queue(dag_id: str) -> None:
    """Forget the asset events queued for ``dag_id`` (the scheduler would have started it on them)."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id))


def dags_due_on_assets() -> set[str]:
    """The DAGs the scheduler would start now because their asset condition is met: its own query on the metadata
    DB, without running a scheduler."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        _, due = DagModel.dags_needing_dagruns(session)
        session.rollback()  # release the rows the query locks; nothing to write
    return set(due)


def xcom_return(run, task_id: str):
    """What ``task_id`` returned in the DAG run ``run`` (its return_value XCom, JSON-decoded)."""
    import json

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        )
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:  # a plain string stored as it is (e.g. a URL)
        return value


def asset_events(dag_id: str, run_id: str | None = None, uri: str | None = None) -> list[dict]:
    """The asset events that DAG ``dag_id`` emitted (in run ``run_id``, of asset ``uri``, when given): each one's
    ``uri``, ``extra`` and emitting ``task``."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = (
        select(AssetModel.uri, AssetEvent.extra, AssetEvent.source_task_id)
        .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
        .where(AssetEvent.source_dag_id == dag_id)
    )
    if run_id is not None:
        query = query.where(AssetEvent.source_run_id == run_id)
    if uri is not None:
        query = query.where(AssetModel.uri == uri)
    with create_session() as session:
        return [{"uri": u, "extra": extra, "task": task} for u, extra, task in session.execute(query).all()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Platform:
    settings: Settings
    mail: MailSink


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("omnicart-home")
    serve_port, smtp_port = free_ports("127.0.0.1", 2)  # at once: ports picked one by one may repeat
    env = {
        "OMNICART_HOME": str(home),
        "OMNICART_SIM_CUSTOMERS": "1000",
        "OMNICART_SIM_ITEMS": "60",
        "OMNICART_SIM_DAYS": str(SIM_DAYS + 1),
        "OMNICART_DRIFT_KIND": "price_shock",
        "OMNICART_DRIFT_DAY": str(DRIFT_DAY),
        "OMNICART_SERVE_PORT": serve_port,
        "OMNICART_SMTP_PORT": smtp_port,
    }
    with settings_env(env, unset=("OMNICART_RAY_ADDRESS", "OMNICART_CONFIG")):
        settings = get_settings()

        from edge import orchestration

        orchestration.prepare(settings)
        mail = MailSink(settings.mail_dir, host=settings.smtp_host, port=settings.smtp_port).start()
        try:
            yield Platform(settings, mail)
        finally:
            mail.stop()
            from omnicart import raycluster

            leftover = raycluster.shutdown()
            if leftover:  # workers hung in teardown after their raylet stopped (seen: a Ray Train controller)
                print(f"killed Ray workers that outlived the test cluster: {leftover}")


def mails(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.eml"))


# --- a backfill from Airflow's CLI, run by Airflow's scheduler ---------------------------------------------------
@contextlib.contextmanager
def scheduler(platform_settings: Settings, logs: Path) -> Iterator[dict[str, subprocess.Popen]]:
    """Airflow's scheduler (LocalExecutor) and the API server's task execution API on a free loopback port, over
    this process's metadata DB, for the duration of the block; then both stop, with every task process they started.

    No DAG processor: the DAGs are already serialized in the DB (dag.test syncs them) and each task parses its own
    file. The scheduler creates no runs of its own (``use_job_schedule`` off): unpausing a DAG for its backfill must
    not add a scheduled run of today.
    """
    port = free_port()
    airflow_settings = platform_settings.model_copy(update={"airflow_port": port})
    env = {
        **os.environ,  # the OMNICART_* of this module's home: what the tasks read
        **services.airflow_env(airflow_settings, orchestration.dags_folder()),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),  # the scheduler signs task tokens, the API checks them
        "PYTHONUNBUFFERED": "1",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    commands = {
        "api-server": [airflow, "api-server", "--apps", "execution", "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1"],
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
    }
    started: dict[str, subprocess.Popen] = {}
    try:
        for name, argv in commands.items():
            with (logs / f"{name}.log").open("wb") as out:
                started[name] = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        services.wait_for_port("127.0.0.1", port, timeout=120)
        yield started
    finally:
        for proc in started.values():
            services.stop_session(proc.pid)  # its whole session: the executor's workers and task processes too


def backfill_cli(dag_id: str, first: dt.date, last: dt.date, conf: dict | None = None) -> None:
    """`airflow backfill create` of ``dag_id`` over [first, last], oldest first, redoing runs that exist."""
    airflow = Path(sys.executable).with_name("airflow")
    command = [str(airflow), "backfill", "create", "--dag-id", dag_id]
    command += ["--from-date", first.isoformat(), "--to-date", last.isoformat()]
    command += ["--max-active-runs", "1", "--reprocess-behavior", "completed"]  # oldest first; redo the daily runs
    if conf is not None:
        command += ["--dag-run-conf", json.dumps(conf)]
    done = subprocess.run(command, env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command[1:])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def backfill_runs(dag_id: str, timeout: float, started: dict[str, subprocess.Popen], logs: Path) -> list:
    """Wait until the newest backfill of ``dag_id`` is complete; its DagRuns, oldest first."""
    from airflow.models.backfill import Backfill, BackfillDagRun
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    deadline = time.monotonic() + timeout
    while True:
        with create_session() as session:
            backfill = session.scalars(
                select(Backfill).where(Backfill.dag_id == dag_id).order_by(Backfill.id.desc())
            ).first()
            if backfill is not None and backfill.completed_at is not None:
                runs = session.scalars(
                    select(DagRun)
                    .join(BackfillDagRun, BackfillDagRun.dag_run_id == DagRun.id)
                    .where(BackfillDagRun.backfill_id == backfill.id)
                    .order_by(DagRun.logical_date)
                ).all()
                session.expunge_all()
                return runs
        dead = [name for name, proc in started.items() if proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = {name: (logs / f"{name}.log").read_text(errors="replace")[-3000:] for name in started}
            pytest.fail(f"backfill not complete ({'exited: ' + str(dead) if dead else 'timed out'}): {tails}")
        time.sleep(2)


def queued_by_the_scheduler(run) -> dict[str, str]:
    """Task id → state of the run's task instances that a SchedulerJob queued (dag.test queues none)."""
    from airflow.jobs.job import Job
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state)
            .join(Job, Job.id == TaskInstance.queued_by_job_id)
            .where(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id, Job.job_type == "SchedulerJob")
        ).all()
    return {task_id: str(state) for task_id, state in rows}
