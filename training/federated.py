"""Federated pricing, the steps of the ``train_federated`` DAG: each data owner's shard from its own file, a Flower
run over the shards (SecAgg+, DP when asked), the model beside the current federated champion on the owners'
held-out weeks, and the same gate as every family (``decide``) before it is registered and promoted in MLflow.

What the run's date ``as_of`` (the DAG run's ``data_interval_end``) makes training data, so that a backfill of a past
week trains on what was known then: a period (a week's or a day's start) is known once a week has passed since it
started; the last ``holdout_weeks`` weeks known are held out (each owner's test rows), and the model trains on the
weeks before them. Rows of later periods are not read at all.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart import registry
from omnicart.federated import runner
from omnicart.federated.owners import list_owner_files, read_owner
from omnicart.federated.predictor import ARTIFACT, FederatedDemandPredictor, save
from omnicart.federated.silos import COLUMNS, Silo, own_price_elasticity, score, split_by_owner
from omnicart.pricing.features import period_kind
from omnicart.schemas import FEDERATED_PRICING, C
from omnicart.settings import Settings
from training.family import MODEL, decide

log = logging.getLogger(__name__)

FAMILY = FEDERATED_PRICING  # registered as omnicart-pricing-federated, beside (not instead of) omnicart-pricing
GATE_METRIC = "rmse"  # of log units over every owner's held-out rows; lower is better
WEEK = pd.Timedelta(weeks=1)
MIN_OWNERS = 3  # SecAgg+ needs three clients


def run_time(as_of: dt.datetime | dt.date | str) -> pd.Timestamp:
    """``as_of`` as a naive UTC timestamp (owners' periods are naive dates)."""
    ts = pd.Timestamp(as_of)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def window(as_of: dt.datetime | dt.date | str, holdout_weeks: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(split, known_until): periods up to ``known_until`` are known at ``as_of``; those before ``split`` train."""
    if holdout_weeks < 1:
        raise ValueError(f"hold out at least one week, got {holdout_weeks}")
    known_until = run_time(as_of) - WEEK
    # the first instant after the last training period: periods that started a week before the held-out weeks
    split = known_until - holdout_weeks * WEEK + pd.Timedelta(1, "ns")
    return split, known_until


def run_dir(settings: Settings, as_of: dt.datetime | dt.date | str) -> Path:
    """The folder of the run for ``as_of`` (a re-run of the same date replaces it)."""
    return settings.federated_dir / "runs" / run_time(as_of).strftime("%Y-%m-%dT%H%M%S")


def owners(settings: Settings) -> list[str]:
    """Every owner's file in ``settings.owners_dir``; fails when there are too few owners to aggregate securely."""
    files = list_owner_files(settings.owners_dir)
    if len(files) < MIN_OWNERS:
        raise ValueError(
            f"{len(files)} owner file(s) in {settings.owners_dir}: secure aggregation needs at least {MIN_OWNERS} "
            "(`omnicart federated owners` writes Dominick's stores as owners)"
        )
    return [str(path) for path in files]


def build_shard(settings: Settings, owner_file: str | Path, as_of: dt.datetime | dt.date | str) -> dict:
    """One owner's shard, from its own file alone: the features of its rows known at ``as_of``, split into training
    and held-out weeks. An owner without training rows yet sits the run out (its ``shard`` is None)."""
    from training.pricing import from_frame

    frame = read_owner(Path(owner_file))
    owner = str(frame[C.store_id].iloc[0])
    if period_kind(frame[C.period]) != "date":
        raise ValueError(f"{owner_file}: federated training needs dated periods (a week's or a day's start)")
    split, known_until = window(as_of, settings.federated_holdout_weeks)
    periods = pd.to_datetime(frame[C.period])
    if getattr(periods.dt, "tz", None) is not None:
        periods = periods.dt.tz_convert("UTC").dt.tz_localize(None)
    known = frame[(periods <= known_until).to_numpy()]
    if not (periods < split).any():
        log.info("owner %s has no rows before %s: it sits this run out", owner, split)
        return {"owner": owner, "shard": None, "train_rows": 0, "test_rows": 0}
    dataset = from_frame(known, split=split, name=owner)
    (silo,) = split_by_owner(dataset.frame, split)
    directory = run_dir(settings, as_of) / "shards"
    directory.mkdir(parents=True, exist_ok=True)
    path = silo.save(directory / f"{Path(owner_file).stem}.npz")
    return {"owner": owner, "shard": str(path), "train_rows": len(silo.y_train), "test_rows": len(silo.y_test)}


def taking_part(shards: list[dict]) -> list[dict]:
    """The shards of the owners that train in this run."""
    return [s for s in shards if s and s.get("shard")]


def train(
    settings: Settings,
    shards: list[dict],
    as_of: dt.datetime | dt.date | str,
    *,
    rounds: int = 3,
    epsilon: float | None = None,
    delta: float = 1e-5,
    clipping_norm: float = 1.0,
) -> dict[str, Any]:
    """A Flower run over the owners' shards (SecAgg+; client-level DP at (epsilon, delta) when epsilon is set);
    writes model.json beside the shards and returns what the registry keeps of the run."""
    shards = taking_part(shards)
    if len(shards) < MIN_OWNERS:
        raise ValueError(f"{len(shards)} owner(s) have training rows: secure aggregation needs {MIN_OWNERS}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    dp = None if epsilon is None else runner.DPConfig(float(epsilon), float(delta), float(clipping_norm))
    config = runner.FederatedConfig(rounds=int(rounds), dp=dp)
    directory = run_dir(settings, as_of)
    shutil.rmtree(directory / "flower", ignore_errors=True)  # a re-run replaces the run's files
    fed = runner.run(
        settings,
        [Path(s["shard"]) for s in shards],
        [int(s["train_rows"]) for s in shards],
        len(COLUMNS),
        directory / "flower",
        config,
    )
    split, known_until = window(as_of, settings.federated_holdout_weeks)
    sent = list(fed.bytes_per_client.values())
    info = {
        "as_of": run_time(as_of).isoformat(),
        "train_until": (split - pd.Timedelta(1, "ns")).isoformat(),
        "known_until": known_until.isoformat(),
        "rounds": fed.rounds,
        "owners": [s["owner"] for s in shards],
        "train_rows": sum(int(s["train_rows"]) for s in shards),
        "test_rows": sum(int(s["test_rows"]) for s in shards),
        "dp": dp is not None,
        "epsilon": fed.guarantee.epsilon if fed.guarantee else None,
        "delta": fed.guarantee.delta if fed.guarantee else None,
        "noise_multiplier": fed.noise_multiplier,
        "clipping_norm": dp.clipping_norm if dp else None,
        "bytes_per_client": float(np.mean(sent)) if sent else math.nan,
        "bytes_per_client_max": float(np.max(sent)) if sent else math.nan,
        "seconds": fed.seconds,
    }
    path = save(directory / "model.json", fed.weights, **info)
    return {"model": str(path), **info}


def champion_weights(settings: Settings) -> tuple[str, np.ndarray] | None:
    """The current federated champion's version and weights; None without one, or (logged) when it cannot be
    loaded or multiplies other columns than this code builds."""
    version = registry.champion_version(settings, FAMILY)
    if version is None:
        return None
    try:
        current = registry.load(settings, FAMILY)
    except Exception:
        log.exception("the federated champion could not be loaded to evaluate it on this run's rows")
        return None
    if not isinstance(current, FederatedDemandPredictor) or current.columns_ != COLUMNS:
        log.warning("the federated champion (v%s) has other columns than this code builds", version)
        return None
    return version, current.weights_


def guardrails(weights: np.ndarray) -> list[str]:
    """Why a model may not be promoted whatever its RMSE: demand must fall as the price rises."""
    elasticity = own_price_elasticity(weights)
    return [] if elasticity < 0 else [f"own-price elasticity {elasticity:.3g} is not negative"]


def evaluate(settings: Settings, shards: list[dict], trained: dict[str, Any]) -> dict[str, Any]:
    """The model and the current federated champion on the same held-out rows of every owner, and ``decide``'s
    verdict (the gate every family uses: RMSE no worse than the champion's, guardrails held)."""
    silos = [Silo.load(Path(s["shard"])) for s in taking_part(shards)]
    weights = FederatedDemandPredictor.from_file(Path(trained["model"])).weights_
    model = score(silos, weights)
    evaluation = {MODEL: {**model, "own_price_elasticity": own_price_elasticity(weights)}}
    champion = champion_weights(settings)
    if champion is not None:
        evaluation["champion"] = score(silos, champion[1])
    judged = evaluation["champion"][GATE_METRIC] if champion is not None else None
    decision = decide(
        GATE_METRIC, model[GATE_METRIC], judged, higher_is_better=False, guardrail_failures=guardrails(weights)
    )
    return {
        "evaluation": evaluation,
        "champion_version": champion[0] if champion else registry.champion_version(settings, FAMILY),
        "champion_metric": judged,
        "promote": decision.promote,
        "reason": decision.reason,
    }


def register(settings: Settings, trained: dict[str, Any], judged: dict[str, Any]) -> dict[str, Any]:
    """Log the run (weights and columns as model.json, rounds, ε/δ, bytes per client) as a new version of
    ``omnicart-pricing-federated`` and move ``champion`` to it when the gate said so."""
    from training.family import flatten

    params = {
        key: trained[key]
        for key in (
            "as_of",
            "train_until",
            "known_until",
            "train_rows",
            "test_rows",
            "rounds",
            "dp",
            "clipping_norm",
            "noise_multiplier",
        )
        if trained.get(key) is not None
    }
    params |= {"owners": len(trained["owners"]), "columns": ",".join(COLUMNS), "delta": trained.get("delta")}
    metrics = flatten(judged["evaluation"])
    metrics |= {
        "bytes_per_client": trained["bytes_per_client"],
        "bytes_per_client_max": trained["bytes_per_client_max"],
        "seconds": trained["seconds"],
        "gate.champion": judged["champion_metric"] if judged["champion_metric"] is not None else -1.0,
    }
    if trained.get("epsilon") is not None:
        metrics["dp.epsilon"] = trained["epsilon"]
        metrics["dp.delta"] = trained["delta"]
    registered = registry.log_model(
        settings,
        FAMILY,
        FederatedDemandPredictor(),
        artifacts={ARTIFACT: trained["model"]},
        params={k: v for k, v in params.items() if v is not None},
        metrics={k: v for k, v in metrics.items() if v is not None and math.isfinite(v)},
        tags={
            "gate_metric": f"{MODEL}.{GATE_METRIC}",
            "decision": judged["reason"],
            "owners": ",".join(trained["owners"]),
        },
    )
    if judged["promote"]:
        registry.promote(settings, FAMILY, registered.version)
    log.info("%s v%s: %s", FAMILY, registered.version, judged["reason"])
    return {
        "version": registered.version,
        "model_uri": registered.model_uri,
        "promoted": judged["promote"],
        "reason": judged["reason"],
        "champion_version": registered.version if judged["promote"] else judged["champion_version"],
        "metrics": metrics,
    }
