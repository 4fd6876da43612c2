"""Run a federated training with Flower (in its own environment) over owners' shards, and read back what it made.

The Flower process gets one RUN.json: a server part (rounds, SecAgg+ and DP settings, initial weights) without any
shard path, and a client part that maps each client to the one shard it owns. It writes the final weights, what each
client sent (bytes) and, when ``record`` is set, what the server received and each client's plain update.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import omnicart
from omnicart.federated import accountant
from omnicart.federated.linear import RIDGE
from omnicart.settings import Settings

SECAGG_CLIPPING_RANGE = 8.0  # SecAgg+ quantises each weight within ±this; the model's scaled weights sit well inside


class FlowerUnavailable(RuntimeError):
    """The Flower environment is missing (``make flower`` builds it)."""


@dataclass(frozen=True)
class DPConfig:
    """Client-level DP: each client's update clipped to ``clipping_norm``; noise sized for (epsilon, delta)."""

    epsilon: float = 4.0
    delta: float = 1e-5
    clipping_norm: float = 1.0


@dataclass(frozen=True)
class FederatedConfig:
    rounds: int = 3
    prox: float = 1e-3  # FedProx term of each client's local solve
    ridge: float = RIDGE
    num_shares: int = 7  # SecAgg+ neighbours (odd) each client's key is shared with (capped at the client count)
    dp: DPConfig | None = None
    seed: int | None = None  # seeds the server's DP noise: for a reproducible benchmark only, never for a release
    timeout_s: float = 1800.0


@dataclass
class FederatedRun:
    weights: np.ndarray
    rounds: int
    seconds: float  # wall time of the whole Flower process, start-up included
    bytes_per_client: dict[int, int]  # every message a client sent, as the wire encodes it
    guarantee: accountant.Guarantee | None
    out_dir: Path
    noise_multiplier: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def flower_python(settings: Settings) -> Path:
    path = settings.flower_python or Path(omnicart.__file__).resolve().parents[1] / ".venv-flwr" / "bin" / "python"
    if not Path(path).is_file():
        raise FlowerUnavailable(f"no Flower environment at {path}: run `make flower` (or set OMNICART_FLOWER_PYTHON)")
    return Path(path)


def secagg_settings(clients: int, num_shares: int) -> dict[str, Any]:
    """SecAgg+ shares each client's secrets with ``num_shares`` neighbours; half of them plus one reconstruct."""
    if clients < 3:
        raise ValueError(f"SecAgg+ needs at least 3 clients, got {clients}")
    shares = max(3, min(num_shares, clients))
    if shares < clients and shares % 2 == 0:  # Flower's server rounds an even count up without telling the clients
        shares += 1
    return {"num_shares": shares, "reconstruction_threshold": shares // 2 + 1, "clipping_range": SECAGG_CLIPPING_RANGE}


def run(
    settings: Settings,
    shards: list[Path],
    rows: list[int],
    dims: int,
    out_dir: Path,
    config: FederatedConfig = FederatedConfig(),
    record: bool = False,
) -> FederatedRun:
    """Train over ``shards`` (one per client; ``rows`` its training rows) and return the federated model."""
    python = flower_python(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    secagg = secagg_settings(n, config.num_shares)
    dp, guarantee, sigma = None, None, None
    if config.dp is not None:
        sigma = accountant.noise_multiplier_for(config.dp.epsilon, config.dp.delta, config.rounds)
        guarantee = accountant.epsilon(sigma, config.rounds, config.dp.delta)
        dp = {"noise_multiplier": sigma, "clipping_norm": config.dp.clipping_norm}
        secagg["max_weight"] = 1.0  # every client weighs 1: the accountant's sensitivity assumes equal weights
    else:
        secagg["max_weight"] = float(max(rows))  # FedAvg by rows; SecAgg+ needs the largest weight up front
    spec = {
        "server": {
            "num_clients": n,
            "rounds": config.rounds,
            "initial": [0.0] * dims,
            "secagg": secagg,
            "dp": dp,
            "record": record,
            "seed": config.seed,
        },
        "clients": {
            "shards": [str(Path(p).resolve()) for p in shards],
            "prox": config.prox,
            "ridge": config.ridge,
            "equal_weights": dp is not None,
            "record": record,
        },
        "out_dir": str(out_dir.resolve()),
    }
    run_file = out_dir / "run.json"
    run_file.write_text(json.dumps(spec, indent=1))
    root = Path(omnicart.__file__).resolve().parents[1]
    log = out_dir / "flower.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            [str(python), "-m", "omnicart.federated.flower_app", str(run_file)],
            cwd=root,
            env={"PYTHONPATH": str(root), "PATH": str(python.parent), "HOME": str(Path.home())},
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=config.timeout_s,
            check=False,
        )
    seconds = time.perf_counter() - started
    result_file = out_dir / "result.json"
    if done.returncode != 0 or not result_file.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the Flower run failed (exit {done.returncode}); its log ends:\n{tail}")
    result = json.loads(result_file.read_text())
    sent = {}
    for path in sorted((out_dir / "bytes").glob("*.jsonl")):
        sent[int(path.stem)] = sum(json.loads(line)["bytes"] for line in path.read_text().splitlines() if line)
    weights = np.asarray(result["weights"], dtype=np.float64)
    if weights.shape != (dims,) or not np.isfinite(weights).all():
        raise RuntimeError(f"the Flower run returned weights of shape {weights.shape}, expected ({dims},) and finite")
    return FederatedRun(
        weights=weights,
        rounds=int(result["rounds"]),
        seconds=seconds,
        bytes_per_client=sent,
        guarantee=guarantee,
        out_dir=out_dir,
        noise_multiplier=sigma,
        extra={"config": asdict(config), "secagg": secagg, "server_seconds": result["seconds"]},
    )


def mean_bytes(run: FederatedRun) -> float:
    values = list(run.bytes_per_client.values())
    return float(np.mean(values)) if values else math.nan
