"""Training on a real two-node Ray cluster: a head (``ray start --head --num-cpus 1``) and a worker node joined to it
(``ray start --address ... --num-cpus 1``), both on the loopback interface with their own temporary directory and
ports. Ray refuses to join a second node while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the setting that keeps the
embedded Ray on 127.0.0.1), and with it on its CLI rewrites ``127.0.0.1`` and ``localhost`` to the machine's LAN
address; so the two nodes run with it on and name another loopback address, ``127.0.0.2``, which it keeps as given.

With ``OMNICART_RAY_ADDRESS`` pointing at the head, the recommend and pricing families train on a small simulated
shop with one Ray Train worker per node (the two-tower model with DDP, the ranker and the demand model as one XGBoost
collective over both shards), and score as they do on the embedded single-node Ray. The cluster is stopped by
signalling its two ``ray start --block`` processes, not ``ray stop``, which would stop every Ray on the machine
(other people's included); the test then checks with psutil that no process of the cluster is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edge.services import _ensure_ray_token, bin_dir, stop_session
from omnicart.raycluster import JOIN_ENV, free_ports, worker_of

pytestmark = pytest.mark.integration

FAMILIES = ("recommend", "pricing")
NODE_IP = "127.0.0.2"  # loopback, and not one of the names Ray's CLI rewrites to the LAN address
SHOP = {
    "OMNICART_SIM_CUSTOMERS": "600",
    "OMNICART_SIM_ITEMS": "80",
    "OMNICART_SIM_DAYS": "28",
    "OMNICART_SIM_EVENTS_PER_CUSTOMER_DAY": "1.5",
    "OMNICART_SEED": "11",
}
# One data-parallel run against one single-worker run of the same data: the two-tower model sees half the
# customers per worker (gradients averaged), XGBoost's sketch is merged across shards, so scores move a little.
NDCG_TOLERANCE = 0.05  # absolute, on NDCG@10 of one day's purchases (some 300 customers)
RMSE_TOLERANCE = 0.05  # relative


def _node_ports(ports: list[str]) -> list[str]:
    """Four of ``ports`` for what a node would otherwise take at fixed defaults, which two nodes on one machine
    cannot share."""
    agent, agent_grpc, metrics, runtime_env = ports
    return [
        "--dashboard-agent-listen-port",
        agent,
        "--dashboard-agent-grpc-port",
        agent_grpc,
        "--metrics-export-port",
        metrics,
        "--runtime-env-agent-port",
        runtime_env,
        "--object-store-memory",
        str(400 * 1024**2),
    ]


def _cluster_processes(temp_dir: str, raylets: set[str]) -> list[psutil.Process]:
    """Every process on this machine that belongs to the cluster under ``temp_dir``: its own processes (named by
    their command line) and the workers its ``raylets`` (pids) started."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if any(temp_dir in part for part in p.cmdline()) or worker_of(p, raylets):
                found.append(p)
    return found


def _raylets(temp_dir: str) -> set[str]:
    return {str(p.pid) for p in _cluster_processes(temp_dir, set()) if p.name().startswith("raylet")}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head and one worker node with one CPU each on 127.0.0.1; yields the head's address."""
    _ensure_ray_token()
    temp_dir = tempfile.mkdtemp(prefix="omr-")  # short: Ray's socket paths live under it
    # every port at once: ports picked one after another may repeat, and Ray refuses a port given twice
    port, dashboard, client, *node_ports = free_ports("127.0.0.1", 11)
    address = f"{NODE_IP}:{port}"
    env = {
        **os.environ,
        **JOIN_ENV,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # a node may join (see the module's docstring)
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    ray = str(bin_dir() / "ray")
    common = ["--block", "--num-cpus", "1", "--node-ip-address", NODE_IP, "--disable-usage-stats"]
    head_argv = [ray, "start", "--head", "--port", str(port), "--temp-dir", temp_dir, *common]
    head_argv += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
    head_argv += ["--dashboard-port", dashboard, "--ray-client-server-port", client]
    logs = Path(temp_dir) / "start-logs"
    logs.mkdir()
    nodes: list[subprocess.Popen] = []
    raylets: set[str] = set()
    try:
        with (logs / "head.log").open("wb") as out:
            nodes.append(
                subprocess.Popen(
                    [*head_argv, *_node_ports(node_ports[:4])],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait_port(int(port), nodes[0], logs / "head.log")
        raylets = _raylets(temp_dir)
        worker_argv = [ray, "start", "--address", address, "--temp-dir", temp_dir, *common]
        with (logs / "worker.log").open("wb") as out:
            nodes.append(
                subprocess.Popen(
                    [*worker_argv, *_node_ports(node_ports[4:])],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait_joined(nodes[1], logs / "worker.log")
        yield address
    finally:
        raylets |= _raylets(temp_dir)  # the worker node's too
        for node in reversed(nodes):  # `ray start --block` tears its node down on SIGTERM
            stop_session(node.pid, leader_only=True, grace=30.0)
        deadline = time.monotonic() + 30
        while _cluster_processes(temp_dir, raylets) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _cluster_processes(temp_dir, raylets)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        assert not left, f"Ray processes left behind by the two-node cluster: {[p.pid for p in left]}"


def _wait_joined(proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Until the worker node's ``ray start`` says its node runs (it joined the head), or fail with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker node's ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the worker node did not join the head in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((NODE_IP, port), timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not open port {port}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated shop in a lake: purchases, item-day prices, tickets (as `omnicart bench scale` writes)."""
    home = tmp_path_factory.mktemp("shop")
    out = _job("write", home, None)
    assert out["purchases"] > 3000 and out["prices"] > 1000
    return home


def _job(what: str, home: Path, address: str | None, timeout: float = 900) -> dict:
    """Run ``main(what)`` of this module in a fresh interpreter with the shop's settings; its JSON answer."""
    env = {
        **os.environ,
        **SHOP,
        "OMNICART_HOME": str(home),
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("OMNICART_RAY_ADDRESS", None)
    env.pop("OMNICART_CONFIG", None)
    if address:
        env.update({**JOIN_ENV, "OMNICART_RAY_ADDRESS": address})
    out = home / f"{what}-{'cluster' if address else 'local'}.json"
    code = f"from tests.integration.test_multinode import main; main({what!r}, {str(out)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return json.loads(out.read_text())


def main(what: str, out: str) -> None:
    """In the child: write the shop, or train and evaluate each family on the cluster the settings name and report
    the nodes of every Ray Train worker it started."""
    from omnicart.settings import Settings

    settings = Settings()
    if what == "write":
        from benchmarks.scale import write_shop

        Path(out).write_text(json.dumps(write_shop(settings)))
        return
    import ray
    from ray.util.state import list_actors

    from omnicart import raycluster
    from training.family import get

    raycluster.ensure_ray(settings)
    deadline = time.monotonic() + 120
    while settings.ray_address and len([n for n in ray.nodes() if n["Alive"]]) < 2:
        assert time.monotonic() < deadline, "the worker node never joined the head"
        time.sleep(1)

    def workers() -> dict[str, str]:
        if not settings.ray_address:
            return {}
        found = [("class_name", "=", "RayTrainWorker")]
        # the cluster's own address: other Ray instances on this machine must not answer
        actors = list_actors(address=settings.ray_address, filters=found, limit=10_000, raise_on_missing_output=False)
        return {a.actor_id: a.node_id for a in actors}

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    result: dict = {"nodes": nodes, "workers": raycluster.train_workers(settings)}
    for name in FAMILIES:
        family = get(name)
        before = workers()
        dataset = family.build_dataset(settings, settings.sim_end)
        model = family.train(settings, dataset)
        evaluation = family.evaluate(model, dataset)
        after = workers()
        result[name] = {
            "metric": evaluation["model"][family.gate_metric],
            "worker_nodes": [node for actor, node in after.items() if actor not in before],
        }
    raycluster.shutdown()
    Path(out).write_text(json.dumps(result))


def test_training_spreads_over_two_nodes_and_matches_one_node(cluster: str, shop: Path) -> None:
    spread = _job("train", shop, cluster)
    assert len(spread["nodes"]) == 2 and spread["workers"] == 2
    for name in FAMILIES:
        nodes = spread[name]["worker_nodes"]
        jobs = {"recommend": 2, "pricing": 1}[name]  # recommend: the two-tower job and the ranker job
        assert len(nodes) == 2 * jobs, f"{name}: expected two Ray Train workers per job, got {nodes}"
        assert set(nodes) == set(spread["nodes"]), f"{name}: workers ran on {set(nodes)}, not on both nodes"

    local = _job("train", shop, None)
    assert local["workers"] == 1
    ndcg_spread, ndcg_local = spread["recommend"]["metric"], local["recommend"]["metric"]
    assert ndcg_local > 0.05, "the single-node recommender learned nothing: the comparison would mean nothing"
    assert abs(ndcg_spread - ndcg_local) <= NDCG_TOLERANCE, (ndcg_spread, ndcg_local)
    rmse_spread, rmse_local = spread["pricing"]["metric"], local["pricing"]["metric"]
    assert abs(rmse_spread - rmse_local) <= RMSE_TOLERANCE * rmse_local, (rmse_spread, rmse_local)
