"""Recommend family: the two-stage recommender of ``training/recsys.py`` on the platform's own data.

Verbs as every family: ``build_dataset`` (the lake's purchases before ``as_of`` and the catalog; the purchases of
``as_of`` to evaluate on; each item's recent sales and conversion on every channel, and each customer's recency,
frequency and spend in the channel they shop in, read point-in-time from Feast's offline store at each training
cut), ``train`` (``RecSys`` with both stages
as Ray Train jobs), ``evaluate`` (the model beside the popularity and repeat-history baselines on the same day) and
the predictor ``Recommender`` that serving loads from the registry: the fitted ``RecSys`` together with every
customer's purchase history at the training cut, so a request needs only the customer id.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from omnicart import lake, schemas
from omnicart.pricing.features import DEMAND_FEATURES, DEMAND_REFS
from omnicart.schemas import ALL_CHANNELS, C, F, windowed
from omnicart.settings import Settings
from training import candidates, recsys
from training.candidates import CandidateParams
from training.ranker import RankerParams
from training.recsys_metrics import evaluate_rankings
from training.two_tower import TwoTowerParams

log = logging.getLogger(__name__)

FAMILY = "recommend"
FEATURE_SERVICE = "recommend_v2"
GATE_METRIC = "ndcg_at_10"
KS = (10, 20)
HISTORY_COLUMNS = (C.customer_id, C.item_id, C.event_timestamp, C.quantity, C.price, C.order_id, C.channel)
CATALOG_COLUMNS = (C.item_id, C.title, C.description, C.category, C.brand, C.price)
# the customer in the request's channel (view customer_channel, in recommend_v2); its "all" row without a channel
CUSTOMER_FEATURES = (F.recency_days, windowed(F.frequency, 30), windowed(F.frequency, 90), windowed(F.monetary, 90))
CUSTOMER_REFS = tuple(f"{F.customer_channel_view}:{name}" for name in CUSTOMER_FEATURES)


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
        eval_channels=candidates.first_channels(test),  # where the requests the evaluation stands for came from
    )


def feast_item_features(settings: Settings) -> recsys.ItemFeatures | None:
    """Each item's 7- and 30-day sales and conversion across channels (feature view ``item_window``, in the
    ``recommend_v2`` service) as Feast's offline store knew them at the asked time; None (logged) before
    ``materialize_features`` has run."""
    from omnicart.featurestore import item_features_at, item_window_store

    store = item_window_store(settings, FAMILY)
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

    store = customer_channel_store(settings, FAMILY)
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


def online_customer_features(read: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> recsys.CustomerFeatures:
    """The serving side of ``feast_customer_features``: ``read`` takes entity rows (customer_id, channel) and returns
    the online store's values of ``CUSTOMER_FEATURES`` for each (the time asked is the store's now)."""

    def source(customers: np.ndarray, channels: list[str | None], at: pd.Timestamp) -> pd.DataFrame:
        rows = [
            {C.customer_id: str(c), C.channel: ch or ALL_CHANNELS} for c, ch in zip(customers, channels, strict=True)
        ]
        values = read(rows)
        return pd.DataFrame([{n: v.get(n) for n in CUSTOMER_FEATURES} for v in values], columns=list(CUSTOMER_FEATURES))

    return source


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
    model = recsys.train(
        settings,
        dataset.purchases,
        dataset.items,
        params,
        now=dataset.cut,
        item_features=dataset.item_features,
        customer_features=dataset.customer_features,
    )
    directory = settings.home_dir / "models" / FAMILY / f"as_of={dataset.as_of}"
    return Recommender.save(model, dataset.purchases, directory)


class Recommender(mlflow.pyfunc.PythonModel):
    """The fitted ``RecSys`` and the purchase history of every customer it was trained on."""

    def __init__(self) -> None:
        self.model_dir_: Path | None = None

    @classmethod
    def save(cls, model: recsys.RecSys, purchases: pd.DataFrame, directory: Path) -> Recommender:
        """Write the model and the histories as plain files under ``directory`` and return the loaded predictor."""
        directory = Path(directory)
        model.save(directory / "recsys")
        history = candidates.normalize_events(purchases)
        history = history[[c for c in HISTORY_COLUMNS if c in history]]
        history.to_parquet(directory / "histories.parquet", index=False)
        return cls.from_directory(directory)

    @classmethod
    def from_directory(cls, directory: Path) -> Recommender:
        predictor = cls()
        predictor._load(Path(directory))
        return predictor

    def load_context(self, context: Any) -> None:
        self._load(Path(context.artifacts["model_dir"]))

    def _load(self, directory: Path) -> None:
        self.model_dir_ = directory
        self.model_ = recsys.RecSys.load(directory / "recsys")
        self.histories_ = pd.read_parquet(directory / "histories.parquet")
        self.rows_ = self.histories_.groupby(C.customer_id).indices

    @property
    def cut(self) -> pd.Timestamp:
        return self.model_.now_

    def use_item_features(self, source: recsys.ItemFeatures | None) -> None:
        """Where the ranker's Feast item features are read: the offline store in evaluation, online in serving."""
        self.model_.use_item_features(source)

    def use_customer_features(self, source: recsys.CustomerFeatures | None) -> None:
        """Where the ranker's Feast customer × channel features are read (offline in evaluation, online serving)."""
        self.model_.use_customer_features(source)

    def knows(self, customer_id: str) -> bool:
        """Whether the customer bought anything before the training cut."""
        return customer_id in self.rows_

    def known_item(self, item_id: str) -> bool:
        """Whether the item is in the catalog the model was trained with (sold, or new with content)."""
        return item_id in self.model_.state_.index or item_id in self.model_.cold_items_

    def history(self, customer_id: str, recent_items: Iterable[str] = ()) -> pd.DataFrame:
        """The customer's purchases at the training cut, plus items touched since (one event each, at the cut)."""
        rows = self.rows_.get(customer_id)
        own = self.histories_.iloc[rows] if rows is not None else self.histories_.iloc[:0]
        recent = [i for i in dict.fromkeys(map(str, recent_items)) if i in self.model_.state_.index]
        if not recent:
            return own
        extra = pd.DataFrame(
            {C.customer_id: customer_id, C.item_id: recent, C.event_timestamp: self.cut - pd.Timedelta(seconds=1)}
        )
        return pd.concat([own, extra], ignore_index=True)

    def recommend(
        self,
        customer_id: str,
        k: int = 10,
        *,
        recent_items: Iterable[str] = (),
        exclude: Iterable[str] = (),
        discover: bool = False,
        channel: str | None = None,
    ) -> list[dict[str, Any]]:
        """Ranked, explained items for a customer (known by id, or by the items they touched), in ``channel``
        (default: the channel of their latest order)."""
        history = self.history(customer_id, recent_items)
        context = {"now": self.cut, "discover": discover, "channel": channel}
        return self.model_.recommend(history, k=k, exclude=exclude, context=context)

    def popular(self, k: int, exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
        return self.model_.popular(k, exclude)

    def rank(
        self,
        purchases: pd.DataFrame,
        customers: list[str],
        k: int,
        now: pd.Timestamp,
        channels: dict[str, str] | None = None,
    ) -> dict[str, list[str]]:
        """Top ``k`` item ids per customer from ``purchases`` before ``now`` (each in their ``channels`` entry,
        default their latest order's); a customer without any purchase gets the popular items."""
        known = sorted(set(customers) & set(purchases[C.customer_id]))
        ranked = self.model_.rank_users(purchases, known, k, now=now, channels=channels) if known else {}
        popular = [r[C.item_id] for r in self.popular(k)]
        return {c: ranked.get(c, popular) for c in customers}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list:
        """pyfunc entry point: one list of recommended items (dicts) per ``customer_id`` row."""
        k = int((params or {}).get("k", 10))
        return [self.recommend(str(c), k) for c in model_input[C.customer_id]]


def _baselines(purchases: pd.DataFrame, customers: list[str], k: int) -> dict[str, dict[str, list[str]]]:
    """Popularity (distinct buyers) and repeat history (own purchase count, ties by popularity)."""
    popularity = purchases.groupby(C.item_id)[C.customer_id].nunique().sort_values(ascending=False, kind="stable")
    top = popularity.index[:k].tolist()
    counts = purchases.groupby([C.customer_id, C.item_id]).size()
    rank_of = {item: n for n, item in enumerate(popularity.index)}
    repeat = {}
    for c in customers:
        own = counts.loc[c] if c in counts.index.get_level_values(0) else pd.Series(dtype=float)
        mine = sorted(own.index, key=lambda i: (-own[i], rank_of.get(i, 0)))[:k]
        repeat[c] = mine + [i for i in top if i not in set(mine)][: k - len(mine)]
    return {"popularity": dict.fromkeys(customers, top), "repeat": repeat}


def _metrics(rankings: dict[str, list[str]], truth: dict[str, set[str]]) -> dict[str, float]:
    m = evaluate_rankings(rankings, truth, KS)
    out = {f"{name}_at_{k}": m[f"{name}@{k}"] for k in KS for name in ("ndcg", "recall")}
    out["hit_rate_at_10"] = float(np.mean([bool(set(rankings.get(u, [])[:10]) & t) for u, t in truth.items()]))
    out["users"] = m["users"]
    return out


def evaluate(model: Recommender, dataset: RecommendDataset) -> dict[str, dict[str, float]]:
    """NDCG, recall and hit rate on ``as_of``'s purchases for the model and its baselines, every customer who
    bought that day included (those without history get each model's answer for strangers)."""
    truth = dataset.eval_purchases.groupby(C.customer_id)[C.item_id].agg(set).to_dict()
    if not truth:
        raise ValueError(f"no purchases on {dataset.as_of} to evaluate on")
    customers = sorted(truth)
    k = max(KS)
    model.use_item_features(dataset.item_features)  # the window's features, point in time
    model.use_customer_features(dataset.customer_features)
    out = {"model": _metrics(model.rank(dataset.purchases, customers, k, dataset.cut, dataset.eval_channels), truth)}
    for name, rankings in _baselines(dataset.purchases, customers, k).items():
        out[name] = _metrics(rankings, truth)
    return out


def champion_metric(load_champion: Callable[[], Any], dataset: RecommendDataset) -> float | None:
    """The champion's gate metric on this dataset; None (logged) when the champion cannot be loaded or cannot rank
    (a model of an older format): the challenger then wins by default."""
    try:
        current = load_champion()
    except Exception:
        log.exception("the recommend champion could not be loaded to evaluate it on this window")
        return None
    if not isinstance(current, Recommender):
        log.warning("the recommend champion (%s) cannot be evaluated on this window", type(current).__name__)
        return None
    return evaluate(current, dataset)["model"][GATE_METRIC]


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
