"""Ray workers that outlive their raylet are recognised by their title and their raylet's pid, and nothing else is."""

from __future__ import annotations

import os
import subprocess
import time

import psutil
import pytest

from omnicart import raycluster


@pytest.fixture
def fake_worker():
    """A process titled like a Ray worker whose raylet (pid 999999999 here) is gone."""
    env = {**os.environ, "RAY_RAYLET_PID": "999999999"}
    proc = subprocess.Popen(["bash", "-c", 'exec -a "ray::TrainController" sleep 60'], env=env)
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_worker_is_recognised_by_its_title_and_raylet(fake_worker):
    for _ in range(50):  # until exec has set the title
        if fake_worker.cmdline()[:1] == ["ray::TrainController"]:
            break
        time.sleep(0.1)
    assert raycluster.worker_of(fake_worker, {"999999999"})
    assert not raycluster.worker_of(fake_worker, {"12345"})  # another cluster's raylet


def test_other_processes_are_never_taken_for_workers():
    me = psutil.Process()
    assert not raycluster.worker_of(me, {str(os.getpid()), os.environ.get("RAY_RAYLET_PID", "")})


def test_shutdown_without_ray_kills_nothing():
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray cluster is running in this process")
    assert raycluster.shutdown() == []


def test_haproxy_ingress_gets_its_own_short_folder_and_free_ports_per_home(tmp_path):
    from pathlib import Path

    from omnicart.settings import Settings

    deep = tmp_path / ("a-long-folder-name-" * 6) / "home"
    first, second = (raycluster.haproxy_env(Settings(home=h)) for h in (deep, tmp_path / "other"))
    assert first["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # HAProxy refuses a socket path over 97 bytes; Serve puts each node's sockets in a folder of this one named by the
    # node's 56-character id
    for key in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        path = Path(first[key])
        assert len(str(path.parent / ("0" * 56) / path.name)) <= 97, path
    assert Path(first["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]).is_dir()
    # two platforms on one machine never share a config, a socket or a port
    assert first["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] != second["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    assert first == {**raycluster.haproxy_env(Settings(home=deep)), **{k: first[k] for k in first if "PORT" in k}}
    ports = {first["RAY_SERVE_HAPROXY_STATS_PORT"], first["RAY_SERVE_HAPROXY_METRICS_PORT"]}
    assert len(ports) == 2 and all(int(p) > 1024 for p in ports)
