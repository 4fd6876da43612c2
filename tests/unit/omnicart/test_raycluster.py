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
