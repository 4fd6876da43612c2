"""Start, watch and stop the platform's local services, each a background process bound to ``settings.host``.

Airflow (API server + UI, scheduler, DAG processor, triggerer), a Ray head with Serve, the MLflow UI, the
Evidently UI and the mail sink. Pid files and logs live under ``home/run``; ``down`` stops only what ``up``
started (each service runs in its own session, so its whole process tree goes with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omnicart import stores
from omnicart.raycluster import JOIN_ENV, haproxy_env
from omnicart.settings import Settings

SERVICES = ("mail", "mlflow", "evidently", "ray", "airflow")
"""Names ``up(only=...)`` accepts, in start order; ``ray`` brings Ray Serve with it (``serve`` is an alias)."""

RAY_GCS_PORT = 6379
"""Ray's own bootstrap port: join this head with ``OMNICART_RAY_ADDRESS=127.0.0.1:6379``."""

# What a process needs in its environment to join the Ray head that ``up`` starts (``ray start``, ``serve start``
# and any ``ray.init(address=...)`` client). Ray's CLI replaces a loopback --node-ip-address with the machine's LAN
# address and binds GCS, raylet and agents there or on every interface; the first switch makes Ray treat the node
# as loopback-only (a client without it resolves 127.0.0.1 to the LAN address and never connects). Ray turns token
# auth on by default only for ``address="auto"``; with an explicit address the client must ask for it.
RAY_CLIENT_ENV = JOIN_ENV

_TIMEOUTS = {"mail": 30.0, "mlflow": 90.0, "evidently": 60.0, "ray": 120.0, "airflow": 300.0}


@dataclass
class ServiceStatus:
    """Where one service answers and whether it does now; ``log`` is the file its output goes to."""

    name: str
    url: str
    pid: int | None
    running: bool
    log: Path


@dataclass
class _Spec:
    name: str
    url: str
    host: str
    port: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None  # beyond the port answering; None means the open port is enough


# --- pure helpers -------------------------------------------------------------------------------------------------


def run_dir(settings: Settings) -> Path:
    return settings.home_dir / "run"


def bin_dir() -> Path:
    """The virtualenv's bin folder (where ``airflow``, ``ray``, ``mlflow`` live), next to this interpreter."""
    return Path(sys.executable).parent  # not resolved: a venv's python is a symlink out of the venv


def airflow_env(settings: Settings, dags_folder: Path) -> dict[str, str]:
    """Airflow's environment: our home, DB and DAGs, the API server / UI on ``host:airflow_port``, and tasks
    that call the execution API there; the LocalExecutor and simple auth manager that standalone would force."""
    from edge import orchestration

    base = f"http://{settings.host}:{settings.airflow_port}"
    return {
        **orchestration.airflow_env(settings, dags_folder),
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": settings.airflow_executor,
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": base,
    }


def airflow_command(settings: Settings, airflow: Path) -> list[str]:
    """What ``airflow standalone`` runs, minus its log servers: standalone cannot pass ``--skip-serve-logs``, and
    Airflow's serve-logs always binds every interface (ports 8793/8794). With one machine the UI reads task logs
    from disk, so they are not needed. The first component to exit takes the others down with it."""
    a = str(airflow)
    script = "\n".join(
        [
            "set -e",
            f"{a} db migrate",
            "set +e",
            f"{a} scheduler --skip-serve-logs &",
            f"{a} dag-processor &",
            f"{a} triggerer --skip-serve-logs &",
            f"{a} api-server --host {settings.host} --port {settings.airflow_port} &",
            "wait -n",
            'echo "an Airflow component exited ($?); stopping the others" >&2',
            "kill 0",
        ]
    )
    return ["bash", "-c", script]


def omnicart_env(settings: Settings) -> dict[str, str]:
    """``OMNICART_*`` variables for the settings that differ from the defaults (secrets excepted), so that DAG
    tasks and other children see the same home and ports as the process that started them."""
    values = settings.model_dump(mode="json", exclude_defaults=True, exclude={"pseudonym_key", "api_key"})
    values["home"] = str(settings.home_dir)
    env = {}
    for key, value in values.items():
        if value is None:
            continue
        env[f"OMNICART_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


# --- probes -------------------------------------------------------------------------------------------------------


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on ``host:port``; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.25)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback must never go via a proxy


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except (OSError, ValueError):
        return 0, b""


def _http_ok(url: str) -> Callable[[], bool]:
    return lambda: _http_get(url)[0] == 200


def _airflow_healthy(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        code, body = _http_get(url)
        if code != 200:
            return False
        try:
            parts = json.loads(body)
        except ValueError:
            return False
        return all(part.get("status") == "healthy" for part in parts.values() if isinstance(part, dict))

    return ready


def _smtp_banner(host: str, port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection((host, port), timeout=2) as conn:
                return conn.recv(64).startswith(b"220")
        except OSError:
            return False

    return ready


# --- the services -------------------------------------------------------------------------------------------------


def _specs(settings: Settings, dags_folder: Path | None = None) -> dict[str, _Spec]:
    b = bin_dir()
    h = settings.host
    artifacts = settings.mlflow_artifact_uri
    # embedded: clients write artifacts straight into home; production: through the server (mlflow-artifacts:/),
    # so no client needs the artifact store's credentials or mount
    artifact_root = ["--default-artifact-root", artifacts] if settings.profile != "production" else []
    airflow_url = f"http://{h}:{settings.airflow_port}"
    mlflow_url = f"http://{h}:{settings.mlflow_port}"
    evidently_url = f"http://{h}:{settings.evidently_port}"
    dashboard_url = f"http://{h}:{settings.ray_dashboard_port}"
    return {
        "mail": _Spec(
            "mail",
            f"smtp://{settings.smtp_host}:{settings.smtp_port}",
            settings.smtp_host,
            settings.smtp_port,
            [
                sys.executable,
                "-m",
                "edge.mailsink",
                str(settings.mail_dir),
                "--host",
                settings.smtp_host,
                "--port",
                str(settings.smtp_port),
            ],
            ready=_smtp_banner(settings.smtp_host, settings.smtp_port),
        ),
        "mlflow": _Spec(
            "mlflow",
            mlflow_url,
            h,
            settings.mlflow_port,
            [
                str(b / "mlflow"),
                "server",
                "--host",
                h,
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                settings.mlflow_backend_store_uri,
                *artifact_root,
                "--artifacts-destination",
                artifacts,
            ],
            ready=_http_ok(f"{mlflow_url}/health"),
        ),
        "evidently": _Spec(
            "evidently",
            evidently_url,
            h,
            settings.evidently_port,
            [
                str(b / "evidently"),
                "ui",
                "--host",
                h,
                "--port",
                str(settings.evidently_port),
                "--workspace",
                str(settings.home_dir / "evidently"),
            ],
            ready=_http_ok(f"{evidently_url}/api/version"),
        ),
        "ray": _Spec(
            "ray",
            dashboard_url,
            h,
            settings.ray_dashboard_port,
            # --block keeps `ray start` in the foreground, so it has a pid and SIGTERM tears the node down.
            [
                str(b / "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address",
                h,
                "--port",
                str(RAY_GCS_PORT),
                "--dashboard-host",
                h,
                "--dashboard-port",
                str(settings.ray_dashboard_port),
                "--include-dashboard",
                "true",
                "--disable-usage-stats",
            ],
            env={
                **RAY_CLIENT_ENV,
                **(haproxy_env(settings) if settings.serve_haproxy else {}),  # Serve's ingress: HAProxy
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # nothing to drain to locally
            },
            ready=_http_ok(dashboard_url),
        ),
        "airflow": _Spec(
            "airflow",
            airflow_url,
            h,
            settings.airflow_port,
            airflow_command(settings, b / "airflow"),
            # DAG tasks run by the scheduler join the Ray head, so what they deploy outlives the task
            env={
                **(airflow_env(settings, dags_folder) if dags_folder is not None else {}),
                **RAY_CLIENT_ENV,
                "OMNICART_RAY_ADDRESS": settings.ray_address or ray_address(settings),
            },
            ready=_airflow_healthy(f"{airflow_url}/api/v2/monitor/health"),
        ),
    }


def _serve_status(settings: Settings, ray: ServiceStatus) -> ServiceStatus:
    running = ray.running and port_open(settings.host, settings.serve_port)
    return ServiceStatus("serve", settings.serve_url, None, running, ray.log)


# --- process bookkeeping ------------------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against a recycled pid), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _session_members(sid: int) -> list[int]:
    """Every live process in session ``sid``: a service and everything it spawned, whatever their process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _pid_file(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


def _log_file(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.log"


def _live_pid(settings: Settings, name: str) -> int | None:
    """The pid ``up`` recorded for ``name`` if that very process still runs."""
    path = _pid_file(settings, name)
    try:
        pid_text, started = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if _start_time(pid) == started else None


def _child_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **omnicart_env(settings), **extra}
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")])
    # DAG tasks, Ray workers and Serve replicas import this checkout's code, whichever one the venv has installed
    from edge import orchestration

    project = str(orchestration.project_dir())
    env["PYTHONPATH"] = os.pathsep.join([project, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(settings: Settings, spec: _Spec) -> subprocess.Popen[bytes]:
    log = _log_file(settings, spec.name)
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {spec.name}: {' '.join(spec.argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            spec.argv,
            cwd=settings.home_dir,
            env=_child_env(settings, spec.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _pid_file(settings, spec.name).write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
    return proc


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_session(pid: int, leader_only: bool = False, grace: float = 20.0) -> None:
    """SIGTERM the service (its process group, or just its leader when it tears down its own children), wait,
    then SIGKILL whatever of its session is left."""
    with contextlib.suppress(ProcessLookupError):
        (os.kill if leader_only else os.killpg)(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _session_members(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for member in _session_members(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # reap it if it is our child, so it does not linger as a zombie
        os.waitpid(pid, os.WNOHANG)


def _await(settings: Settings, spec: _Spec, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait until ``spec`` answers; on death or timeout stop it and raise with the end of its log."""
    log = _log_file(settings, spec.name)
    deadline = time.monotonic() + timeout
    while True:
        if port_open(spec.host, spec.port) and (spec.ready is None or spec.ready()):
            return
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() > deadline:
            why = f"exited with code {proc.returncode}" if exited else f"did not answer within {timeout:.0f}s"
            if proc is not None:
                stop_session(proc.pid)
                _pid_file(settings, spec.name).unlink(missing_ok=True)
            raise RuntimeError(f"{spec.name} on {spec.url} {why}; see {log}:\n{_tail(log)}")
        time.sleep(0.5)


def _start_serve(settings: Settings) -> None:
    """Ray Serve's HTTP proxy on ``host:serve_port``, on the head node only; the proxy lives on as a Ray actor."""
    log = _log_file(settings, "ray")
    argv = [
        str(bin_dir() / "serve"),
        "start",
        "--address",
        f"{settings.host}:{RAY_GCS_PORT}",
        "--http-host",
        settings.host,
        "--http-port",
        str(settings.serve_port),
        "--proxy-location",
        "HeadOnly",
    ]
    with log.open("ab") as out:
        out.write(f"\n=== starting serve: {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(
            argv,
            cwd=settings.home_dir,
            env=_child_env(settings, RAY_CLIENT_ENV),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    if done.returncode != 0:
        raise RuntimeError(f"serve start failed ({done.returncode}); see {log}:\n{_tail(log)}")
    try:
        wait_for_port(settings.host, settings.serve_port, timeout=60)
    except TimeoutError as error:
        raise RuntimeError(f"Ray Serve does not answer on {settings.serve_url}; see {log}:\n{_tail(log)}") from error


def _ensure_ray_token() -> None:
    """Ray's token (``~/.ray/auth_token``, shared by every Ray of this user) exists; generated once if not."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path.home() / ".ray" / "auth_token").exists():
        # stdout would hold the token: keep it out of the log
        subprocess.run([str(bin_dir() / "ray"), "get-auth-token", "--generate"], check=True, stdout=subprocess.DEVNULL)


def _selected(only: Sequence[str] | None) -> list[str]:
    if only is None:
        return list(SERVICES)
    wanted = {"ray" if name == "serve" else name for name in only}
    unknown = wanted - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown service(s) {sorted(unknown)}; choose from {', '.join(SERVICES)}")
    return [name for name in SERVICES if name in wanted]


# --- the API ------------------------------------------------------------------------------------------------------


def up(settings: Settings, dags_folder: Path, only: Sequence[str] | None = None) -> list[ServiceStatus]:
    """Start the services (all, or ``only`` these) that are not running yet, and wait until each answers.

    Idempotent: a service already running from this home is left alone. Raises RuntimeError naming the log of a
    service that does not come up, or the port that something else already holds."""
    names = _selected(only)
    specs = _specs(settings, dags_folder)
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    settings.mail_dir.mkdir(parents=True, exist_ok=True)
    settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)

    to_start = [name for name in names if _live_pid(settings, name) is None]
    for name in to_start:  # refuse before starting anything, rather than leave half a platform running
        spec = specs[name]
        ports = [spec.port, RAY_GCS_PORT, settings.serve_port] if name == "ray" else [spec.port]
        for port in ports:
            if port_open(spec.host, port):
                raise RuntimeError(
                    f"{name}: {spec.host}:{port} is already taken by a process omnicart did not start; "
                    "stop it, or choose another port in the settings (OMNICART_*_PORT)"
                )
    if settings.profile == "production" and {"mlflow", "airflow"} & set(to_start):
        stores.ensure_postgres_schemas(settings)  # fails here, naming the server, if PostgreSQL is unreachable
    if "ray" in to_start:
        _ensure_ray_token()
    # Start everything first, then wait, so that the slow starters overlap.
    started = {name: _spawn(settings, specs[name]) if name in to_start else None for name in names}

    for name in names:
        _await(settings, specs[name], started[name], _TIMEOUTS[name])
        if name == "ray" and not port_open(settings.host, settings.serve_port):
            _start_serve(settings)
    return [s for s in status(settings) if s.name in names or (s.name == "serve" and "ray" in names)]


def down(settings: Settings) -> list[str]:
    """Stop every service ``up`` started from this home (and everything it spawned); returns their names."""
    stopped = []
    for name in reversed(SERVICES):
        pid = _live_pid(settings, name)
        if pid is not None:
            # `ray start --block` stops its node on SIGTERM; signalling its group too would kill GCS under it.
            # Not `ray stop`: that kills every Ray on the machine, including other people's in-process clusters.
            stop_session(pid, leader_only=name == "ray")
            stopped.append(name)
        _pid_file(settings, name).unlink(missing_ok=True)
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    """Each service (and Ray Serve) with its URL, pid and whether it runs and answers now."""
    statuses = []
    for name, spec in _specs(settings).items():
        pid = _live_pid(settings, name)
        running = pid is not None and port_open(spec.host, spec.port)
        statuses.append(ServiceStatus(name, spec.url, pid, running, _log_file(settings, name)))
        if name == "ray":
            statuses.append(_serve_status(settings, statuses[-1]))
    return statuses


def airflow_admin_password(settings: Settings) -> str | None:
    """The password Airflow's simple auth manager generated for user ``admin`` on first start, if any.

    It lives in ``<airflow_home>/simple_auth_manager_passwords.json.generated`` (JSON: user → password)."""
    path = settings.airflow_home / "simple_auth_manager_passwords.json.generated"
    try:
        passwords = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return passwords.get("admin") if isinstance(passwords, dict) else None


def ray_address(settings: Settings) -> str:
    """The GCS address of the head that `up` starts, for ``OMNICART_RAY_ADDRESS``."""
    return f"{settings.host}:{RAY_GCS_PORT}"
