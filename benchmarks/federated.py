"""`omnicart bench federated`: PROTOCOLS.md "federated — stores as clients", in one run.

Dominick's beer with the pricing bench's out-of-time split; every store is a client holding its own weekly sales.
The same linear demand model (``omnicart.federated.linear``, on the features each store computes alone) is trained
four ways and scored on every store's held-out weeks:

- centralised: all stores' rows pooled (what federation tries to match without pooling);
- local-only: each store alone, on its own rows (what a store gets without federation);
- federated: Flower FedAvg over all stores with SecAgg+ (the server only ever unmasks the sum);
- federated + DP: the same with each store's update clipped and Gaussian noise on the sum, (ε, δ) by the accountant.

Gates: federated RMSE ≤ 1.05 × centralised; federated ≤ 0.90 × the mean local-only RMSE (both as the mean over
stores of each store's RMSE); federated + DP ≤ 1.15 × centralised with ε ≤ 8 and δ ≤ 1e-5. Rows report rounds, the
bytes each client sent and the wall time of each run; the pricing family's log-log baseline is shown for scale.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.runner import BenchOptions, BenchResult, NotAvailable, datasets_dir, gate
from omnicart.federated import linear, runner
from omnicart.federated.silos import COLUMNS, Silo, score, split_by_owner
from omnicart.schemas import C
from omnicart.settings import Settings

PROTOCOL = "stores-as-clients"
CENTRAL_TARGET = 1.05
LOCAL_TARGET = 0.90
DP_TARGET = 1.15
MAX_EPSILON = 8.0
MAX_DELTA = 1e-5
CONFIG = runner.FederatedConfig(rounds=3)
DP_CONFIG = runner.FederatedConfig(rounds=3, dp=runner.DPConfig(epsilon=4.0, delta=1e-5, clipping_norm=1.0))


def _scores(silos: list[Silo], weights) -> dict[str, float]:
    """RMSE pooled over every test row, and the mean over stores (with test rows) of each store's own RMSE."""
    scores = score(silos, weights)
    return {"rmse": scores["rmse"], "rmse_store_mean": scores["rmse_owner_mean"]}


def _load(options: BenchOptions) -> tuple[Any, list[Silo]]:
    from omnicart.datasets import dominicks
    from training.pricing import from_frame

    if options.input is not None:
        raise NotAvailable("federated runs on --dataset dominicks_beer (stores as clients)")
    if options.dataset != dominicks.NAME:
        raise NotAvailable(f"federated has a protocol for --dataset {dominicks.NAME} only (got {options.dataset!r})")
    root = datasets_dir() / dominicks.NAME
    if not dominicks.available(root):
        raise NotAvailable(f"{dominicks.NAME} is not in {root}")
    ds = from_frame(dominicks.protocol_filter(dominicks.load(root)), name=dominicks.NAME)
    return ds, split_by_owner(ds.frame, ds.split)


def _federated_row(name: str, fed: runner.FederatedRun, scores: dict[str, float]) -> dict[str, Any]:
    sent = list(fed.bytes_per_client.values())
    row = {
        "model": name,
        **scores,
        "rounds": fed.rounds,
        "clients": len(sent),
        "bytes_per_client": float(np.mean(sent)),
        "bytes_per_client_max": float(np.max(sent)),
        "seconds": round(fed.seconds, 1),
    }
    if fed.guarantee is not None:
        row |= {
            "epsilon": fed.guarantee.epsilon,
            "delta": fed.guarantee.delta,
            "noise_multiplier": fed.guarantee.noise_multiplier,
            "clipping_norm": fed.extra["config"]["dp"]["clipping_norm"],
        }
    return row


def run(settings: Settings, options: BenchOptions) -> BenchResult:
    if options.protocol not in (None, PROTOCOL):
        raise NotAvailable(f"federated protocol: {PROTOCOL} (got {options.protocol!r})")
    try:
        runner.flower_python(settings)
    except runner.FlowerUnavailable as exc:
        raise NotAvailable(str(exc)) from exc
    from omnicart.pricing.baselines import LogLog, rmse

    ds, silos = _load(options)
    dims = len(COLUMNS)
    rows: list[dict[str, Any]] = []

    started = time.perf_counter()
    central_w = linear.fit(np.vstack([s.A_train for s in silos]), np.concatenate([s.y_train for s in silos]))
    central = _scores(silos, central_w)
    rows.append({"model": "centralised (rows pooled)", **central, "seconds": round(time.perf_counter() - started, 1)})

    started = time.perf_counter()
    local_w = {s.owner: linear.fit(s.A_train, s.y_train) for s in silos}
    local = _scores(silos, lambda s: local_w[s.owner])
    stores_tested = sum(bool(len(s.y_test)) for s in silos)
    rows.append(
        {
            "model": "local-only (each store alone)",
            **local,
            "clients": len(silos),
            "stores_tested": stores_tested,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )

    seed = options.seed or settings.seed
    with tempfile.TemporaryDirectory(prefix="omnicart-federated-") as tmp:
        shards = [s.save(Path(tmp) / f"store-{s.owner}.npz") for s in silos]
        sizes = [len(s.y_train) for s in silos]
        fed = runner.run(settings, shards, sizes, dims, Path(tmp) / "secagg", CONFIG)
        fed_scores = _scores(silos, fed.weights)
        rows.append(_federated_row("federated (FedAvg, SecAgg+)", fed, fed_scores))
        dp_config = runner.FederatedConfig(rounds=DP_CONFIG.rounds, dp=DP_CONFIG.dp, seed=seed)
        dp = runner.run(settings, shards, sizes, dims, Path(tmp) / "secagg-dp", dp_config)
        dp_scores = _scores(silos, dp.weights)
        rows.append(_federated_row("federated + DP (SecAgg+, clipped, noised)", dp, dp_scores))

    loglog = LogLog.fit(ds.train)
    test = ds.test
    y = np.log(test[C.units].to_numpy(np.float64))
    rows.append({"model": "log-log (series FE, pooled; pricing baseline)", "rmse": rmse(y, loglog.predict(test))})

    guarantee = dp.guarantee
    gates = [
        gate("rmse (federated vs centralised)", fed_scores["rmse"], central["rmse"], CENTRAL_TARGET, False),
        gate(
            "rmse_store_mean (federated vs local-only)",
            fed_scores["rmse_store_mean"],
            local["rmse_store_mean"],
            LOCAL_TARGET,
            False,
        ),
        gate("rmse (federated + DP vs centralised)", dp_scores["rmse"], central["rmse"], DP_TARGET, False),
        gate("dp_epsilon (vs the ceiling 8)", guarantee.epsilon, MAX_EPSILON, 1.0, False),
        gate("dp_delta (vs the ceiling 1e-5)", guarantee.delta, MAX_DELTA, 1.0, False),
    ]
    return ds.name, PROTOCOL, rows, gates
