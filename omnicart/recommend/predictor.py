"""The recommend family's predictor: the fitted ``RecSys`` and every customer's purchase history at the training cut,
so a request needs only the customer id. Serving loads it from the registry (an MLflow pyfunc)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from omnicart.recommend import HISTORIES_FILE, candidates, fastpath, ranker, recsys
from omnicart.schemas import ALL_CHANNELS, C, F, windowed

HISTORY_COLUMNS = (C.customer_id, C.item_id, C.event_timestamp, C.quantity, C.price, C.order_id, C.channel)
# the customer in the request's channel (view customer_channel, in recommend_v2); its "all" row without a channel
CUSTOMER_FEATURES = (F.recency_days, windowed(F.frequency, 30), windowed(F.frequency, 90), windowed(F.monetary, 90))
log = logging.getLogger(__name__)
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
        history.to_parquet(directory / HISTORIES_FILE, index=False)
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
        self.fast_: fastpath.FastPath | None = None  # ``prepare`` makes it
        self.model_ = recsys.RecSys.load(directory / "recsys")
        self.histories_ = pd.read_parquet(directory / HISTORIES_FILE)
        self.rows_ = self.histories_.groupby(C.customer_id).indices

    @property
    def cut(self) -> pd.Timestamp:
        return self.model_.now_

    def use_item_features(self, source: recsys.ItemFeatures | None) -> None:
        """Where the ranker's Feast item features are read: the offline store in evaluation, online in serving."""
        self.model_.use_item_features(source)
        self.fast_ = None  # ranked with other features

    def use_customer_features(self, source: recsys.CustomerFeatures | None) -> None:
        """Where the ranker's Feast customer × channel features are read (offline in evaluation, online serving)."""
        self.model_.use_customer_features(source)
        self.fast_ = None

    def knows(self, customer_id: str) -> bool:
        """Whether the customer bought anything before the training cut."""
        return customer_id in self.rows_

    def known_item(self, item_id: str) -> bool:
        """Whether the item is in the catalog the model was trained with (sold, or new with content)."""
        return item_id in self.model_.state_.index or item_id in self.model_.cold_items_

    def history(self, customer_id: str, recent_items: Iterable[str] = ()) -> pd.DataFrame:
        """The customer's purchases at the training cut, plus ``recent_items`` (one event each, at the cut)."""
        rows = self.rows_.get(customer_id)
        own = self.histories_.iloc[rows] if rows is not None else self.histories_.iloc[:0]
        recent = [i for i in dict.fromkeys(map(str, recent_items)) if i in self.model_.state_.index]
        if not recent:
            return own
        extra = pd.DataFrame(
            {C.customer_id: customer_id, C.item_id: recent, C.event_timestamp: self.cut - pd.Timedelta(seconds=1)}
        )
        return pd.concat([own, extra], ignore_index=True)

    def prepare(
        self,
        top: int = fastpath.TOP,
        chunk: int | None = None,
        recent_of: Callable[[list[str]], list[list[str]]] | None = None,
        newcomers: Iterable[str] = (),
    ) -> None:
        """Precompute every known customer's ranking (``omnicart.recommend.fastpath``) with the feature sources now
        in use: serving calls it once at start, after ``use_item_features`` and ``use_customer_features``.
        ``recent_of``: each customer's online ``recent_items`` now (a list per id), so a customer whose recent items
        are unchanged at request time gets the fast path too. ``newcomers``: customers without a purchase before
        the cut (e.g. active since it); those whose recent items (read with ``recent_of``) reach the model get a
        precomputed ranking of those items too, else their first request ranks live. When the item features cannot
        be read, requests keep the live path."""
        if self.fast_ is not None:  # already made with the sources in use (``use_*`` drop it)
            return
        started = time.perf_counter()
        model = self.model_
        items = model.pin_item_features()
        if model.extra_features_ and items is None:
            log.warning("item features unavailable: no precomputed rankings, every request takes the live path")
            return
        touched = self._touched_now(recent_of, newcomers) if recent_of is not None else None
        rows_of = self.rows_
        if touched is not None:  # the newcomers ranked: their history is what they touched, nothing bought
            nothing = np.zeros(0, np.int64)
            rows_of = {**rows_of, **{c: nothing for c in touched if c not in rows_of}}
        self.fast_ = fastpath.build(
            model, self.histories_, rows_of, top=top, chunk=chunk, item_values=items, touched=touched
        )
        for booster in (b for name in ranker.BOOSTERS for b in model.boosters_[name]):
            booster.set_param({"nthread": 1})  # a request scores a few hundred rows at most: threads only contend
        log.info(
            "precomputed the rankings of %d customers in %.1f s: %.1f MB",
            len(self.fast_.customers),
            time.perf_counter() - started,
            self.fast_.nbytes / 2**20,
        )

    def _touched_now(
        self, recent_of: Callable[[list[str]], list[list[str]]], newcomers: Iterable[str] = (), block: int = 1000
    ) -> dict[str, list[str]]:
        """Per known customer and newcomer, the recent items ``recent_of`` gives now that join their history
        (``_touched``); newcomers without any are left out."""
        index = self.model_.state_.index
        codes = self.histories_[C.item_id].map(index).to_numpy()
        customers = list(self.rows_) + [c for c in dict.fromkeys(map(str, newcomers)) if c not in self.rows_]
        nothing = np.zeros(0, np.int64)
        out: dict[str, list[str]] = {}
        for start in range(0, len(customers), block):
            ids = customers[start : start + block]
            for cid, recent in zip(ids, recent_of(ids), strict=True):
                if recent:
                    rows = self.rows_.get(cid)
                    owned = nothing
                    if rows is not None:
                        owned = codes[rows]
                        owned = owned[~np.isnan(owned)].astype(np.int64)
                    touched = self._touched(cid, recent, owned)
                    if touched:
                        out[cid] = touched
        return out

    def _touched(self, customer_id: str, recent_items: Iterable[str], owned: np.ndarray | None) -> list[str]:
        """The recent items that add to the customer's history: known to the model and not bought before the cut
        (``owned``: the codes of what they bought; None: look it up). Those they already bought are in it."""
        index = self.model_.state_.index
        codes = [index[i] for i in dict.fromkeys(map(str, recent_items)) if i in index]
        if not codes:
            return []
        if owned is None:
            rows = self.rows_.get(customer_id)
            bought = set(self.histories_[C.item_id].to_numpy()[rows].tolist()) if rows is not None else set()
            owned = np.array([index[i] for i in bought if i in index], dtype=np.int64)
        return [self.model_.state_.item_ids[c] for c in codes if c not in set(owned.tolist())]

    def recommend(
        self,
        customer_id: str,
        k: int = 10,
        *,
        recent_items: Iterable[str] = (),
        context_item: str | None = None,
        exclude: Iterable[str] = (),
        discover: bool = False,
        channel: str | None = None,
        new_items: int = 0,
        select: recsys.Select | None = None,
    ) -> list[dict[str, Any]]:
        """``k`` ranked, explained items for a customer (known by id, or by the items they touched), in ``channel``
        (default: the channel of their latest order), then up to ``new_items`` new ones.

        ``recent_items``: items the customer touched lately; those they had not bought before the cut join their
        history. ``context_item``: the item they look at now, always joined to it. ``new_items``: slots for
        catalog items without sales. ``select``: the caller's rules (see ``RecSys.answer``).

        A known customer's ranking comes from the precomputed fast path (``prepare``) whenever it is the one the
        live path would compute: no context item, the same recent items as when it was made, no ``discover``, no
        new-item slots, their usual channel, and the same online customer features as when it was made; else the
        live path ranks."""
        exclude = set(map(str, exclude))
        fast = self.fast_
        hit = fast.lookup(customer_id, channel) if fast is not None else None
        owned = None  # what they bought before the cut: the stored ranking's history without its recent items
        if hit is not None:
            stored = [self.model_.state_.index[i] for i in hit.touched]
            owned = np.setdiff1d(hit.ranked.owned, stored) if stored else hit.ranked.owned
        touched = self._touched(customer_id, recent_items, owned)
        if context_item is not None:
            touched = list(dict.fromkeys([str(context_item), *touched]))
        table = None
        if hit is not None and context_item is None and touched == hit.touched and not (discover or new_items):
            table = self.model_.customer_table(np.array([customer_id]), [hit.ranked.channel], self.cut)
            same = table is None or np.array_equal(table[0], hit.customer_values, equal_nan=True)
            if same and (hit.complete or _covers(self.model_, hit.ranked, k, exclude)):
                return self.model_.answer(hit.ranked, k, exclude, select)
        history = self.history(customer_id, touched)
        context = {"now": self.cut, "discover": discover, "channel": channel, "new_items": new_items}
        # a table read above is this history's in this channel: the live path need not read it again
        return self.model_.recommend(
            history, k=k + new_items, exclude=exclude, context=context, select=select, customer_table=table
        )

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


def _covers(model: recsys.RecSys, ranked: recsys.Ranked, k: int, exclude: set[str]) -> bool:
    """Whether a stored (partial) ranking still holds ``k`` items outside ``exclude``: then its answer is the live
    path's."""
    ids = model.state_.item_ids[ranked.codes]
    return sum(1 for i in ids.tolist() if i not in exclude) >= k
