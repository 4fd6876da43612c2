"""The production profile on real servers: a PostgreSQL and a Redis on loopback (temporary ports and data dirs, from
the Debian packages ``postgresql`` and ``redis-server`` that ``make test`` installs when missing), the MLflow tracking
server on PostgreSQL, a Ray head with Serve, and Airflow's own scheduler (LocalExecutor), DAG processor and API server
on a PostgreSQL metadata DB. One shop day runs through the scheduler-driven ``shop_daily`` DAG: ingest → materialize
into Redis → train → promote in the MLflow server → deploy → ``/recommend`` reads Redis → drift check. The data must
land in PostgreSQL and Redis, never in a SQLite file under home.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from omnicart.raycluster import free_ports
from omnicart.settings import Settings, get_settings
from tests.integration.conftest import free_port, settings_env

pytestmark = pytest.mark.integration

SIM_DAYS = 12
PG_PASSWORD = "pg-Secret-1"
REDIS_PASSWORD = "redis-Secret-1"
RUN_TIMEOUT_S = 900  # the whole DAG run, scheduler-driven, on a busy 2-core machine


def _pg_bin() -> Path | None:
    """The folder of initdb/pg_ctl: Debian keeps them under /usr/lib/postgresql/<major>/bin, off the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the package's ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port (scram-sha-256, a password), database ``omnicart``;
    yields its URL; stopped and deleted after."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; `make test` installs it as root)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: PostgreSQL cannot be started as another user")
    root = Path(tempfile.mkdtemp(prefix="omnicart-pg-"))  # under /tmp: the postgres user must traverse its parents
    data, pwfile, log = root / "data", root / "pw", root / "server.log"
    pwfile.write_text(PG_PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    pg_ctl = str(pg_bin / "pg_ctl")
    try:
        subprocess.run(
            _as_server_user(
                [
                    str(pg_bin / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "omnicart",
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                ]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"]),
            check=True,
            capture_output=True,
        )
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=port, user="omnicart", password=PG_PASSWORD, dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("CREATE DATABASE omnicart")
        admin.close()
        yield f"postgresql://omnicart:{PG_PASSWORD}@127.0.0.1:{port}/omnicart"
    finally:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Production:
    settings: Settings
    postgres_url: str
    redis_url: str
    run_id: str
    day: dt.date
    states: dict[str, str]


def _sql(url: str, query: str) -> list[tuple]:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


class AirflowAPI:
    """Airflow's REST API (v2) as user admin of the simple auth manager."""

    def __init__(self, settings: Settings) -> None:
        from edge import services

        self.base = f"http://{settings.host}:{settings.airflow_port}"
        token = httpx.post(
            f"{self.base}/auth/token",
            json={"username": "admin", "password": services.airflow_admin_password(settings)},
            timeout=30,
            trust_env=False,
        )
        token.raise_for_status()
        self.http = httpx.Client(
            base_url=f"{self.base}/api/v2",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=60,
            trust_env=False,
        )

    def get(self, path: str) -> dict:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 240) -> None:
        """Until the DAG processor has parsed ``dag_id`` into the metadata DB."""
        deadline = time.monotonic() + timeout
        while self.http.get(f"/dags/{dag_id}").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the DAG processor did not register {dag_id} within {timeout:.0f}s")
            time.sleep(2)

    def trigger(self, dag_id: str, logical_date: dt.datetime, conf: dict) -> str:
        response = self.http.post(
            f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date.isoformat(), "conf": conf}
        )
        assert response.status_code == 200, response.text
        self.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()  # paused DAGs' runs wait
        return response.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed") or time.monotonic() > deadline:
                return state
            time.sleep(5)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: str(ti["state"]) for ti in tis}

    def task_logs(self, dag_id: str, run_id: str) -> str:
        """The log of every task that did not succeed (for the failure message)."""
        out = []
        for ti in self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
            if ti["state"] == "success":
                continue
            tries = max(int(ti.get("try_number") or 1), 1)
            response = self.http.get(
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{tries}",
                headers={"Accept": "text/plain"},
            )
            out.append(f"--- {ti['task_id']} ({ti['state']}, try {tries}) ---\n{response.text[-6000:]}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    from benchmarks.feast_online import redis_server
    from benchmarks.runner import NotAvailable
    from edge import orchestration, services

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; `make test` installs it as root)")
    home = tmp_path_factory.mktemp("omnicart-production")
    with contextlib.ExitStack() as stack:
        postgres_url = stack.enter_context(postgres_server())
        try:
            redis_url = stack.enter_context(redis_server(home.parent / "redis", password=REDIS_PASSWORD))
        except NotAvailable as exc:
            pytest.skip(str(exc))
        # at once: ports picked one by one may repeat
        mlflow_port, serve_port, airflow_port, smtp_port, dashboard_port, evidently_port = free_ports("127.0.0.1", 6)
        env = {
            "OMNICART_PROFILE": "production",
            "OMNICART_HOME": str(home),
            "OMNICART_POSTGRES_URL": postgres_url,
            "OMNICART_REDIS_URL": redis_url,
            "OMNICART_MLFLOW_PORT": mlflow_port,
            "OMNICART_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "OMNICART_RAY_ADDRESS": f"127.0.0.1:{services.RAY_GCS_PORT}",
            "OMNICART_API_KEY": "production-api-key-" + "x" * 12,
            "OMNICART_PSEUDONYM_KEY": "production-pseudonym-key-" + "y" * 12,
            "OMNICART_SIM_CUSTOMERS": "1000",
            "OMNICART_SIM_ITEMS": "60",
            "OMNICART_SIM_DAYS": str(SIM_DAYS + 1),
            "OMNICART_DRIFT_KIND": "price_shock",
            "OMNICART_DRIFT_DAY": str(SIM_DAYS),
            "OMNICART_SERVE_PORT": serve_port,
            "OMNICART_AIRFLOW_PORT": airflow_port,
            "OMNICART_SMTP_PORT": smtp_port,
            "OMNICART_RAY_DASHBOARD_PORT": dashboard_port,
            "OMNICART_EVIDENTLY_PORT": evidently_port,
            # only the run triggered below: no run of the cron schedule's latest interval (today, outside the shop)
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
        stack.enter_context(settings_env(env, unset=("OMNICART_CONFIG",)))
        settings = get_settings()
        stack.callback(services.down, settings)
        services.up(settings, orchestration.dags_folder(), only=["mail", "mlflow", "ray", "airflow"])

        api = AirflowAPI(settings)
        api.wait_for_dag("shop_daily")
        day = settings.sim_start + dt.timedelta(days=SIM_DAYS - 1)  # the last clean day
        after = dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
        run_id = api.trigger("shop_daily", after, {"history_days": SIM_DAYS - 1})
        state = api.wait_for_run("shop_daily", run_id, RUN_TIMEOUT_S)
        states = api.task_states("shop_daily", run_id)
        if state != "success":
            pytest.fail(f"shop_daily ended {state}: {states}\n{api.task_logs('shop_daily', run_id)}")
        yield Production(settings, postgres_url, redis_url, run_id, day, states)


def test_the_scheduler_ran_every_task_and_airflow_keeps_its_metadata_in_postgres(production):
    assert set(production.states) >= {"ingest", "features", "materialize", "train", "deploy", "check_drift", "alert"}
    assert set(production.states.values()) == {"success"}, production.states
    runs = _sql(
        production.postgres_url, "SELECT run_id, state, run_type FROM airflow.dag_run WHERE dag_id='shop_daily'"
    )
    assert (production.run_id, "success", "manual") in runs
    # every task was queued by the scheduler (dag.test() runs tasks in its own process and queues none)
    queued_by = _sql(
        production.postgres_url,
        "SELECT DISTINCT j.job_type FROM airflow.task_instance ti "
        "LEFT JOIN airflow.job j ON j.id = ti.queued_by_job_id "
        f"WHERE ti.dag_id = 'shop_daily' AND ti.run_id = '{production.run_id}'",
    )
    assert queued_by == [("SchedulerJob",)]


def test_features_were_materialized_into_redis_and_registered_in_postgres(production):
    import redis

    from omnicart import lake, schemas
    from omnicart.featurestore import PROJECT, feature_store, online_features
    from omnicart.schemas import C, F

    assert redis.Redis.from_url(production.redis_url).dbsize() > 100  # a key per customer, item, customer × channel
    views = {name for (name,) in _sql(production.postgres_url, "SELECT feature_view_name FROM feast.feature_views")}
    assert {F.customer_view, F.customer_channel_view, F.item_window_view} <= views
    assert _sql(production.postgres_url, "SELECT DISTINCT project_id FROM feast.feature_views") == [(PROJECT,)]

    s = production.settings
    events = lake.read_table(s.lake_dir, schemas.EVENTS, production.day, production.day)
    customer = events[C.customer_id].dropna().iloc[0]
    row = online_features(feature_store(s), [f"{F.customer_view}:{C.segment}"], C.customer_id, [customer])[0]
    customers = lake.read_table(s.lake_dir, schemas.CUSTOMERS, end=production.day).drop_duplicates(C.customer_id)
    assert row[C.segment] == customers.set_index(C.customer_id)[C.segment][customer]


def test_the_champion_is_promoted_in_the_mlflow_server_on_postgres(production):
    from omnicart import registry

    champion = registry.champion_version(production.settings, "recommend")
    assert champion is not None
    aliases = _sql(
        production.postgres_url,
        "SELECT name, alias, version FROM mlflow.registered_model_aliases WHERE alias='champion'",
    )
    assert (registry.model_name("recommend"), "champion", int(champion)) in aliases
    # artifacts went through the server to its artifact root, not into a client-side path
    mv = registry.client(production.settings).get_model_version(registry.model_name("recommend"), champion)
    assert mv.source.startswith(("mlflow-artifacts:", "models:")), mv.source
    assert any(production.settings.mlflow_artifacts.rglob("MLmodel"))


def test_recommend_answers_from_redis_backed_features(production):
    from omnicart import lake, registry, schemas
    from omnicart.schemas import C

    s = production.settings
    events = lake.read_table(s.lake_dir, schemas.EVENTS, production.day, production.day)
    customer = events[C.customer_id].iloc[0]
    response = httpx.post(
        f"{s.serve_url}/recommend",
        json={"customer_id": customer, "k": 5},
        headers={"X-API-Key": s.secret("api_key")},
        timeout=60,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["items"]) == 5
    assert body["source"] == "personal" and body["fallback"] is None  # the online features were read (from Redis)
    assert body["model_version"] == registry.champion_version(s, "recommend")
    unauthorised = httpx.post(f"{s.serve_url}/recommend", json={"customer_id": customer}, timeout=30, trust_env=False)
    assert unauthorised.status_code == 401


def test_drift_check_ran_on_the_day(production):
    reports = list(production.settings.reports_dir.rglob(f"drift-{production.day}.html"))
    assert reports, "the drift check writes its Evidently report of the day under home/reports"


def test_nothing_landed_in_sqlite_files(production):
    home = production.settings.home_dir
    sqlite = [p for p in home.rglob("*") if p.is_file() and _head(p) == b"SQLite format 3\x00"]
    assert sqlite == [], f"SQLite files under home in the production profile: {sqlite}"
    assert not (home / "mlflow.db").exists() and not (home / "feast" / "online.db").exists()


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(16)
