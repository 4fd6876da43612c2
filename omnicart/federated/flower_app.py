"""The Flower apps of federated demand training: SecAgg+ always, client-side clipping and server noise with DP.

Runs inside its own virtual environment (``make flower``: Flower pins fastapi, starlette, uvicorn, rich, typer and
protobuf below the platform's), started by ``omnicart.federated.runner`` as
``python -m omnicart.federated.flower_app RUN.json``. It needs only numpy and flwr, and reads only what RUN.json
names: the server part (rounds, SecAgg+ and DP settings, the initial weights) and, per client, the one shard that
client owns. The server never opens a shard; it receives the SecAgg+ protocol's keys, encrypted shares and masked
vectors, and only the unmasked *sum* comes out (``SecAggPlusWorkflow``). With DP each client's update is clipped
before it is masked (``fixedclipping_mod``) and the server adds Gaussian noise to the sum
(``DifferentialPrivacyClientSideFixedClipping``); ``omnicart.federated.accountant`` gives the (ε, δ) of the run.

Written beside the result (``out_dir``): ``result.json`` (final weights, rounds, seconds), ``bytes/<client>.jsonl``
(what each client sent, per message, as the wire encodes it) and, when asked (``record``), ``received.npz`` (every
numeric array the server received, masked vectors included) and ``updates/<client>.npz`` (each client's plain
weights before clipping and masking, kept on the client's side) so that a test can compare the two.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import ndarrays_to_parameters
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import recorddict_to_proto
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from omnicart.federated.linear import local_update


# --- client -------------------------------------------------------------------------------------------------------
class DemandClient(NumPyClient):
    """One owner: reads its own shard, solves its local problem from the global weights, returns new weights."""

    def __init__(self, cid: int, shard: str, settings: dict[str, Any]) -> None:
        self.cid = cid
        self.A, self.y = _shard(shard)
        self.settings = settings

    def fit(self, parameters, config):
        w = local_update(self.A, self.y, parameters[0], prox=self.settings["prox"], ridge=self.settings["ridge"])
        if self.settings.get("record"):
            _append_update(Path(self.settings["out_dir"]) / "updates" / f"{self.cid}.npz", w)
        # With DP every client weighs the same (the accountant's sensitivity assumes it); otherwise by its rows.
        weight = 1 if self.settings["equal_weights"] else len(self.y)
        return [w], weight, {}

    def evaluate(self, parameters, config):  # evaluation is the benchmark's, on each owner's held-out weeks
        return 0.0, 0, {}


@functools.cache
def _shard(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A client's training rows, read once per process (Flower builds a client object per message)."""
    with np.load(path) as z:
        return z["A_train"], z["y_train"]


def _append_update(path: Path, w: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = list(np.load(path)["updates"]) if path.is_file() else []
    np.savez(path, updates=np.asarray([*kept, w]))


def byte_counter(out_dir: Path):
    """A client mod (outermost): the wire size of every message the client sends back, per client."""

    def mod(msg: Message, context: Context, call_next):
        out = call_next(msg, context)
        if out.has_content():
            size = recorddict_to_proto(out.content).ByteSize()
            path = out_dir / "bytes" / f"{context.node_config['partition-id']}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps({"type": msg.metadata.message_type, "bytes": size}) + "\n")
        return out

    return mod


def client_app(run: dict[str, Any]) -> ClientApp:
    clients = run["clients"]
    out_dir = Path(run["out_dir"])

    def client_fn(context: Context):
        cid = int(context.node_config["partition-id"])
        return DemandClient(cid, clients["shards"][cid], {**clients, "out_dir": run["out_dir"]}).to_client()

    # Order matters: clipping acts on the plain update, then SecAgg+ masks the clipped one.
    mods = [byte_counter(out_dir), secaggplus_mod]
    if run["server"].get("dp"):
        mods.append(fixedclipping_mod)
    return ClientApp(client_fn=client_fn, mods=mods)


# --- transport ----------------------------------------------------------------------------------------------------
class LocalGrid(Grid):
    """Flower's ``Grid`` over clients living in this process: each message goes to its node's ``ClientApp`` with
    that node's own ``Context``, and the reply comes back as from a SuperNode. Used instead of the Ray-based
    simulation engine: no cluster to start (or to collide with another job's), and a round costs the clients' work
    and the SecAgg+ cryptography only. The apps are the same ones a SuperLink and SuperNodes would run."""

    def __init__(self, app: ClientApp, num_nodes: int, run_id: int = 1) -> None:
        self.app = app
        self.run_id = run_id
        self.contexts = {
            1000 + i: Context(run_id, 1000 + i, {"partition-id": i, "num-partitions": num_nodes}, RecordDict(), {})
            for i in range(num_nodes)
        }
        self.replies: dict[str, Message] = {}
        self._run = Run.create_empty(run_id=run_id)
        self._run.primary_task_id = 1
        # the identity a SuperLink gives the ServerApp's task (as Flower's own in-process simulation sets it)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = self.run_id
            # each node gets its own copy, as it would off the wire (the SecAgg+ mod edits what it receives)
            delivered = copy.deepcopy(msg)
            reply = self.app(delivered, self.contexts[msg.metadata.dst_node_id])
            self.replies[msg.metadata.message_id] = copy.deepcopy(reply)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return list(self.pull_messages(self.push_messages(messages)))


# --- server -------------------------------------------------------------------------------------------------------
class RecordingGrid(Grid):
    """The server's grid, keeping every numeric array that reaches the server (for the tests' inspection)."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.received: list[np.ndarray] = []
        self.kinds: list[str] = []

    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args, **kwargs):
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):
        return self.inner.get_nodes()

    def push_messages(self, messages):
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._keep(list(self.inner.pull_messages(message_ids)))

    def send_and_receive(self, messages, *, timeout=None):
        return self._keep(list(self.inner.send_and_receive(messages, timeout=timeout)))

    def _keep(self, messages: list[Message]) -> list[Message]:
        for msg in messages:
            if not msg.has_content():
                continue
            for name, record in msg.content.array_records.items():
                for array in record.to_numpy_ndarrays():
                    self.received.append(np.asarray(array))
                    self.kinds.append(f"array:{name}")
            for name, record in msg.content.config_records.items():
                for key, value in record.items():
                    for item in value if isinstance(value, list) else [value]:
                        if isinstance(item, bytes) and item[:6] == b"\x93NUMPY":  # an ndarray sent as bytes
                            self.received.append(np.load(io.BytesIO(item), allow_pickle=False))
                            self.kinds.append(f"config:{name}.{key}")
        return messages


def server_app(run: dict[str, Any]) -> ServerApp:
    server = run["server"]
    out_dir = Path(run["out_dir"])
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        started = time.perf_counter()
        n = int(server["num_clients"])
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters([np.asarray(server["initial"], dtype=np.float64)]),
        )
        if server.get("dp"):
            strategy = DifferentialPrivacyClientSideFixedClipping(
                strategy,
                noise_multiplier=float(server["dp"]["noise_multiplier"]),
                clipping_norm=float(server["dp"]["clipping_norm"]),
                num_sampled_clients=n,
            )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=int(server["rounds"])), strategy=strategy
        )
        secagg = server["secagg"]
        workflow = DefaultWorkflow(
            fit_workflow=SecAggPlusWorkflow(
                num_shares=secagg["num_shares"],
                reconstruction_threshold=secagg["reconstruction_threshold"],
                max_weight=float(secagg["max_weight"]),
                clipping_range=float(secagg["clipping_range"]),
            ),
            evaluate_workflow=lambda grid, context: None,
        )
        recording = RecordingGrid(grid) if server.get("record") else grid
        workflow(recording, legacy)
        weights = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0]
        result = {"weights": np.asarray(weights, dtype=np.float64).tolist(), "rounds": int(server["rounds"])}
        result["seconds"] = time.perf_counter() - started
        (out_dir / "result.json").write_text(json.dumps(result))
        if isinstance(recording, RecordingGrid):
            np.savez(
                out_dir / "received.npz",
                **{f"a{i}": a for i, a in enumerate(recording.received)},
                kinds=np.asarray(recording.kinds),
            )

    return app


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m omnicart.federated.flower_app RUN.json", file=sys.stderr)
        return 2
    run = json.loads(Path(argv[0]).read_text())
    n = int(run["server"]["num_clients"])
    if n != len(run["clients"]["shards"]):
        print(f"{n} clients announced but {len(run['clients']['shards'])} shards given", file=sys.stderr)
        return 2
    if run["server"].get("seed") is not None:  # Flower draws the DP noise from numpy's global generator
        np.random.seed(int(run["server"]["seed"]))
    clients = client_app(run)
    server_app(run)(grid=LocalGrid(clients, n), context=Context(1, 0, {}, RecordDict(), {}))
    return 0 if (Path(run["out_dir"]) / "result.json").is_file() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
