"""The recommend family's predictor: the fitted ``RecSys`` and every customer's purchase history at the training cut,
so a request needs only the customer id. Serving loads it from the registry (an MLflow pyfunc)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from omnicart.recommend import candidates, recsys
from omnicart.schemas import ALL_CHANNELS, C, F, windowed

HISTORY_COLUMNS = (C.customer_id, C.item_id, C.event_timestamp, C.quantity, C.price, C.order_id, C.channel)
# the customer in the request's channel (view customer_channel, in recommend_v2); its "all" row without a channel
CUSTOMER_FEATURES = (F.recency_days, windowed(F.frequency, 30), windowed(F.frequency, 90), windowed(F.monetary, 90))
CUSTOMER_REFS = tuple(f"{F.customer_channel_view}:{name}" for name in CUSTOMER_FEATURES)


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
