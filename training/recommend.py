"""Recommend family: the two-stage recommender of ``omnicart.recommend`` on the platform's own data.

Verbs as every family: ``build_dataset`` (the lake's purchases before ``as_of`` and the catalog; the purchases of
``as_of`` to evaluate on; each item's recent sales and conversion on every channel, and each customer's recency,
frequency and spend in the channel they shop in, read point-in-time from Feast's offline store at each training
cut; each item's text vector as the store knew it before ``as_of``), ``train`` (``RecSys`` with both stages
as Ray Train jobs), ``evaluate`` (the model beside the popularity and repeat-history baselines on the same day) and
the predictor ``Recommender`` that serving loads from the registry: the fitted ``RecSys`` together with every
customer's purchase history at the training cut, so a request needs only the customer id.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from omnicart import lake, schemas
from omnicart.metrics import evaluate_rankings
from omnicart.pricing.features import DEMAND_FEATURES, DEMAND_REFS
from omnicart.recommend import candidates, recsys
from omnicart.recommend.candidates import CandidateParams
from omnicart.recommend.predictor import CUSTOMER_FEATURES, CUSTOMER_REFS, Recommender
from omnicart.recommend.ranker import RankerParams
from omnicart.recommend.two_tower import TwoTowerParams
from omnicart.schemas import ALL_CHANNELS, C
from omnicart.settings import Settings
from training.family import Family, Registration

log = logging.getLogger(__name__)

NAME = "recommend"
FEATURE_SERVICE = "recommend_v2"
GATE_METRIC = "ndcg_at_10"
KS = (10, 20)
CATALOG_COLUMNS = (C.item_id, C.title, C.description, C.category, C.brand, C.price)


@dataclass(frozen=True)
class RecommendDataset:
    """Purchases before ``as_of`` to train on; the purchases of ``as_of`` to evaluate on."""

    as_of: dt.date
    train_start: dt.date
    purchases: pd.DataFrame  # customer_id, item_id, event_timestamp, quantity, price, channel
    items: pd.DataFrame  # the catalog known at as_of: item_id, title, description, category, brand, price
    eval_purchases: pd.DataFrame  # customer_id, item_id bought on as_of
    item_features: recsys.ItemFeatures | None = None  # Feast item windows, point in time; None before materialize
    customer_features: recsys.CustomerFeatures | None = None  # Feast customer x channel windows, point in time
    item_text: recsys.ItemText | None = None  # Feast item text vectors known before as_of; None before materialize
    eval_channels: dict[str, str] | None = None  # the channel of each customer's first purchase on as_of

    @property
    def cut(self) -> pd.Timestamp:
        return pd.Timestamp(self.as_of, tz="UTC")

    @property
    def window(self) -> str:
        return f"{self.train_start}..{self.as_of - dt.timedelta(days=1)} / eval {self.as_of}"


def build_dataset(settings: Settings, as_of: dt.date, window_days: int = 365) -> RecommendDataset:
    """Purchases of the ``window_days`` before ``as_of`` for training, ``as_of``'s purchases to evaluate on."""
    start = as_of - dt.timedelta(days=window_days)
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, start, as_of)
    if events.empty:
        raise ValueError(f"no events in the lake between {start} and {as_of}")
    events[C.event_timestamp] = pd.to_datetime(events[C.event_timestamp], utc=True)
    buys = events[(events[C.event_type] == "purchase") & events[C.customer_id].notna()]
    cut = pd.Timestamp(as_of, tz="UTC")
    train = buys[buys[C.event_timestamp] < cut]
    test = buys[buys[C.event_timestamp] >= cut]
    if train.empty:
        raise ValueError(f"no purchases to train on before {as_of}")
    catalog = lake.read_table(settings.lake_dir, schemas.ITEMS, end=as_of)
    catalog = catalog[[c for c in CATALOG_COLUMNS if c in catalog.columns]].drop_duplicates(C.item_id, keep="last")
    return RecommendDataset(
        as_of=as_of,
        train_start=start,
        purchases=train[[C.customer_id, C.item_id, C.event_timestamp, C.quantity, C.price, C.channel]].reset_index(
            drop=True
        ),
        items=catalog.reset_index(drop=True),
        eval_purchases=test[[C.customer_id, C.item_id]].drop_duplicates().reset_index(drop=True),
        item_features=feast_item_features(settings),
        customer_features=feast_customer_features(settings),
        item_text=feast_item_text(settings, cut),
        eval_channels=candidates.first_channels(test),  # where the requests the evaluation stands for came from
    )


def feast_item_features(settings: Settings) -> recsys.ItemFeatures | None:
    """Each item's 7- and 30-day sales and conversion across channels (feature view ``item_window``, in the
    ``recommend_v2`` service) as Feast's offline store knew them at the asked time; None (logged) before
    ``materialize_features`` has run."""
    from omnicart.featurestore import item_features_at, item_window_store

    store = item_window_store(settings, NAME)
    if store is None:
        return None

    def read(item_ids: np.ndarray, at: pd.Timestamp) -> pd.DataFrame:
        keys = pd.DataFrame({C.item_id: pd.Series(item_ids, dtype=str), C.event_timestamp: pd.Timestamp(at)})
        return item_features_at(store, DEMAND_REFS, keys).set_index(C.item_id)[list(DEMAND_FEATURES)]

    return read


def feast_customer_features(settings: Settings) -> recsys.CustomerFeatures | None:
    """Each customer's recency, 30/90-day frequency and 90-day spend in the channel they shop in (feature view
    ``customer_channel``; its cross-channel "all" row when the channel is unknown) as Feast's offline store knew them
    at the asked time; None (logged) before ``materialize_features`` has run."""
    from omnicart.featurestore import customer_channel_store, features_at

    store = customer_channel_store(settings, NAME)
    if store is None:
        return None

    def read(customers: np.ndarray, channels: list[str | None], at: pd.Timestamp) -> pd.DataFrame:
        keys = pd.DataFrame(
            {
                C.customer_id: pd.Series(customers, dtype=str),
                C.channel: [c or ALL_CHANNELS for c in channels],
                C.event_timestamp: pd.Timestamp(at),
            }
        )
        return features_at(store, CUSTOMER_REFS, keys, [C.customer_id, C.channel])[list(CUSTOMER_FEATURES)]

    return read


def feast_item_text(settings: Settings, at: pd.Timestamp) -> recsys.ItemText | None:
    """Each item's text vector (feature view ``item_text``, the recommender's own recipe) as Feast's offline store
    knew it at ``at``, NaN for items it did not know yet (``fit`` encodes those); None (logged) before
    ``materialize_features`` has run."""
    from omnicart.featurestore import item_text_at, item_text_store

    store = item_text_store(settings, NAME)
    if store is None:
        return None

    def read(item_ids: np.ndarray) -> np.ndarray:
        return item_text_at(store, item_ids, at)

    return read


def params_for(purchases: pd.DataFrame, seed: int = 0) -> recsys.RecSysParams:
    """Training windows sized to the history: a year of retail gets the benchmark's 70-day label windows; a few
    weeks of a small shop get windows of a few days, small towers and a lighter ranker.

    A small shop's ranker sees some ten thousand rows and stops early after a few dozen rounds, and its two-tower
    models converge in a couple of epochs over a few thousand examples, and two of them serve the three label cuts
    (besides the one on all events); so each Ray Train job costs little more than its start-up."""
    span = (purchases[C.event_timestamp].max() - purchases[C.event_timestamp].min()).days
    if span >= 240:
        return recsys.RecSysParams(seed=seed)
    label_days = int(np.clip(span // 4, 1, 30))
    n_cuts = 3
    return recsys.RecSysParams(
        label_days=label_days,
        n_cuts=n_cuts,
        cut_stride_days=max(1, label_days // 2),
        two_tower_every=n_cuts,
        candidates=CandidateParams(n_history=50, n_ease=20, n_cooc=10, n_two_tower=10, n_text=5, n_popular=10),
        two_tower=TwoTowerParams(dim=32, hidden=64, epochs=2, batch_size=256, seed=seed),
        ranker=RankerParams(max_rounds=60, early_stopping_rounds=10, eval_share=0.3, min_child_weight=2.0, seed=seed),
        seed=seed,
    )


def train(settings: Settings, dataset: RecommendDataset, params: recsys.RecSysParams | None = None) -> Recommender:
    """Fit ``RecSys`` (two-tower and ranker as Ray Train jobs) and save it with the customers' histories."""
    params = params or params_for(dataset.purchases)
    from training.ray_job import RayExecutor

    model = recsys.RecSys(params, cache_dir=settings.home_dir / "cache").fit(
        dataset.purchases,
        dataset.items,
        executor=RayExecutor(settings),
        now=dataset.cut,
        item_features=dataset.item_features,
        customer_features=dataset.customer_features,
        item_text=dataset.item_text,
    )
    directory = settings.home_dir / "models" / NAME / f"as_of={dataset.as_of}"
    return Recommender.save(model, dataset.purchases, directory)


def _baselines(purchases: pd.DataFrame, customers: list[str], k: int) -> dict[str, dict[str, list[str]]]:
    """Popularity (distinct buyers) and repeat history (own purchase count, ties by popularity, then item id).
    One grouping of the evaluated customers' lines, so the cost grows with their lines, not customers × lines."""
    popularity = purchases.groupby(C.item_id)[C.customer_id].nunique().sort_values(ascending=False, kind="stable")
    top = popularity.index[:k].tolist()
    rank_of = pd.Series(np.arange(len(popularity)), index=popularity.index)
    mine = purchases[purchases[C.customer_id].isin(customers)]
    counts = mine.groupby([C.customer_id, C.item_id]).size().rename("n").reset_index()  # by customer, then item
    counts["popularity_rank"] = counts[C.item_id].map(rank_of).to_numpy()
    counts = counts.sort_values([C.customer_id, "n", "popularity_rank"], ascending=[True, False, True], kind="stable")
    own = counts[counts.groupby(C.customer_id).cumcount() < k].groupby(C.customer_id)[C.item_id].agg(list).to_dict()
    repeat = {}
    for c in customers:
        items = own.get(c, [])
        seen = set(items)
        repeat[c] = items + [i for i in top if i not in seen][: k - len(items)]
    return {"popularity": dict.fromkeys(customers, top), "repeat": repeat}


def _metrics(rankings: dict[str, list[str]], truth: dict[str, set[str]]) -> dict[str, float]:
    m = evaluate_rankings(rankings, truth, KS)
    out = {f"{name}_at_{k}": m[f"{name}@{k}"] for k in KS for name in ("ndcg", "recall")}
    out["hit_rate_at_10"] = float(np.mean([bool(set(rankings.get(u, [])[:10]) & t) for u, t in truth.items()]))
    out["users"] = m["users"]
    return out


def evaluate(model: Recommender, dataset: RecommendDataset, *, baselines: bool = True) -> dict[str, dict[str, float]]:
    """NDCG, recall and hit rate on ``as_of``'s purchases for the model and (with ``baselines``) the popularity and
    repeat-history baselines, every customer who bought that day included (those without history get each model's
    answer for strangers)."""
    truth = dataset.eval_purchases.groupby(C.customer_id)[C.item_id].agg(set).to_dict()
    if not truth:
        raise ValueError(f"no purchases on {dataset.as_of} to evaluate on")
    customers = sorted(truth)
    k = max(KS)
    model.use_item_features(dataset.item_features)  # the window's features, point in time
    model.use_customer_features(dataset.customer_features)
    out = {"model": _metrics(model.rank(dataset.purchases, customers, k, dataset.cut, dataset.eval_channels), truth)}
    if baselines:
        for name, rankings in _baselines(dataset.purchases, customers, k).items():
            out[name] = _metrics(rankings, truth)
    return out


def run_params(model: Recommender, dataset: RecommendDataset) -> dict[str, Any]:
    """Flat MLflow params: the data window and every hyper-parameter of the model."""
    flat = pd.json_normalize(model.model_.params.to_dict(), sep=".").iloc[0].to_dict()
    return {
        "as_of": dataset.as_of.isoformat(),
        "train_start": dataset.train_start.isoformat(),
        "train_purchases": len(dataset.purchases),
        "catalog_items": len(dataset.items),
        "ease_lambda_fitted": model.model_.ease_lambda_,
        **{k: json.dumps(v) if isinstance(v, list | tuple) else v for k, v in flat.items()},
    }


def signature(model: Recommender) -> Any:
    """The pyfunc's signature: a customer id in, a list of recommended items out, ``k`` as a parameter."""
    from mlflow.models import infer_signature

    example = pd.DataFrame({C.customer_id: [next(iter(model.rows_), "unknown")]})
    return infer_signature(example, [json.dumps(model.predict(None, example, {"k": 3}))], params={"k": 10})


def registration(model: Recommender, dataset: RecommendDataset) -> Registration:
    """The pyfunc with the model directory, every hyper-parameter, the stage timings and the signature."""
    return Registration(
        python_model=Recommender(),
        artifacts={"model_dir": model.model_dir_},
        params=run_params(model, dataset),
        tags={"feature_service": FEATURE_SERVICE, "data_window": dataset.window},
        metrics={f"seconds.{stage}": value for stage, value in model.model_.timings_.items()},
        signature=signature(model),
    )


def stages(model: Recommender) -> dict[str, float]:
    """Seconds of each stage of ``RecSys.fit`` (text, EASE tuning, item state, two-tower, features, ranker)."""
    return {k: round(float(v), 1) for k, v in model.model_.timings_.items()}


FAMILY = Family(
    name="recommend",
    gate_metric=GATE_METRIC,
    higher_is_better=True,
    build_dataset=build_dataset,
    train=train,
    evaluate=evaluate,
    registration=registration,
    predictor_type=Recommender,
    stages=stages,
)
