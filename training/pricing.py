"""Pricing family: the demand model behind ``POST /price``.

Verbs as every family: ``build_dataset`` (the lake's daily prices and units, split out of time), ``train`` (a Ray
Train job fitting ``DemandModel``), ``evaluate`` (the model beside the series-mean and log-log baselines on the same
held-out periods) and the predictor ``PricingPredictor`` that the registry carries; ``training.run`` promotes the
challenger only when it beats the champion on RMSE and keeps negative elasticities (``guardrails``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart import lake, schemas
from omnicart.pricing.baselines import LogLog, SeriesMean, rmse
from omnicart.pricing.features import (
    CANONICAL,
    DEMAND_FEATURES,
    DEMAND_REFS,
    OPTIONAL,
    period_kind,
    require_columns,
)
from omnicart.pricing.model import DemandModel
from omnicart.pricing.pyfunc import PricingPredictor
from omnicart.schemas import C
from omnicart.settings import Settings
from training.family import Family, Registration

log = logging.getLogger("omnicart.training.pricing")

NAME = "pricing"
GATE_METRIC = "rmse"  # lower is better
MIN_NEGATIVE_SHARE = 0.95  # PROTOCOLS.md: share of products with a negative own-price elasticity
TRAIN_SHARE = 0.8  # PROTOCOLS.md: the test starts at the distinct period at the 80 % position
FEATURE_SERVICE = "pricing_v1"

__all__ = [
    "FAMILY",
    "DemandModel",
    "PricingDataset",
    "PricingPredictor",
    "build_dataset",
    "evaluate",
    "from_frame",
    "train",
    "registration",
    "guardrails",
    "with_demand_features",
]


@dataclass(frozen=True)
class PricingDataset:
    """A canonical demand table and its out-of-time split: train = periods before ``split``; test = the rest, for
    series seen in train. The test rows keep their units (for scoring) but lags only ever look back."""

    name: str
    frame: pd.DataFrame
    split: Any  # the first test period
    catalog: pd.DataFrame = field(default_factory=pd.DataFrame)  # product_id, cost, category, price (optional)

    @property
    def train(self) -> pd.DataFrame:
        return self.frame[self._before].reset_index(drop=True)

    @property
    def _before(self) -> np.ndarray:
        return (self.frame[C.period] < self.split).to_numpy()

    @property
    def test_rows(self) -> np.ndarray:
        """Positions in ``frame`` of the test rows (on or after the split, series seen in train)."""
        seen = set(self.frame.loc[self._before, C.series_id])
        return np.flatnonzero(~self._before & self.frame[C.series_id].isin(seen).to_numpy())

    @property
    def test(self) -> pd.DataFrame:
        return self.frame.iloc[self.test_rows].reset_index(drop=True)


def protocol_split(periods: pd.Series, share: float = TRAIN_SHARE) -> Any:
    """The distinct period at the ``share`` position: train is before it."""
    distinct = np.sort(periods.unique())
    if len(distinct) < 2:
        raise ValueError(f"need at least two distinct periods to split, got {len(distinct)}")
    value = distinct[min(int(share * len(distinct)), len(distinct) - 1)]
    return pd.Timestamp(value) if period_kind(periods) == "date" else value


def from_frame(
    frame: pd.DataFrame, *, split: Any = None, name: str = "input", catalog: pd.DataFrame | None = None
) -> PricingDataset:
    """A dataset from a canonical demand table; ``split`` (the first test period) defaults to the protocol's."""
    require_columns(frame)
    frame = frame.copy()
    if period_kind(frame[C.period]) == "date":
        periods = pd.to_datetime(frame[C.period])
        if getattr(periods.dt, "tz", None) is not None:
            periods = periods.dt.tz_convert("UTC").dt.tz_localize(None)
        frame[C.period] = periods
    for column in (C.series_id, C.product_id, C.store_id, C.category):
        if column in frame.columns:
            frame[column] = frame[column].where(frame[column].isna(), frame[column].astype(str))
    bad = ~(np.isfinite(frame[C.price].to_numpy(np.float64)) & (frame[C.price] > 0))
    bad |= ~np.isfinite(frame[C.units].to_numpy(np.float64)) | (frame[C.units] < 0)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} rows have a non-positive price or negative/missing units")
    if frame.duplicated([C.series_id, C.period]).any():
        raise ValueError("duplicate (series_id, period) rows: one row per series and period")
    frame = frame.sort_values([C.period, C.series_id], kind="stable").reset_index(drop=True)
    if split is None:
        split = protocol_split(frame[C.period])
    elif period_kind(frame[C.period]) == "date":
        split = pd.Timestamp(split)
    return PricingDataset(
        name=name, frame=frame, split=split, catalog=catalog if catalog is not None else pd.DataFrame()
    )


def canonical_prices(prices: pd.DataFrame, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """The lake's (or simulator's) daily ``prices`` table as a canonical demand table: one series per item."""
    period = pd.to_datetime(prices[C.event_timestamp])
    if getattr(period.dt, "tz", None) is not None:
        period = period.dt.tz_convert("UTC").dt.tz_localize(None)
    frame = pd.DataFrame(
        {
            C.series_id: prices[C.item_id].astype(str).to_numpy(),
            C.product_id: prices[C.item_id].astype(str).to_numpy(),
            C.period: period.dt.normalize().to_numpy(),
            C.price: prices[C.price].to_numpy(np.float64),
            C.units: prices[C.units_sold].to_numpy(np.float64),
            C.cost: prices[C.cost].to_numpy(np.float64),
            C.competitor_price: prices[C.competitor_price].to_numpy(np.float64),
        }
    )
    if items is not None and not items.empty and C.category in items.columns:
        frame[C.category] = frame[C.product_id].map(items.drop_duplicates(C.item_id).set_index(C.item_id)[C.category])
    return frame


def build_dataset(settings: Settings, as_of: dt.date, window_days: int = 182) -> PricingDataset:
    """The ``window_days`` of daily prices and units before ``as_of`` to train on, and ``as_of`` itself to evaluate."""
    start = as_of - dt.timedelta(days=window_days)
    prices = lake.read_table(settings.lake_dir, schemas.PRICES, start, as_of)
    if prices.empty:
        raise ValueError(f"no prices in the lake between {start} and {as_of}")
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=as_of)
    frame = with_demand_features(settings, canonical_prices(prices, items))
    catalog = (
        items.drop_duplicates(C.item_id, keep="last")
        .rename(columns={C.item_id: C.product_id})[[C.product_id, C.cost, C.category, C.price]]
        .reset_index(drop=True)
        if not items.empty
        else pd.DataFrame()
    )
    return from_frame(frame, split=pd.Timestamp(as_of), name=f"lake-{as_of}", catalog=catalog)


def with_demand_features(settings: Settings, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (one series per item, daily periods) with each item's recent demand (``DEMAND_FEATURES``) as Feast
    knew it at the start of each period: a point-in-time join on the offline store, so a period never sees its own
    or later sales. Without the item windows in the feature store (no ``materialize_features`` run yet) the frame
    comes back unchanged and the model keeps to the lags of its own price history."""
    from omnicart.featurestore import item_features_at, item_window_store

    store = item_window_store(settings, "pricing")
    if store is None:
        return frame
    at = pd.to_datetime(frame[C.period]).reset_index(drop=True)  # a day; features_at reads it in UTC
    keys = pd.DataFrame({C.item_id: frame[C.product_id].astype(str).reset_index(drop=True), C.event_timestamp: at})
    lags = item_features_at(store, DEMAND_REFS, keys)
    out = frame.copy()
    for name in DEMAND_FEATURES:
        out[name] = lags[name].to_numpy(np.float64)
    return out


# --- training: one Ray Train job --------------------------------------------------------------------------------
def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker (XGBoostTrainer): fit the demand model, boosting on this worker's share of the series in
    the workers' collective, and report its directory as the checkpoint."""
    import ray.train

    from training.ray_job import report_directory

    ctx = ray.train.get_context()
    shard = (ctx.get_world_rank(), ctx.get_world_size())

    def write(directory: Path) -> dict[str, float]:
        model = DemandModel(**config["params"]).fit(config["frame"], shard=shard)
        model.save(directory)
        return {
            "train_rows": float(model.n_train_rows_),
            "best_iteration": float(model.best_iteration_),
            "validation_rmse": float(model.validation_rmse_),
        }

    report_directory(write)


def _compact(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns the model reads, strings as categories (a much smaller payload for the object store)."""
    keep = [c for c in frame.columns if c in (*CANONICAL, *OPTIONAL) or pd.api.types.is_numeric_dtype(frame[c])]
    out = frame[keep].copy()
    for column in (C.series_id, C.product_id, C.store_id, C.category):
        if column in out.columns:
            out[column] = out[column].astype("category")
    return out


def train(settings: Settings, dataset: PricingDataset, **params: Any) -> PricingPredictor:
    """Fit ``DemandModel(**params)`` on the dataset's train periods in a Ray Train job, one worker per node (GPU when
    the cluster has one); returns the predictor with the loaded model (its files in ``predictor.model_.model_dir_``)."""
    from omnicart.raycluster import ensure_ray, gpu_available, train_workers, worker_cpus
    from training import ray_job

    ensure_ray(settings)
    use_gpu = gpu_available(settings)
    workers = train_workers(settings)
    params = {"device": "cuda" if use_gpu else "cpu", "nthread": worker_cpus(workers), **params}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in f"{dataset.name}-{pd.Timestamp(dataset.split)}")
    output = settings.home_dir / "models" / NAME / safe
    config = {"frame": _compact(dataset.train), "params": params}
    model_dir, _ = ray_job.run(
        settings, f"{NAME}-{safe}-{stamp}", _train_loop, config, output, num_workers=workers, xgboost=True
    )
    return PricingPredictor.from_directory(model_dir)


# --- evaluation ---------------------------------------------------------------------------------------------------
def evaluate(
    predictor: PricingPredictor, dataset: PricingDataset, *, baselines: bool = True
) -> dict[str, dict[str, float]]:
    """RMSE of log units on the test periods for the model and (with ``baselines``) both baselines; share of
    products whose own-price elasticity is negative (model: read off the model on the test periods; log-log: its
    fitted slope)."""
    model = predictor.model_
    frame = dataset.frame
    rows = dataset.test_rows
    if not len(rows):
        raise ValueError(f"{dataset.name}: no test rows for series seen in train")
    feats = model.features(frame)
    y = feats.y[rows]
    prediction = model.predict_features(feats.take(rows))
    elasticities = model.elasticities(frame, features=feats, rows=rows)
    out = {
        "model": {
            "rmse": rmse(y, prediction),
            "negative_elasticity_share": float((elasticities[C.elasticity] < 0).mean()),
            "median_elasticity": float(elasticities[C.elasticity].median()),
            "products": float(len(elasticities)),
        },
        "data": {
            "train_rows": float(len(dataset.train)),
            "test_rows": float(len(rows)),
            "target_log1p": float(model.spec_.target == "log1p"),
        },
    }
    if not baselines:
        return out
    train, test = dataset.train, frame.iloc[rows]
    target = model.spec_.target
    series_mean = SeriesMean.fit(train, target)
    loglog = LogLog.fit(train, target)
    tested = sorted(set(test[C.product_id].astype(str)))
    ll_slopes = loglog.elasticity_.reindex(tested).dropna()
    out["series_mean"] = {"rmse": rmse(y, series_mean.predict(test))}
    out["log_log"] = {
        "rmse": rmse(y, loglog.predict(test)),
        "negative_elasticity_share": float((ll_slopes < 0).mean()) if len(ll_slopes) else float("nan"),
        "median_elasticity": float(ll_slopes.median()) if len(ll_slopes) else float("nan"),
        "products": float(len(ll_slopes)),
    }
    return out


def guardrails(evaluation: dict[str, dict[str, float]]) -> list[str]:
    """A demand model whose prices would move demand the wrong way for many products may not serve."""
    share = evaluation["model"]["negative_elasticity_share"]
    if share < MIN_NEGATIVE_SHARE:
        return [f"negative own-price elasticity for {share:.1%} of products (< {MIN_NEGATIVE_SHARE:.0%})"]
    return []


def registration(predictor: PricingPredictor, dataset: PricingDataset) -> Registration:
    """The pyfunc with the model directory, the split and every hyper-parameter."""
    model = predictor.model_
    return Registration(
        python_model=PricingPredictor(),
        artifacts={"model_dir": model.model_dir_},
        params={"split": str(dataset.split), **model.get_params()},
        tags={
            "data_window": f"..{dataset.split.date() if isinstance(dataset.split, pd.Timestamp) else dataset.split}",
            "dataset": dataset.name,
            "feature_service": FEATURE_SERVICE if set(DEMAND_FEATURES) & set(model.spec_.extras) else "none",
        },
    )


FAMILY = Family(
    name=NAME,
    gate_metric=GATE_METRIC,
    higher_is_better=False,
    build_dataset=build_dataset,
    train=train,
    evaluate=evaluate,
    registration=registration,
    guardrails=guardrails,
    predictor_type=PricingPredictor,
)
