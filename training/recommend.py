"""Recommend family, first model: popularity per segment plus item co-occurrence.

Verbs as every family: ``build_dataset`` (lake events + point-in-time Feast features), ``train`` (a Ray Train job),
``evaluate`` (the model beside a popularity baseline on the same held-out day) and the predictor ``Recommender``
that serving loads from the registry.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from omnicart import lake, schemas
from omnicart.schemas import C, F
from omnicart.settings import Settings

FAMILY = "recommend"
FEATURE_SERVICE = "recommend_v1"
GATE_METRIC = "hit_rate_at_10"
EVENT_WEIGHTS = {"view": 1.0, "add_to_cart": 2.0, "purchase": 3.0}


@dataclass(frozen=True)
class RecommendDataset:
    """Training interactions before ``as_of``; evaluation purchases on ``as_of`` with the features known then."""

    as_of: dt.date
    train_start: dt.date
    events: pd.DataFrame  # customer_id, item_id, event_type, event_timestamp
    segments: pd.DataFrame  # customer_id, segment (point-in-time, end of training window)
    items: pd.DataFrame  # item_id, title, category
    eval_purchases: pd.DataFrame  # customer_id, item_id bought on as_of
    eval_features: pd.DataFrame  # customer_id, segment, recent_items as of the start of as_of


def _historical(settings: Settings, customers: list[str], at: pd.Timestamp) -> pd.DataFrame:
    """Customer features as Feast knew them at ``at`` (point-in-time join on the offline store)."""
    from omnicart.featurestore import feature_store

    entity_df = pd.DataFrame({C.customer_id: customers, C.event_timestamp: at})
    refs = [f"{F.customer_view}:{C.segment}", f"{F.customer_view}:{F.recent_items}"]
    return feature_store(settings).get_historical_features(entity_df=entity_df, features=refs).to_df()


def build_dataset(settings: Settings, as_of: dt.date, window_days: int = 28) -> RecommendDataset:
    """Interactions of the ``window_days`` before ``as_of`` for training, and ``as_of``'s purchases to evaluate."""
    start = as_of - dt.timedelta(days=window_days)
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, start, as_of)
    if events.empty:
        raise ValueError(f"no events in the lake between {start} and {as_of}")
    events[C.event_timestamp] = pd.to_datetime(events[C.event_timestamp], utc=True)
    events = events[events[C.customer_id].notna()]
    cutoff = pd.Timestamp(as_of, tz="UTC")
    train = events[events[C.event_timestamp] < cutoff]
    test = events[(events[C.event_timestamp] >= cutoff) & (events[C.event_type] == "purchase")]
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=as_of)[[C.item_id, C.title, C.category]]
    customers = sorted(set(train[C.customer_id]) | set(test[C.customer_id]))
    features = _historical(settings, customers, cutoff - pd.Timedelta(microseconds=1))
    return RecommendDataset(
        as_of=as_of,
        train_start=start,
        events=train[[C.customer_id, C.item_id, C.event_type, C.event_timestamp]].reset_index(drop=True),
        segments=features[[C.customer_id, C.segment]].dropna(),
        items=items.drop_duplicates(C.item_id).reset_index(drop=True),
        eval_purchases=test[[C.customer_id, C.item_id]].drop_duplicates().reset_index(drop=True),
        eval_features=features[[C.customer_id, C.segment, F.recent_items]],
    )


def fit(events: pd.DataFrame, segments: pd.DataFrame, items: pd.DataFrame) -> dict[str, Any]:
    """The model's state from interactions: segment popularity and a normalised item co-occurrence matrix."""
    item_ids = items[C.item_id].tolist()
    index = {item: i for i, item in enumerate(item_ids)}
    ev = events[events[C.item_id].isin(index) & events[C.event_type].isin(EVENT_WEIGHTS)]
    # one weight per (customer, item): the strongest signal the customer gave
    weights = ev.assign(w=ev[C.event_type].map(EVENT_WEIGHTS)).groupby([C.customer_id, C.item_id])["w"].max()
    users = {u: i for i, u in enumerate(weights.index.get_level_values(0).unique())}
    matrix = np.zeros((len(users), len(item_ids)), dtype=np.float32)
    matrix[
        [users[u] for u in weights.index.get_level_values(0)], [index[i] for i in weights.index.get_level_values(1)]
    ] = weights.to_numpy()
    binary = (matrix > 0).astype(np.float32)
    cooc = binary.T @ binary
    np.fill_diagonal(cooc, 0.0)
    counts = binary.sum(axis=0)
    cooc = cooc / np.sqrt(np.outer(counts, counts) + 1e-9)

    buys = ev[ev[C.event_type] == "purchase"].merge(segments, on=C.customer_id, how="left")
    buys[C.segment] = buys[C.segment].fillna("unknown")
    global_pop = buys.groupby(C.item_id)[C.customer_id].nunique().reindex(item_ids).fillna(0).to_numpy(float)
    segment_pop = {
        str(seg): grp.groupby(C.item_id)[C.customer_id].nunique().reindex(item_ids).fillna(0).to_numpy(float)
        for seg, grp in buys.groupby(C.segment)
    }
    return {
        "item_ids": item_ids,
        "titles": items[C.title].fillna("").tolist(),
        "cooc": cooc.astype(np.float32),
        "global_pop": global_pop,
        "segment_pop": segment_pop,
    }


def save(state: dict[str, Any], directory: Path) -> None:
    """Write the model state as plain files (npz + JSON), readable without pickle."""
    directory.mkdir(parents=True, exist_ok=True)
    segments = sorted(state["segment_pop"])
    np.savez_compressed(
        directory / "arrays.npz",
        cooc=state["cooc"],
        global_pop=state["global_pop"],
        segment_pop=np.stack([state["segment_pop"][s] for s in segments]) if segments else np.zeros((0, 0)),
    )
    meta = {"item_ids": state["item_ids"], "titles": state["titles"], "segments": segments}
    (directory / "meta.json").write_text(json.dumps(meta))


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: fit and report the model directory as the checkpoint."""
    from training.ray_job import report_directory

    def write(directory: Path) -> dict[str, float]:
        state = fit(config["events"], config["segments"], config["items"])
        save(state, directory)
        return {"items": float(len(state["item_ids"])), "interactions": float(len(config["events"]))}

    report_directory(write)


def train(settings: Settings, dataset: RecommendDataset) -> Recommender:
    """Fit the model in a Ray Train job and return the loaded predictor (its files in ``model_dir``)."""
    from training import ray_job

    output = settings.home_dir / "models" / FAMILY / f"as_of={dataset.as_of}"
    config = {"events": dataset.events, "segments": dataset.segments, "items": dataset.items}
    model_dir, _ = ray_job.run(settings, f"{FAMILY}-{dataset.as_of}", _train_loop, config, output)
    return Recommender.from_directory(model_dir)


class Recommender(mlflow.pyfunc.PythonModel):
    """Scores every catalog item for a customer from their segment and recent items; explains each pick."""

    def __init__(self) -> None:
        self.model_dir_: Path | None = None

    @classmethod
    def from_directory(cls, directory: Path) -> Recommender:
        model = cls()
        model._load(Path(directory))
        return model

    def load_context(self, context: Any) -> None:
        self._load(Path(context.artifacts["model_dir"]))

    def _load(self, directory: Path) -> None:
        arrays = np.load(directory / "arrays.npz")
        meta = json.loads((directory / "meta.json").read_text())
        self.model_dir_ = directory
        self.item_ids_: list[str] = meta["item_ids"]
        self.titles_: list[str] = meta["titles"]
        self.index_ = {item: i for i, item in enumerate(self.item_ids_)}
        self.cooc_ = arrays["cooc"]
        self.global_pop_ = arrays["global_pop"]
        self.segment_pop_ = dict(zip(meta["segments"], arrays["segment_pop"], strict=True))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list:
        """pyfunc entry point: one recommendation list per row of (segment, recent_items)."""
        k = int((params or {}).get("k", 10))
        return [
            self.recommend(row.get(C.segment), row.get(F.recent_items), k) for row in model_input.to_dict("records")
        ]

    def recommend(
        self, segment: str | None, recent_items: list[str] | None, k: int, exclude: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """The top ``k`` distinct items with a score and a one-line reason each."""
        recent = [self.index_[i] for i in (recent_items or []) if i in self.index_]
        pop = self.segment_pop_.get(segment or "", self.global_pop_)
        pop_score = pop / (pop.max() or 1.0)
        cooc_score = np.zeros(len(self.item_ids_))
        best_anchor = np.full(len(self.item_ids_), -1)
        if recent:
            weights = 1.0 / (1.0 + np.arange(len(recent)))
            contrib = self.cooc_[recent] * weights[:, None]
            cooc_score = contrib.sum(axis=0)
            best_anchor = np.asarray(recent)[contrib.argmax(axis=0)]
            cooc_score = cooc_score / (cooc_score.max() or 1.0)
        score = cooc_score + 0.5 * pop_score + 1e-3 * self.global_pop_ / (self.global_pop_.max() or 1.0)
        if exclude:
            score[[self.index_[i] for i in exclude if i in self.index_]] = -np.inf
        top = np.argsort(-score, kind="stable")[:k]
        return [
            self._explain(int(i), float(score[i]), cooc_score[i], 0.5 * pop_score[i], best_anchor[i], segment)
            for i in top
            if np.isfinite(score[i])
        ]

    def _explain(self, i: int, score: float, cooc: float, pop: float, anchor: int, segment: str | None) -> dict:
        if cooc >= pop and anchor >= 0:
            reason = f"often bought with {self.titles_[anchor] or self.item_ids_[anchor]}, which you looked at recently"
        elif segment and segment in self.segment_pop_:
            reason = f"popular with {segment} customers this month"
        else:
            reason = "popular with customers this month"
        return {C.item_id: self.item_ids_[i], "score": round(score, 6), C.title: self.titles_[i], "reason": reason}


def _hit_metrics(recs: dict[str, list[str]], truth: dict[str, set[str]], k: int) -> dict[str, float]:
    hits = [len(set(recs.get(u, [])[:k]) & items) for u, items in truth.items()]
    recall = [h / min(k, len(truth[u])) for h, u in zip(hits, truth, strict=True)]
    return {f"hit_rate_at_{k}": float(np.mean([h > 0 for h in hits])), f"recall_at_{k}": float(np.mean(recall))}


def evaluate(model: Recommender, dataset: RecommendDataset, k: int = 10) -> dict[str, dict[str, float]]:
    """Hit rate and recall@k on the held-out day, for the model and the global popularity baseline."""
    truth = dataset.eval_purchases.groupby(C.customer_id)[C.item_id].agg(set).to_dict()
    if not truth:
        raise ValueError(f"no purchases on {dataset.as_of} to evaluate on")
    features = dataset.eval_features.set_index(C.customer_id)
    recs = {}
    for customer in truth:
        row = features.loc[customer] if customer in features.index else None
        segment = row[C.segment] if row is not None and isinstance(row[C.segment], str) else None
        recent = list(row[F.recent_items]) if row is not None and row[F.recent_items] is not None else []
        recs[customer] = [r[C.item_id] for r in model.recommend(segment, recent, k)]
    popular = [model.item_ids_[i] for i in np.argsort(-model.global_pop_, kind="stable")[:k]]
    return {
        "model": {**_hit_metrics(recs, truth, k), "users": float(len(truth))},
        "popularity": _hit_metrics(dict.fromkeys(truth, popular), truth, k),
    }
