"""The local services start on loopback, report their state, and stop with everything they spawned."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from edge import services
from omnicart.raycluster import free_ports
from omnicart.settings import Settings


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return response.status


def _listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK = "0100007F"  # 127.0.0.1 in /proc/net/tcp byte order


def test_airflow_env_binds_loopback_and_points_at_our_home_and_dags(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, airflow_port=18080)
    dags = tmp_path / "dags"

    env = services.airflow_env(settings, dags)

    assert env["AIRFLOW_HOME"] == str(settings.airflow_home)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(dags)
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert not any("0.0.0.0" in value for value in env.values())


def test_airflow_command_skips_the_log_servers_that_bind_every_interface(tmp_path: Path) -> None:
    script = services.airflow_command(Settings(home=tmp_path), Path("/venv/bin/airflow"))[-1]

    assert "scheduler --skip-serve-logs" in script
    assert "triggerer --skip-serve-logs" in script
    assert "api-server --host 127.0.0.1 --port 8080" in script
    assert "standalone" not in script


def test_airflow_admin_password_is_read_from_the_generated_file(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert services.airflow_admin_password(settings) is None

    settings.airflow_home.mkdir(parents=True)
    (settings.airflow_home / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "s3cret"}')
    assert services.airflow_admin_password(settings) == "s3cret"


def test_unknown_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown service"):
        services.up(Settings(home=tmp_path), tmp_path, only=["postgres"])


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_mail_and_mlflow_come_up_on_loopback_and_go_down(tmp_path: Path) -> None:
    smtp_port, mlflow_port = map(int, free_ports("127.0.0.1", 2))
    settings = Settings(home=tmp_path, smtp_port=smtp_port, mlflow_port=mlflow_port)
    try:
        statuses = {s.name: s for s in services.up(settings, tmp_path / "dags", only=["mail", "mlflow"])}

        assert set(statuses) == {"mail", "mlflow"}
        assert all(s.running and s.pid for s in statuses.values())
        assert _get(f"http://127.0.0.1:{settings.mlflow_port}/health") == 200
        assert _listen_addresses(settings.mlflow_port) == {LOOPBACK}
        assert _listen_addresses(settings.smtp_port) == {LOOPBACK}
        with socket.create_connection(("127.0.0.1", settings.smtp_port), timeout=5) as conn:
            assert conn.recv(64).startswith(b"220")

        # idempotent: the running ones are left alone
        again = {s.name: s for s in services.up(settings, tmp_path / "dags", only=["mail", "mlflow"])}
        assert {n: s.pid for n, s in again.items()} == {n: s.pid for n, s in statuses.items()}

        current = {s.name: s for s in services.status(settings)}
        assert current["mail"].running and current["mlflow"].running
        assert not current["airflow"].running and current["airflow"].pid is None
    finally:
        stopped = services.down(settings)

    assert sorted(stopped) == ["mail", "mlflow"]
    assert not services.port_open("127.0.0.1", settings.smtp_port)
    assert not services.port_open("127.0.0.1", settings.mlflow_port)
    assert not any(s.running for s in services.status(settings))
    assert services.down(settings) == []


def test_a_taken_port_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        settings = Settings(home=tmp_path, smtp_port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match="already taken"):
            services.up(settings, tmp_path / "dags", only=["mail"])
    assert services.down(settings) == []
