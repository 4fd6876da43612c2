"""Candidates from several sources, and the features the ranker scores them on.

At a cut time ``now`` the catalog side is fitted once (``ItemState``: popularity and its trend, repurchase rates,
EASE and basket co-occurrence, text embeddings, categories). A batch of users is then described by their history
before ``now``; each user's candidates are the union of their own purchases (repeat source), the top items of EASE,
co-occurrence with their recent baskets, the two-tower model and recent popularity. Every (user, candidate) pair gets
one row of features (``FEATURES``): the same function serves training (labels added by the caller), the benchmark
and a single request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omnicart.recommend import item2item
from omnicart.schemas import C
from omnicart.text import DIM

DAY = pd.Timedelta(days=1)
USER, ITEM = "u", "i"  # integer codes of the batch's users and of the catalog's items

# Feature names, grouped by the reason family an explanation reports for them (see ranker.REASONS).
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "repeat": (
        "ui_orders",
        "ui_qty",
        "ui_days_since_last",
        "ui_days_since_first",
        "ui_decay30",
        "ui_decay180",
        "ui_cycle",
        "ui_due",
        "ui_share",
        "ui_in_last_order",
        "ui_due_item",
        "ui_rate",
        "ui_orders_since",
        "ui_last5",
        "ui_orders_rank",
        "ui_recency_rank",
        "ui_decay_rank",
        "ui_repeat_rank",
    ),
    "user": (
        "u_orders",
        "u_items",
        "u_days_since_last",
        "u_tenure",
        "u_rate",
        "u_repeat_share",
        "u_new_share",
        "u_due",
        "u_orders_90d",
    ),
    "popular": ("i_buyers", "i_buyers_30d", "i_buyers_90d", "pop_rank"),
    "trend": (
        "i_buyers_7d",
        "i_buyers_14d",
        "i_trend",
        "i_trend7",
        "trend_rank",
        "i_returning_30d",
        "i_new_30d",
        "i_returning_share",
    ),
    "item": ("i_repurchase", "i_cycle", "i_age", "i_days_since_sale", "i_logprice"),
    "together": ("ease", "ease_rank", "cooc", "cooc_rank", "ease_max"),
    "similar": ("tt", "tt_rank", "text_sim", "text_rank", "text_max_sim", "n_variants_owned"),
    "price": ("price_fit",),
    "category": ("cat_affinity",),
}
FEATURES: tuple[str, ...] = tuple(f for group in FEATURE_GROUPS.values() for f in group)
# The request's channel (where the customer is now): how much the item sells there, how much of the customer's
# buying of it and of everything happened there. A model uses them only when its events name two or more channels:
# without channels they are constant, and a constant column would only reshuffle the ranker's column sampling.
CHANNEL_GROUP = "channel"
CHANNEL_FEATURES: tuple[str, ...] = ("ch_item_lift", "ch_ui_share", "ch_user_share")
REASON_GROUPS: tuple[str, ...] = (*FEATURE_GROUPS, CHANNEL_GROUP)
FEATURE_GROUP = {f: g for g, fs in FEATURE_GROUPS.items() for f in fs} | dict.fromkeys(CHANNEL_FEATURES, CHANNEL_GROUP)
CHANNEL_WINDOW_DAYS = 90  # the item's channel mix is read over this many days before the cut
CUSTOMER_PREFIX = "cc_"  # features of the customer in the context channel read from outside (Feast customer_channel)


@dataclass(frozen=True)
class CandidateParams:
    """How many items each source contributes per user."""

    n_history: int = 1000  # in effect all: most repeat-aware truth is a past item, so none is left out
    n_ease: int = 100
    n_cooc: int = 40
    n_two_tower: int = 40
    n_text: int = 20
    n_popular: int = 30


def normalize_events(events: pd.DataFrame) -> pd.DataFrame:
    """Canonical purchase events with the columns this module reads; quantity 1 and one order per customer-day
    where the input does not say."""
    missing = [c for c in (C.customer_id, C.item_id, C.event_timestamp) if c not in events.columns]
    if missing:
        raise ValueError(f"interactions need columns {missing}")
    df = events[
        [
            c
            for c in (C.customer_id, C.item_id, C.event_timestamp, C.quantity, C.price, C.order_id, C.channel)
            if c in events
        ]
    ]
    df = df.copy()
    if C.channel in df:
        df[C.channel] = df[C.channel].fillna("").astype(str)
    df[C.event_timestamp] = pd.to_datetime(df[C.event_timestamp], utc=True)
    df[C.item_id] = df[C.item_id].astype(str)
    if C.quantity not in df:
        df[C.quantity] = 1.0
    df[C.quantity] = pd.to_numeric(df[C.quantity], errors="coerce").fillna(1.0).clip(lower=0.0)
    if C.price not in df:
        df[C.price] = np.nan
    if C.order_id not in df:
        df[C.order_id] = df[C.customer_id].astype(str) + "@" + df[C.event_timestamp].dt.strftime("%Y-%m-%d")
    df[C.order_id] = df[C.order_id].astype(str)
    return df.reset_index(drop=True)


def _kmeans_categories(text: np.ndarray, seed: int) -> np.ndarray:
    """Categories for a catalog that has none: clusters of the items' text embeddings."""
    from sklearn.cluster import KMeans

    n = len(text)
    k = int(np.clip(n // 80, 2, 48))
    if n <= k:
        return np.arange(n)
    return KMeans(n_clusters=k, n_init=2, random_state=seed).fit_predict(text)


@dataclass
class ItemState:
    """The catalog side of the candidate model, fitted on the events before ``now``."""

    now: pd.Timestamp
    item_ids: np.ndarray  # str, the items seen in training (ranked); codes are positions
    titles: list[str]
    stats: pd.DataFrame  # one row per item, the i_* features
    categories: np.ndarray  # int code per item
    category_names: list[str]
    ease: item2item.ItemMatrix  # item×item: dense, or sparse past item2item.DENSE_ITEMS items
    cooc: item2item.ItemMatrix  # item×item, likewise
    text: np.ndarray  # item × DIM (omnicart.text)
    ease_lambda: float
    channels: list[str] = field(default_factory=list)  # the channels the events name, when two or more
    channel_lines: np.ndarray | None = None  # item×channel purchase lines of the last CHANNEL_WINDOW_DAYS
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {item: n for n, item in enumerate(self.item_ids.tolist())}

    # --- fit ----------------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        events: pd.DataFrame,
        items: pd.DataFrame | None,
        now: pd.Timestamp,
        text_of: dict[str, np.ndarray],
        ease_lambda: float,
        seed: int = 0,
    ) -> ItemState:
        """``events`` are normalised purchases before ``now``; ``text_of`` maps item id → text embedding."""
        ev = events[events[C.event_timestamp] < now]
        item_ids = items_before(ev, now)
        index = {item: n for n, item in enumerate(item_ids.tolist())}
        code = ev[C.item_id].map(index).to_numpy()
        users, ucode = np.unique(ev[C.customer_id].to_numpy(), return_inverse=True)
        age = ((now - ev[C.event_timestamp]) / DAY).to_numpy()
        n = len(item_ids)

        def buyers(mask: np.ndarray) -> np.ndarray:
            """Share of the window's active customers who bought each item: shares, unlike counts, keep their
            meaning from a quiet month to the Christmas rush, so the ranker's thresholds transfer across seasons."""
            pairs = np.unique(np.stack([code[mask], ucode[mask]]), axis=1)
            active = max(len(np.unique(ucode[mask])), 1)
            return (np.bincount(pairs[0], minlength=n) / active).astype(np.float32)

        orders_per_pair = ev.groupby([C.item_id, C.customer_id])[C.order_id].nunique()
        span = ev.groupby([C.item_id, C.customer_id])[C.event_timestamp].agg(["min", "max"])
        gaps = (span["max"] - span["min"]) / DAY / (orders_per_pair - 1).where(orders_per_pair >= 2)
        cycle = gaps.groupby(level=0).median().reindex(item_ids).to_numpy()
        rebuy = (orders_per_pair >= 2).groupby(level=0).mean().reindex(item_ids).to_numpy()
        first = ev.groupby(C.item_id)[C.event_timestamp].min().reindex(item_ids)
        last = ev.groupby(C.item_id)[C.event_timestamp].max().reindex(item_ids)
        all_b = buyers(np.ones(len(ev), bool))
        b7, b14, b30, b90 = buyers(age < 7), buyers(age < 14), buyers(age < 30), buyers(age < 90)
        # buyers of the last 30 days who had bought the item before them (returning) or not (new)
        first_buy = ev.groupby([C.item_id, C.customer_id])[C.event_timestamp].transform("min")
        returning = buyers((age < 30) & ((now - first_buy) / DAY >= 30).to_numpy())
        catalog = _catalog(items, item_ids, ev)
        stats = pd.DataFrame(
            {
                "i_buyers": all_b,
                "i_buyers_7d": b7,
                "i_buyers_14d": b14,
                "i_buyers_30d": b30,
                "i_buyers_90d": b90,
                "i_trend": (b30 + 1e-3) / (b90 + 1e-3),
                "i_trend7": (b7 + 1e-3) / (b30 + 1e-3),
                "i_returning_30d": returning,
                "i_new_30d": b30 - returning,
                "i_returning_share": returning / np.maximum(b30, 1e-6),
                "i_repurchase": rebuy.astype(np.float32),
                "i_cycle": cycle.astype(np.float32),
                "i_age": ((now - first) / DAY).to_numpy(np.float32),
                "i_days_since_sale": ((now - last) / DAY).to_numpy(np.float32),
                "i_logprice": np.log(catalog[C.price].to_numpy(np.float64)).astype(np.float32),
            }
        )
        x = sp.csr_matrix((np.ones(len(ev), np.float32), (ucode, code)), shape=(len(users), n))
        x.data[:] = 1.0
        _, ocode = np.unique(ev[C.order_id].to_numpy(), return_inverse=True)
        baskets = sp.csr_matrix((np.ones(len(ev), np.float32), (ocode, code)), shape=(ocode.max() + 1, n))
        text = np.stack([text_of.get(i, np.zeros(DIM, np.float32)) for i in item_ids.tolist()]).astype(np.float32)
        channels, channel_lines = _channel_lines(ev, code, age, n)
        cats = catalog[C.category].fillna("").astype(str)
        if (cats != "").mean() >= 0.5:
            category_names = sorted(set(cats))
            categories = cats.map({c: k for k, c in enumerate(category_names)}).to_numpy()
        else:
            categories = _kmeans_categories(text, seed)
            category_names = [
                _cluster_name(catalog[C.title].to_numpy()[categories == k]) for k in range(categories.max() + 1)
            ]
        return cls(
            now=now,
            item_ids=item_ids,
            titles=catalog[C.title].fillna("").astype(str).tolist(),
            stats=stats,
            categories=np.asarray(categories, dtype=np.int64),
            category_names=category_names,
            ease=_as_saved(item2item.ease(x, ease_lambda)),
            cooc=_as_saved(item2item.cooccurrence(baskets)),
            text=_as_saved(text),
            ease_lambda=float(ease_lambda),
            channels=channels,
            channel_lines=channel_lines,
        )

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            directory / "items.npz",
            **_matrix_arrays("ease", self.ease),
            **_matrix_arrays("cooc", self.cooc),
            text=self.text.astype(np.float16),
            categories=self.categories,
            stats=self.stats.to_numpy(np.float32),
            **({"channel_lines": self.channel_lines} if self.channels else {}),
        )
        meta = {
            "now": self.now.isoformat(),
            "item_ids": self.item_ids.tolist(),
            "titles": self.titles,
            "category_names": self.category_names,
            "stats_columns": list(self.stats.columns),
            "ease_lambda": self.ease_lambda,
            "channels": self.channels,
        }
        (directory / "items.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> ItemState:
        meta = json.loads((directory / "items.json").read_text())
        with np.load(directory / "items.npz") as a:
            return cls(
                now=pd.Timestamp(meta["now"]),
                item_ids=np.array(meta["item_ids"], dtype=object),
                titles=meta["titles"],
                stats=pd.DataFrame(a["stats"], columns=meta["stats_columns"]),
                categories=a["categories"],
                category_names=meta["category_names"],
                ease=_matrix_of("ease", a),
                cooc=_matrix_of("cooc", a),
                text=a["text"].astype(np.float32),
                ease_lambda=meta["ease_lambda"],
                channels=meta.get("channels", []),  # a model saved before channels knew none
                channel_lines=a["channel_lines"] if "channel_lines" in a.files else None,
            )


def items_before(events: pd.DataFrame, now: pd.Timestamp) -> np.ndarray:
    """The items bought before ``now``, sorted: the codes of a catalog state fitted at ``now``."""
    return np.array(sorted(events.loc[events[C.event_timestamp] < now, C.item_id].unique()), dtype=object)


def _as_saved(matrix: item2item.ItemMatrix) -> item2item.ItemMatrix:
    """The matrix at the precision ``save`` stores it (float16): the fitted model ranks exactly as the saved one
    will, so what the benchmark and the evaluation measure is what serving answers."""
    if sp.issparse(matrix):
        matrix = matrix.copy()
        matrix.data = matrix.data.astype(np.float16).astype(np.float32)
        return matrix
    return matrix.astype(np.float16).astype(np.float32)


def _matrix_arrays(name: str, matrix: item2item.ItemMatrix) -> dict[str, np.ndarray]:
    """An item×item matrix as NPZ arrays (float16): dense as one array, sparse as its CSR parts."""
    if not sp.issparse(matrix):
        return {name: matrix.astype(np.float16)}
    return {
        f"{name}_data": matrix.data.astype(np.float16),
        f"{name}_indices": matrix.indices,
        f"{name}_indptr": matrix.indptr,
        f"{name}_shape": np.asarray(matrix.shape),
    }


def _matrix_of(name: str, arrays: Any) -> item2item.ItemMatrix:
    if name in arrays.files:
        return arrays[name].astype(np.float32)
    parts = (arrays[f"{name}_data"].astype(np.float32), arrays[f"{name}_indices"], arrays[f"{name}_indptr"])
    return sp.csr_matrix(parts, shape=tuple(arrays[f"{name}_shape"]))


def _channel_lines(ev: pd.DataFrame, code: np.ndarray, age: np.ndarray, n: int) -> tuple[list[str], np.ndarray | None]:
    """The channels the events name (none unless two or more) and each item's purchase lines per channel over the
    last ``CHANNEL_WINDOW_DAYS``."""
    if C.channel not in ev:
        return [], None
    channels = sorted(set(ev[C.channel].unique()) - {""})
    if len(channels) < 2:
        return [], None
    recent = age < CHANNEL_WINDOW_DAYS
    ch = pd.Categorical(ev[C.channel].to_numpy()[recent], categories=channels).codes
    lines = np.zeros((n, len(channels)), np.float32)
    np.add.at(lines, (code[recent][ch >= 0], ch[ch >= 0]), 1.0)
    return channels, lines


def _catalog(items: pd.DataFrame | None, item_ids: np.ndarray, ev: pd.DataFrame) -> pd.DataFrame:
    """Title, category and price of each item: the catalog where given, else what the events say."""
    out = pd.DataFrame(index=pd.Index(item_ids, name=C.item_id))
    if items is not None and len(items):
        cat = items.drop_duplicates(C.item_id).set_index(C.item_id)
        for column in (C.title, C.category, C.price):
            if column in cat:
                out[column] = cat[column].reindex(item_ids).to_numpy()
    for column in (C.title, C.category):
        if column not in out:
            out[column] = ""
        out[column] = out[column].fillna("").astype(str)
    paid = ev[ev[C.price] > 0].groupby(C.item_id)[C.price].median() if ev[C.price].notna().any() else None
    price = pd.to_numeric(out[C.price], errors="coerce") if C.price in out else pd.Series(np.nan, index=out.index)
    if paid is not None:
        price = price.fillna(paid.reindex(item_ids))
    price = price.where(price > 0)
    out[C.price] = price.fillna(price.median() if price.notna().any() else 1.0)
    return out


def _cluster_name(titles: np.ndarray) -> str:
    """A readable name for a text cluster: its two most frequent title words."""
    words = pd.Series(" ".join(map(str, titles)).lower().split())
    words = words[words.str.len() > 3]
    top = words.value_counts().index[:2].tolist()
    return " / ".join(top) if top else "similar items"


# --- one batch of users --------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A batch of users described at ``now``: their codes, history matrices and per-user features."""

    users: np.ndarray  # customer ids, position = user code
    pairs: pd.DataFrame  # history aggregates per (u, i)
    user_stats: pd.DataFrame  # indexed by u
    binary: sp.csr_matrix  # u × i, bought before now
    decay: sp.csr_matrix  # u × i, recency-weighted purchase orders (half-life 30 days)
    # orders per (u, i, channel) and per (u, channel), and each user's latest channel; None without channels
    channel_pairs: pd.Series | None = None
    user_channels: pd.Series | None = None
    last_channel: pd.Series | None = None


def describe(events: pd.DataFrame, state: ItemState, now: pd.Timestamp, users: np.ndarray | None = None) -> Batch:
    """History features of each user at ``now`` from their normalised events (only items ``state`` knows count)."""
    ev = events[(events[C.event_timestamp] < now)]
    if users is None:
        users = np.array(sorted(ev[C.customer_id].unique()))
    ucode = {u: n for n, u in enumerate(users.tolist())}
    ev = ev[ev[C.customer_id].isin(ucode) & ev[C.item_id].isin(state.index)]
    ev = ev.assign(**{USER: ev[C.customer_id].map(ucode).to_numpy(), ITEM: ev[C.item_id].map(state.index).to_numpy()})
    age = ((now - ev[C.event_timestamp]) / DAY).astype(np.float32)
    # one line per (user, item, order): a basket holds an item once
    with_channel = bool(state.channels) and C.channel in ev
    lines = (
        ev.assign(age=age)
        .groupby([USER, ITEM, C.order_id], sort=False)
        .agg(
            age=("age", "min"),
            qty=(C.quantity, "sum"),
            price=(C.price, "median"),
            **({"channel": (C.channel, "first")} if with_channel else {}),
        )
        .reset_index()
    )
    lines["d30"] = np.exp(-lines["age"] * (np.log(2) / 30.0))
    lines["d180"] = np.exp(-lines["age"] * (np.log(2) / 180.0))
    # recency in the user's own clock: 0 = the user's latest order
    order_age = lines.groupby([USER, C.order_id], sort=False)["age"].min()
    order_rank = order_age.groupby(level=0).rank(method="dense").sub(1.0)
    lines["order_rank"] = order_rank.reindex(pd.MultiIndex.from_frame(lines[[USER, C.order_id]])).to_numpy()
    lines["in_last5"] = (lines["order_rank"] < 5).astype(np.float32)
    g = lines.groupby([USER, ITEM], sort=False)
    pairs = g.agg(
        ui_orders_since=("order_rank", "min"),
        ui_last5=("in_last5", "sum"),
        ui_orders=(C.order_id, "size"),
        ui_qty=("qty", "sum"),
        ui_days_since_last=("age", "min"),
        ui_days_since_first=("age", "max"),
        ui_decay30=("d30", "sum"),
        ui_decay180=("d180", "sum"),
    ).reset_index()
    pairs["ui_lines"] = (
        ev.groupby([USER, ITEM]).size().reindex(pd.MultiIndex.from_frame(pairs[[USER, ITEM]])).to_numpy()
    )
    span = pairs["ui_days_since_first"] - pairs["ui_days_since_last"]
    pairs["ui_cycle"] = np.where(pairs["ui_orders"] >= 2, span / (pairs["ui_orders"] - 1).clip(lower=1), np.nan)
    pairs["ui_due"] = pairs["ui_days_since_last"] / pairs["ui_cycle"].clip(lower=1.0)
    pairs["ui_qty"] = np.log1p(pairs["ui_qty"])
    pairs["ui_rate"] = pairs["ui_orders"] / (pairs["ui_days_since_first"] + 30.0)
    pairs["ui_due_item"] = pairs["ui_days_since_last"] / np.nan_to_num(
        state.stats["i_cycle"].to_numpy()[pairs[ITEM].to_numpy()], nan=60.0
    ).clip(min=1.0)
    # the user's most recent order, and how much of the recent buying was new to the user
    last_age = lines.groupby(USER)["age"].transform("min")
    pairs["ui_in_last_order"] = (
        (lines["age"] == last_age)
        .groupby([lines[USER], lines[ITEM]])
        .any()
        .reindex(pd.MultiIndex.from_frame(pairs[[USER, ITEM]]))
        .to_numpy(np.float32)
    )
    first_age = lines.groupby([USER, ITEM])["age"].transform("max")
    recent = lines["age"] < 90
    new_share = (lines["age"] == first_age)[recent].groupby(lines[USER][recent]).mean()

    orders = lines.groupby(USER).agg(
        u_orders=(C.order_id, "nunique"), u_days_since_last=("age", "min"), u_tenure=("age", "max")
    )
    n_users = len(users)
    user_stats = pd.DataFrame(index=pd.RangeIndex(n_users, name=USER))
    user_stats = user_stats.join(orders)
    user_stats["u_items"] = pairs.groupby(USER).size()
    user_stats["u_rate"] = user_stats["u_orders"] / (user_stats["u_tenure"].clip(lower=1.0) / 30.0)
    user_stats["u_repeat_share"] = (pairs["ui_orders"] >= 2).groupby(pairs[USER]).mean()
    user_stats["u_new_share"] = new_share
    recent_orders = lines[lines["age"] < 90].groupby(USER)[C.order_id].nunique()
    user_stats["u_orders_90d"] = recent_orders.reindex(user_stats.index).fillna(0.0)
    gap = (user_stats["u_tenure"] - user_stats["u_days_since_last"]) / (user_stats["u_orders"] - 1).where(
        user_stats["u_orders"] >= 2
    )
    user_stats["u_due"] = user_stats["u_days_since_last"] / gap.clip(lower=1.0)
    catalog_price = np.exp(state.stats["i_logprice"].to_numpy()[lines[ITEM].to_numpy()])
    price = np.log(lines["price"].where(lines["price"] > 0, catalog_price))
    user_stats["u_logprice_mean"] = price.groupby(lines[USER]).mean()
    user_stats["u_logprice_std"] = price.groupby(lines[USER]).std().fillna(0.0)
    pairs["ui_share"] = pairs["ui_orders"] / user_stats["u_orders"].to_numpy()[pairs[USER]]
    pairs["ui_last5"] = pairs["ui_last5"] / user_stats["u_orders"].clip(upper=5).to_numpy()[pairs[USER]]

    shape = (n_users, len(state.item_ids))
    u, i = pairs[USER].to_numpy(), pairs[ITEM].to_numpy()
    binary = sp.csr_matrix((np.ones(len(pairs), np.float32), (u, i)), shape=shape)
    decay = sp.csr_matrix((pairs["ui_decay30"].to_numpy(np.float32), (u, i)), shape=shape)
    batch = Batch(users=users, pairs=pairs, user_stats=user_stats, binary=binary, decay=decay)
    if with_channel:
        batch.channel_pairs = lines.groupby([USER, ITEM, "channel"]).size()
        orders = lines.drop_duplicates([USER, C.order_id])
        batch.user_channels = orders.groupby([USER, "channel"]).size()
        batch.last_channel = orders.sort_values("age", kind="stable").drop_duplicates(USER).set_index(USER)["channel"]
    return batch


def _closest_owned(df: pd.DataFrame, batch: Batch, state: ItemState) -> tuple[np.ndarray, ...]:
    """Per candidate, against the other items the user owns: the highest text cosine (a colour or size variant of
    something they buy scores near 1), how many owned items are near-duplicates (cosine ≥ 0.85), and the strongest
    single EASE link."""
    text_max = np.full(len(df), np.nan, np.float32)
    variants = np.zeros(len(df), np.float32)
    ease_max = np.full(len(df), np.nan, np.float32)
    rows_of = df.groupby(USER, sort=False).indices
    indptr, indices = batch.binary.indptr, batch.binary.indices
    cand_items = df[ITEM].to_numpy()
    for u, rows in rows_of.items():
        owned = indices[indptr[u] : indptr[u + 1]]
        items = cand_items[rows]
        same = items[:, None] == owned[None, :]
        if not len(owned) or same.all(axis=1).all():
            continue
        sim = state.text[items] @ state.text[owned].T
        sim[same] = -np.inf
        text_max[rows] = sim.max(axis=1)
        variants[rows] = (sim >= 0.85).sum(axis=1)
        link = item2item.take(state.ease, owned, items).T
        link[same] = -np.inf
        ease_max[rows] = link.max(axis=1)
    text_max[~np.isfinite(text_max)] = np.nan
    ease_max[~np.isfinite(ease_max)] = np.nan
    return text_max, variants, ease_max


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    n = min(n, scores.shape[1])
    if n <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    return np.argpartition(-scores, n - 1, axis=1)[:, :n]


def source_scores(batch: Batch, state: ItemState, two_tower_scores: np.ndarray | None) -> dict[str, np.ndarray]:
    """Dense user×item scores of every candidate source."""
    text_profile = np.asarray(batch.decay @ state.text)
    text_profile /= np.linalg.norm(text_profile, axis=1, keepdims=True).clip(min=1e-6)
    out = {
        "ease": item2item.scores(batch.binary, state.ease),
        "cooc": item2item.scores(batch.decay, state.cooc),
        # float64, rounded once: the same for a customer alone or in a batch (see TwoTowerIndex.user_vectors)
        "text_sim": (text_profile.astype(np.float64) @ state.text.T.astype(np.float64)).astype(np.float32),
    }
    if two_tower_scores is not None:
        out["tt"] = two_tower_scores.astype(np.float32)
    return out


def first_channels(events: pd.DataFrame) -> dict[Any, str] | None:
    """Each customer's channel at their first event in ``events`` (customer_id, event_timestamp, channel): where a
    request for that window would have come from. None when the events name no channel."""
    if C.channel not in events.columns:
        return None
    first = events.sort_values(C.event_timestamp, kind="stable").drop_duplicates(C.customer_id)
    return dict(zip(first[C.customer_id], first[C.channel].astype(str), strict=True))


def context_channels(batch: Batch, context: Sequence[str | None] | None) -> list[str | None]:
    """Each user's channel: the one given (per user code), else the channel of their latest order (None if unknown)."""
    latest = batch.last_channel if batch.last_channel is not None else pd.Series(dtype=object)
    return [
        context[u] if context is not None and context[u] is not None else latest.get(u) for u in range(len(batch.users))
    ]


def channel_features(
    df: pd.DataFrame, batch: Batch, state: ItemState, context: Sequence[str | None] | None
) -> dict[str, np.ndarray]:
    """``CHANNEL_FEATURES`` of the candidate rows for each user's context channel (None: the channel of their
    latest order); NaN where the channel is unknown or the state has no channels.

    ``ch_item_lift``: the item's share of sales in the channel over the channel's share of all sales (smoothed
    towards 1 for rarely sold items); ``ch_ui_share``: the share of the user's orders of the item placed there (NaN
    for items never bought); ``ch_user_share``: the share of all the user's orders placed there."""
    nan = np.full(len(df), np.nan, np.float32)
    if not state.channels or state.channel_lines is None:
        return dict.fromkeys(CHANNEL_FEATURES, nan)
    code_of = {c: n for n, c in enumerate(state.channels)}
    wanted = context_channels(batch, context)
    codes = np.array([code_of.get(c, -1) if c is not None else -1 for c in wanted], dtype=np.int64)
    u, i = df[USER].to_numpy(), df[ITEM].to_numpy()
    c = codes[u]
    known = c >= 0
    c0 = np.where(known, c, 0)
    lines = state.channel_lines
    totals = lines.sum(axis=0)
    share = (totals + 1.0) / (totals.sum() + len(totals))
    prior = 5.0  # lines of pseudo-evidence at the channel's overall share
    lift = (lines[i, c0] + prior * share[c0]) / (lines[i].sum(axis=1) + prior) / share[c0]
    out = {"ch_item_lift": np.where(known, lift, np.nan).astype(np.float32)}
    names = np.asarray(state.channels, dtype=object)[c0]
    ui = np.zeros(len(df), np.float32)
    user = np.zeros(len(df), np.float32)
    if batch.channel_pairs is not None and len(batch.channel_pairs):
        key = pd.MultiIndex.from_arrays([u, i, names])
        ui = batch.channel_pairs.reindex(key).fillna(0.0).to_numpy(np.float32)
        user = batch.user_channels.reindex(pd.MultiIndex.from_arrays([u, names])).fillna(0.0).to_numpy(np.float32)
    owned = df["ui_orders"].to_numpy()
    orders = df["u_orders"].to_numpy()
    out["ch_ui_share"] = np.where(known & (owned > 0), ui / np.maximum(owned, 1.0), np.nan).astype(np.float32)
    out["ch_user_share"] = np.where(known & (orders > 0), user / np.maximum(orders, 1.0), np.nan).astype(np.float32)
    return out


def candidates(
    batch: Batch,
    state: ItemState,
    params: CandidateParams,
    two_tower_scores: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    channels: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """The (u, i) candidate pairs of the batch with every feature of ``FEATURES`` and ``CHANNEL_FEATURES``.

    ``exclude`` is a boolean user×item mask of items that must never be proposed (bought, unavailable, …);
    ``channels`` the channel each user is in now (per user code; None: their latest)."""
    scores = source_scores(batch, state, two_tower_scores)
    n_users, n_items = batch.binary.shape
    mask = np.zeros((n_users, n_items), dtype=bool)
    rows = np.arange(n_users)[:, None]
    # repeat source: the user's own items, the most recent/frequent first
    hist = batch.pairs.sort_values([USER, "ui_decay180"], ascending=[True, False])
    hist = hist[hist.groupby(USER).cumcount() < params.n_history]
    mask[hist[USER].to_numpy(), hist[ITEM].to_numpy()] = True
    blocked = exclude if exclude is not None else np.zeros_like(mask)
    owned = batch.binary.toarray() > 0
    for name, n in (
        ("ease", params.n_ease),
        ("cooc", params.n_cooc),
        ("tt", params.n_two_tower),
        ("text_sim", params.n_text),
    ):
        if name in scores:
            s = np.where(blocked | owned, -np.inf, scores[name])
            mask[rows, _top(s, n)] = True
    popular = np.broadcast_to(
        state.stats["i_buyers_30d"].to_numpy() + 1e-3 * state.stats["i_buyers"].to_numpy(), mask.shape
    )
    mask[rows, _top(np.where(blocked, -np.inf, popular), params.n_popular)] = True
    mask &= ~blocked
    u, i = np.nonzero(mask)

    df = pd.DataFrame({USER: u, ITEM: i})
    df = df.merge(batch.pairs, on=[USER, ITEM], how="left")
    df["ui_orders"] = df["ui_orders"].fillna(0.0)
    for column in ("ui_qty", "ui_decay30", "ui_decay180", "ui_share", "ui_in_last_order", "ui_rate", "ui_last5"):
        df[column] = df[column].fillna(0.0)
    users = batch.user_stats.reindex(df[USER].to_numpy())
    for column in FEATURE_GROUPS["user"]:
        df[column] = users[column].to_numpy(np.float32)
    stats = state.stats.iloc[df[ITEM].to_numpy()]
    for column in (*FEATURE_GROUPS["popular"][:-1], *FEATURE_GROUPS["trend"], *FEATURE_GROUPS["item"]):
        if column == "trend_rank":
            continue
        df[column] = stats[column].to_numpy(np.float32)
    for name in ("ease", "cooc", "tt", "text_sim"):
        df[name] = scores[name][u, i] if name in scores else np.nan
    g = df.groupby(USER, sort=False)
    df["ease_rank"] = g["ease"].rank(ascending=False, method="first")
    df["cooc_rank"] = g["cooc"].rank(ascending=False, method="first")
    df["tt_rank"] = g["tt"].rank(ascending=False, method="first")
    df["text_rank"] = g["text_sim"].rank(ascending=False, method="first")
    df["pop_rank"] = g["i_buyers_30d"].rank(ascending=False, method="first")
    df["trend_rank"] = g["i_trend"].rank(ascending=False, method="first")
    # the candidate's place in the user's own history (NaN for items the user never bought)
    own = df["ui_orders"] > 0
    g_own = df[own].groupby(USER, sort=False)
    df.loc[own, "ui_orders_rank"] = g_own["ui_orders"].rank(ascending=False, method="average")
    df.loc[own, "ui_recency_rank"] = g_own["ui_days_since_last"].rank(ascending=True, method="average")
    df.loc[own, "ui_decay_rank"] = g_own["ui_decay180"].rank(ascending=False, method="average")
    # the repeat-history order itself: purchase lines, ties by all-time buyers (shares < 1 never outweigh a line)
    repeat_key = (df["ui_lines"] + 0.5 * df["i_buyers"]).where(own)
    df.loc[own, "ui_repeat_rank"] = (
        repeat_key[own].groupby(df.loc[own, USER], sort=False).rank(ascending=False, method="first")
    )
    df["price_fit"] = (df["i_logprice"] - users["u_logprice_mean"].to_numpy()) / (
        users["u_logprice_std"].to_numpy() + 0.25
    )
    # category affinity: share of the user's items in this item's category
    cat_of_hist = state.categories[batch.pairs[ITEM].to_numpy()]
    counts = pd.Series(1.0, index=pd.MultiIndex.from_arrays([batch.pairs[USER].to_numpy(), cat_of_hist]))
    share = (
        counts.groupby(level=[0, 1]).sum()
        / counts.groupby(level=0).sum().reindex(counts.groupby(level=[0, 1]).sum().index.get_level_values(0)).to_numpy()
    )
    key = pd.MultiIndex.from_arrays([df[USER].to_numpy(), state.categories[df[ITEM].to_numpy()]])
    df["cat_affinity"] = share.reindex(key).fillna(0.0).to_numpy(np.float32)
    df["text_max_sim"], df["n_variants_owned"], df["ease_max"] = _closest_owned(df, batch, state)
    df = df.assign(**channel_features(df, batch, state, channels))
    return df[[USER, ITEM, *FEATURES, *CHANNEL_FEATURES]]
