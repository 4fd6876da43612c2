"""The recommend family's ranking model: multi-source candidates, a two-tower retriever and an XGBoost ranker.

``RecSys`` is an estimator (``__init__`` stores parameters, ``fit`` sets the attributes ending in ``_``):

1. MiniLM text embeddings of every catalog item: read from an optional source (the platform's Feast view), the
   rest encoded here (cached under ``cache_dir``).
2. EASE λ tuned on the last month of the training events (unless given).
3. Label cuts carved from the training events only: the ranker learns from the ``label_days`` after each cut what
   the features known at the cut predict, for each customer in the channel of their next order; each booster holds
   out another fold of the customers (the same in every cut) for early stopping.
4. Two-tower models (one per cut, and one on all events) trained in one job — a Ray Train ``TorchTrainer`` with
   ``training.ray_job.RayExecutor``, in process with ``LocalExecutor`` (tests).
5. Candidates and features per cut and block of customers (plus optional item and customer features read
   point-in-time at the cut, the platform's Feast item and customer × channel windows), written as Parquet shards;
   then every booster in one job (Ray Train ``XGBoostTrainer``) that streams them from the files. Memory stays
   bounded by one cut's catalog state and one block's candidates, whatever the data size.
6. The catalog side is refitted on all events for recommending.

``recommend`` ranks one customer's candidates and explains every item from the boosters' own TreeSHAP values;
``rank_users`` does the same for many customers at once (benchmarks, batch scoring). ``save``/``load`` use plain
files: JSON, NPZ and XGBoost JSON, which MLflow carries as artifacts.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from omnicart import text
from omnicart.recommend import candidates as cand
from omnicart.recommend import item2item, ranker, two_tower
from omnicart.recommend.candidates import USER, CandidateParams, ItemState
from omnicart.recommend.ranker import RankerParams
from omnicart.recommend.two_tower import TwoTowerIndex, TwoTowerParams
from omnicart.schemas import C

log = logging.getLogger(__name__)
# Item features from outside the event log (the platform's Feast item windows): item ids and the time they are
# wanted for -> a frame indexed by item id, one numeric column per feature, as known at that time (point in time).
ItemFeatures = Callable[[np.ndarray, pd.Timestamp], pd.DataFrame]
# Features of each customer in the channel they are in (the platform's Feast customer x channel windows): customer
# ids, each one's channel (None: unknown) and the time -> one row per customer in the same order, one numeric column
# per feature, as known at that time. The ranker names them with ``candidates.CUSTOMER_PREFIX``.
CustomerFeatures = Callable[[np.ndarray, list[str | None], pd.Timestamp], pd.DataFrame]
# Text vectors of catalog items made outside the model with its recipe (the platform's Feast ``item_text`` view):
# item ids -> one row of ``text.DIM`` floats per item in the same order, NaN where the source has none (new items,
# which ``fit`` encodes itself).
ItemText = Callable[[np.ndarray], np.ndarray]

# The caller's rules over one customer's ranked items (item_id, title, category, score, position) and the number of
# new items that will follow them -> the items to keep, in order (only those are explained).
Select = Callable[[list[dict[str, Any]], int], list[dict[str, Any]]]


@dataclass
class Scored:
    """A batch of customers' candidates, scored: the frame (one row per candidate), its ranker features (float32, in
    ``RecSys.features`` order), the batch's histories, two-tower inputs, each customer's context channel and the
    customer features read for it."""

    frame: pd.DataFrame
    x: np.ndarray
    batch: cand.Batch
    weights: Any
    vectors: np.ndarray
    channels: list[str | None]
    customer_table: np.ndarray | None
    discover: bool = False


@dataclass
class Ranked:
    """One customer's candidates best first (catalog codes, scores, ranker feature rows) and what explaining them
    needs: the codes of the items they own, their context channel, and which booster ranked them."""

    codes: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    owned: np.ndarray
    channel: str | None
    discover: bool
    # the TreeSHAP scores and group contributions of the first rows, when already computed (the fast path)
    shap_scores: np.ndarray | None = None
    shap_groups: np.ndarray | None = None

    @classmethod
    def of(cls, scored: Scored) -> Ranked:
        """The ranking of the first (only) customer of ``scored``."""
        score = scored.frame["score"].to_numpy()
        order = np.argsort(-score, kind="stable")
        binary = scored.batch.binary
        return cls(
            codes=scored.frame[cand.ITEM].to_numpy()[order],
            scores=score[order],
            rows=scored.x[order],
            owned=binary.indices[binary.indptr[0] : binary.indptr[1]],
            channel=scored.channels[0] if scored.channels else None,
            discover=scored.discover,
        )


FORMAT_VERSION = 2  # 2: the text vectors of the cold items (cold_text.npz) for the cold-item blend


@dataclass(frozen=True)
class RecSysParams:
    label_days: int = 70
    n_cuts: int = 8
    cut_stride_days: int = 17  # label windows overlap: more ranker training data from the same history
    # cuts after now - label_days (same stride), whose label windows are cut short by now: the ranker also learns
    # from the latest weeks (on the inner online_retail_ii split, NDCG@10 over repeat history 1.072 -> 1.077 and
    # 1.067 -> 1.070 at seeds 0 and 1; novel NDCG@10 over EASE 1.097 -> 1.117 at seed 0)
    recent_cuts: int = 3
    # the ranker learns from at most this many buyers per cut (a uniform sample past it), so its rows and time stop
    # growing with the shop; chosen on an inner split (the 0.25 M scale shop, the test day unread): NDCG@10 0.2296
    # with every buyer (of 14,635 customers), 0.2293 with 6,000 and 0.2253 with 2,000; ranker 182 s, 92 s and 30 s
    users_per_cut: int | None = 6_000
    two_tower_every: int = 1  # a two-tower model every this many cuts; a cut uses the latest one trained before it
    ease_lambda: float | None = None  # None: tuned on the last month of the training events
    ease_grid: tuple[float, ...] = (100.0, 200.0, 400.0, 800.0, 1600.0)
    candidates: CandidateParams = field(default_factory=CandidateParams)
    two_tower: TwoTowerParams = field(default_factory=TwoTowerParams)
    ranker: RankerParams = field(default_factory=RankerParams)
    # Catalog items without interactions: this share of their (per-customer standardised) score is the plain text
    # similarity to the customer's history, the rest the two-tower content score. On an inner amazon_gift_cards
    # split (train before 2015, the bench's test window unread) text alone beat the two-tower tower and 0.75 was
    # at least as good as text alone at two seeds.
    cold_text_weight: float = 0.75
    # training builds the ranker's rows for blocks of customers whose customers × items score matrices hold at
    # most this many cells (some 10 dense float32 matrices: about 0.4 GB), whatever the data size
    block_cells: int = 10_000_000
    seed: int = 0

    def cuts(self, now: pd.Timestamp) -> list[pd.Timestamp]:
        """The label cuts, latest first: ``recent_cuts`` whose windows are cut short by ``now`` (but still a quarter
        of ``label_days`` long), then ``n_cuts`` whose ``label_days`` windows end before it, ``cut_stride_days``
        apart."""
        cuts = [
            now - pd.Timedelta(days=self.label_days + self.cut_stride_days * c)
            for c in range(-self.recent_cuts, self.n_cuts)
        ]
        return [c for c in cuts if now - c >= pd.Timedelta(days=self.label_days) / 4]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecSysParams:
        return cls(
            label_days=d["label_days"],
            n_cuts=d["n_cuts"],
            cut_stride_days=d["cut_stride_days"],
            recent_cuts=d.get("recent_cuts", 0),
            users_per_cut=d["users_per_cut"],
            two_tower_every=d["two_tower_every"],
            ease_lambda=d["ease_lambda"],
            ease_grid=tuple(d["ease_grid"]),
            candidates=CandidateParams(**d["candidates"]),
            two_tower=TwoTowerParams(**d["two_tower"]),
            ranker=RankerParams(**d["ranker"]),
            cold_text_weight=d["cold_text_weight"],
            block_cells=d.get("block_cells", cls.block_cells),
            seed=d["seed"],
        )


# --- where the two training stages run ------------------------------------------------------------------------------
def two_tower_tasks(config: dict[str, Any], distributed: bool) -> list[dict[str, Any]]:
    """Train every task of ``config["tasks"]`` (paths written by ``two_tower.save_task``), one loaded at a time."""
    out = []
    for path in config["tasks"]:
        history, targets, content = two_tower.load_task(Path(path))
        out.append(two_tower.fit(history, targets, content, config["params"], distributed=distributed))
        del history, targets, content
    return out


def read_two_tower(directory: Path, n: int) -> list[dict[str, Any]]:
    out = []
    for k in range(n):
        with np.load(directory / f"task{k}.npz") as a:
            out.append({key: (a[key].item() if a[key].ndim == 0 else a[key]) for key in a.files})
    return out


class Executor(Protocol):
    """Where the two training stages run: in this process (``LocalExecutor``) or as Ray Train jobs
    (``training.ray_job.RayExecutor``). Both stages are given paths to their data, never the data: ``work_dir``
    is where ``fit`` writes it (None: the system's temporary folder), a folder every worker can read."""

    work_dir: Path | None

    def two_tower(self, config: dict[str, Any]) -> list[dict[str, Any]]: ...

    def ranker(self, config: dict[str, Any]) -> dict[str, Any]: ...


class LocalExecutor:
    """Runs both training stages in this process (unit tests, notebooks)."""

    work_dir: Path | None = None

    def two_tower(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        return two_tower_tasks(config, distributed=False)

    def ranker(self, config: dict[str, Any]) -> dict[str, Any]:
        return ranker.fit_boosters(config["shards"], config["params"])


# --- the estimator ----------------------------------------------------------------------------------------------------
def _cold_item_ids(state_items: np.ndarray, items: pd.DataFrame | None) -> np.ndarray:
    if items is None or not len(items):
        return np.array([], dtype=object)
    known = set(state_items.tolist())
    return np.array([i for i in items[C.item_id].astype(str).drop_duplicates() if i not in known], dtype=object)


class RecSys:
    """Repeat history + EASE + co-occurrence + two-tower candidates, ranked by XGBoost, explained by TreeSHAP."""

    def __init__(self, params: RecSysParams | None = None, *, cache_dir: Path | None = None) -> None:
        self.params = params or RecSysParams()
        self.cache_dir = cache_dir

    # --- training ---------------------------------------------------------------------------------------------
    def fit(
        self,
        interactions: pd.DataFrame,
        items: pd.DataFrame | None = None,
        *,
        executor: Executor | None = None,
        now: pd.Timestamp | None = None,
        progress: Callable[[str], None] | None = None,
        item_features: ItemFeatures | None = None,
        customer_features: CustomerFeatures | None = None,
        item_text: ItemText | None = None,
    ) -> RecSys:
        """Fit on purchase events (customer_id, item_id, event_timestamp; optional quantity, price, order_id) and an
        optional catalog (item_id, title, description, category, brand, price, image_embedding).

        ``item_features`` adds the columns it returns to the ranker's features, read at each training cut; the
        model then needs the same source at serving time (``use_item_features``), or ranks with them missing;
        ``customer_features`` likewise, per customer in their channel (``use_customer_features``). ``item_text``
        gives the text vectors of the items it has (made with ``text.item_text`` and ``text.encode``); the others are
        encoded here."""
        p = self.params
        executor = executor or LocalExecutor()
        say = progress or (lambda _msg: None)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            timings[stage] = round(time.perf_counter() - clock, 2)
            clock = time.perf_counter()
            say(f"{stage}: {timings[stage]:.1f} s")

        events = cand.normalize_events(interactions)
        if events.empty:
            raise ValueError("no interactions to train on")
        now = pd.Timestamp(now) if now is not None else events[C.event_timestamp].max() + pd.Timedelta(seconds=1)
        events = events[events[C.event_timestamp] < now]
        catalog = self._catalog(events, items)
        embeddings = self._text_vectors(catalog, item_text)
        text_of = dict(zip(catalog[C.item_id].tolist(), embeddings, strict=True))
        lap("text")

        lam = p.ease_lambda
        self.ease_scores_: dict[float, float] = {}
        if lam is None:
            lam, self.ease_scores_ = item2item.tune_ease_lambda(events, now, p.ease_grid, block_cells=p.block_cells)
        self.ease_lambda_ = float(lam)
        lap("ease_tune")

        first = events[C.event_timestamp].min()
        cuts = [c for c in p.cuts(now) if c > first]  # some history before the cut
        final = ItemState.fit(events, catalog, now, text_of, lam, seed=p.seed)
        lap("item_state")

        self.item_features = item_features
        self.extra_features_: list[str] | None = None if item_features is not None else []  # None: the first read
        self.channel_features_ = list(cand.CHANNEL_FEATURES) if final.channels else []
        self.customer_features = customer_features
        self.customer_features_: list[str] | None = None if customer_features is not None else []
        # the two-tower tasks and the ranker's rows go to files here, and the training jobs read them from there
        root = executor.work_dir
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="omnicart-recsys-", dir=root) as work:
            # two-tower: models at anchor cuts (features for the ranker) and one on everything (recommending)
            anchors = sorted({j for j in range(len(cuts)) if j % max(p.two_tower_every, 1) == 0} | {len(cuts) - 1})
            anchors = [j for j in anchors if j >= 0]
            at_cuts = [*(cuts[j] for j in anchors), now]
            indexes, vocabs = self._two_towers(events, catalog, text_of, at_cuts, executor, Path(work))
            lap("two_tower")

            shards = self._ranker_shards(events, catalog, text_of, lam, cuts, anchors, indexes, Path(work))
            self.train_rows_ = shards.rows
            lap("features")

            boosters = executor.ranker({"shards": shards, "params": p.ranker})
            self.boosters_ = {name: boosters[name] for name in ranker.BOOSTERS}
            lap("ranker")

        self.state_ = final
        self.two_tower_ = indexes[-1]
        cold_ids = indexes[-1].item_ids[indexes[-1].n_warm :].tolist()
        cold_text = [text_of.get(i, np.zeros(text.DIM, np.float32)) for i in cold_ids]  # none when all have sold
        self.cold_text_ = np.asarray(cold_text, dtype=np.float32).reshape(-1, text.DIM)
        self.content_vocab_ = vocabs[-1]
        self.cold_items_ = _titles_and_categories(catalog, self.two_tower_.item_ids[len(final.item_ids) :])
        self.now_ = now
        self.timings_ = timings
        return self

    def _two_towers(
        self,
        events: pd.DataFrame,
        catalog: pd.DataFrame,
        text_of: dict[str, np.ndarray],
        cuts: list[pd.Timestamp],
        executor: Executor,
        work: Path,
    ) -> tuple[list[TwoTowerIndex], list[dict]]:
        """One two-tower model per cut, trained in one job. Each task's examples are written to ``work`` as they are
        made and the job is given their paths: the driver holds one task at a time, the object store none."""
        p = self.params
        tasks, vocabs, items = [], [], []
        for k, cut in enumerate(cuts):
            warm = cand.items_before(events, cut)
            content, vocab = self._content(warm, catalog, text_of)
            index = {item: n for n, item in enumerate(warm.tolist())}
            history, targets = two_tower.training_examples(events[events[C.event_timestamp] < cut], index, p.two_tower)
            path = work / f"two_tower_{k}.npz"
            two_tower.save_task(path, history, targets, content)
            tasks.append(str(path))
            vocabs.append(vocab)
            items.append((content.item_ids, len(warm)))
            del history, targets, content
        results = executor.two_tower({"tasks": tasks, "params": p.two_tower})
        indexes = [
            TwoTowerIndex.from_fit(ids, n_warm, r, p.two_tower) for (ids, n_warm), r in zip(items, results, strict=True)
        ]
        self.two_tower_loss_ = [(float(r["loss_first"]), float(r["loss_last"])) for r in results]
        return indexes, vocabs

    def block_users(self, n_items: int) -> int:
        """Customers per block: as many as keep the block's dense customers × items score matrices at
        ``block_cells`` cells, so memory stays bounded whatever the catalog and customer counts."""
        return item2item.rows_per_block(self.params.block_cells, n_items)

    def _ranker_shards(
        self,
        events: pd.DataFrame,
        catalog: pd.DataFrame,
        text_of: dict[str, np.ndarray],
        lam: float,
        cuts: list[pd.Timestamp],
        anchors: list[int],
        indexes: list[TwoTowerIndex],
        work: Path,
    ) -> ranker.Shards:
        """The ranker's training rows, cut by cut and block of customers by block, written as Parquet shards: only
        one cut's catalog state and one block's candidates are in memory at a time."""
        p = self.params
        at = events[C.event_timestamp]
        span = pd.Timedelta(days=p.label_days)
        cut_users = []
        for c, cut in enumerate(cuts):
            buyers = events.loc[(at >= cut) & (at < cut + span), C.customer_id]
            users = np.array(sorted(set(events.loc[at < cut, C.customer_id]) & set(buyers)))
            rng = np.random.default_rng(p.seed + c)
            if p.users_per_cut and len(users) > p.users_per_cut:
                users = np.sort(rng.choice(users, size=p.users_per_cut, replace=False))
            cut_users.append(users)
        if not any(len(u) for u in cut_users):
            raise ValueError(f"not enough history for a {p.label_days}-day label window; lower label_days")
        folds = _cut_folds(cut_users, p)
        # each block's events are one slice of the events sorted by customer (blocks are runs of sorted customers)
        by_customer = events.sort_values(C.customer_id, kind="stable").reset_index(drop=True)
        customers = by_customer[C.customer_id].to_numpy()
        (work / "ranker").mkdir()
        writer: ranker.ShardWriter | None = None
        for c, (cut, users) in enumerate(zip(cuts, cut_users, strict=True)):
            if not len(users):
                continue
            state = ItemState.fit(events, catalog, cut, text_of, lam, seed=p.seed)
            n_items = len(state.item_ids)
            index = indexes[next(n for n, j in enumerate(anchors) if j >= c)]
            window = events[(at >= cut) & (at < cut + span)]
            window = window[window[C.item_id].isin(state.index)]
            context = _first_channels(window, users)
            bought = pd.Index(users).get_indexer(window[C.customer_id])
            labels = np.unique(
                bought[bought >= 0].astype(np.int64) * n_items
                + window[C.item_id].map(state.index).to_numpy(np.int64)[bought >= 0]
            )
            table = self._item_table(state, np.arange(n_items), cut, True) if self.extra_features_ != [] else None
            size = self.block_users(n_items)
            for start in range(0, len(users), size):
                chunk = users[start : start + size]
                lo, hi = np.searchsorted(customers, chunk[0], "left"), np.searchsorted(customers, chunk[-1], "right")
                chunk_events = by_customer.iloc[lo:hi]
                batch = cand.describe(chunk_events, state, cut, chunk)
                chunk_context = None if context is None else context[start : start + size]
                scores = _two_tower_scores(index, state, chunk_events, chunk, cut)
                frame = cand.candidates(batch, state, p.candidates, scores, channels=chunk_context)
                if table is not None:
                    codes = frame[cand.ITEM].to_numpy()
                    frame = frame.assign(**{name: table[codes, n] for n, name in enumerate(self.extra_features_)})
                frame, _ = self._with_customer_features(
                    frame, chunk, cand.context_channels(batch, chunk_context), cut, strict=True
                )
                u = frame[USER].to_numpy() + start
                key = u.astype(np.int64) * n_items + frame[cand.ITEM].to_numpy(np.int64)
                frame["label"] = np.isin(key, labels).astype(np.float32)
                frame["group"] = c * 10_000_000 + u
                frame["fold"] = folds[c][u]
                if writer is None:  # the first block has read the outside features, which names them
                    self.extra_features_ = self.extra_features_ or []
                    self.customer_features_ = self.customer_features_ or []
                    writer = ranker.ShardWriter(work / "ranker", p.ranker, self.features)
                writer.write(frame)
            del state
        if writer is None or not writer.rows:
            raise ValueError(f"not enough history for a {p.label_days}-day label window; lower label_days")
        return writer.shards()

    def _text_vectors(self, catalog: pd.DataFrame, source: ItemText | None) -> np.ndarray:
        """The text vector of each catalog item: the source's where it has one, the others encoded (all without a
        source). ``text_read_`` counts those read. A failing or malformed source fails the fit
        (``FeatureSourceError``)."""
        self.text_read_ = 0
        if source is None:
            return text.encode(text.item_text(catalog), cache_dir=self.cache_dir)
        ids = catalog[C.item_id].to_numpy(dtype=object)
        try:
            vectors = np.array(source(ids), dtype=np.float32)
        except Exception as exc:
            raise FeatureSourceError(f"item text vectors unavailable: {exc}") from exc
        if vectors.shape != (len(ids), text.DIM):
            raise FeatureSourceError(f"item text vectors of shape {vectors.shape}, not {(len(ids), text.DIM)}")
        lacking = np.flatnonzero(np.isnan(vectors).any(axis=1))
        if len(lacking):
            vectors[lacking] = text.encode(text.item_text(catalog.iloc[lacking]), cache_dir=self.cache_dir)
        self.text_read_ = len(ids) - len(lacking)
        log.info("item text vectors: %d read from the source, %d encoded", self.text_read_, len(lacking))
        return vectors

    @staticmethod
    def _catalog(events: pd.DataFrame, items: pd.DataFrame | None) -> pd.DataFrame:
        """Every item the model may know: the catalog's rows, plus items seen only in events."""
        seen = pd.DataFrame({C.item_id: sorted(events[C.item_id].unique())})
        if items is None or not len(items):
            return seen.assign(**{C.title: "", C.description: "", C.category: "", C.brand: ""})
        catalog = items.copy()
        catalog[C.item_id] = catalog[C.item_id].astype(str)
        catalog = catalog.drop_duplicates(C.item_id)
        extra = seen[~seen[C.item_id].isin(set(catalog[C.item_id]))]
        return pd.concat([catalog, extra], ignore_index=True)

    def _content(
        self, warm_ids: np.ndarray, catalog: pd.DataFrame, text_of: dict[str, np.ndarray], vocab: dict | None = None
    ) -> tuple[two_tower.Content, dict]:
        """Content arrays of the items with interactions (``warm_ids``, first) and the other catalog items."""
        cold = _cold_item_ids(warm_ids, catalog)
        item_ids = np.concatenate([warm_ids, cold]).astype(object)
        emb = np.stack([text_of.get(i, np.zeros(text.DIM, np.float32)) for i in item_ids.tolist()])
        warm = np.zeros(len(item_ids), bool)
        warm[: len(warm_ids)] = True
        return two_tower.build_content(item_ids, catalog, emb, warm, vocab)

    # --- item features from outside the event log ----------------------------------------------------------------
    @property
    def features(self) -> list[str]:
        """The ranker's features: the candidates' own, the context channel's (when the training events named
        channels), then the customer and item features the model was trained with."""
        return [*cand.FEATURES, *self.channel_features_, *self.customer_features_, *self.extra_features_]

    def use_item_features(self, source: ItemFeatures | None) -> None:
        """Where serving reads the extra item features (e.g. the Feast online store); None: rank without them."""
        self.item_features = source

    def use_customer_features(self, source: CustomerFeatures | None) -> None:
        """Where serving reads the customer features (e.g. the Feast online store); None: rank without them."""
        self.customer_features = source

    def customer_table(
        self, users: np.ndarray, channels: list[str | None], at: pd.Timestamp, strict: bool = False
    ) -> np.ndarray | None:
        """users × ``customer_features_`` as the ranker reads them (float32, NaN where the source has no value or
        failed and not ``strict``); None when the model has no customer features. In ``fit`` the first read names
        them, as for the item features."""
        if self.customer_features_ == []:
            return None
        values = _read_source(self.customer_features, "customer", at, strict, users, channels, at)
        if self.customer_features_ is None:
            names = [str(c) for c in values.columns] if values is not None else []
            self.customer_features_ = [cand.CUSTOMER_PREFIX + n for n in names]
            if not names:
                return None
        table = np.full((len(users), len(self.customer_features_)), np.nan, dtype=np.float32)
        if values is not None:
            wanted = [n.removeprefix(cand.CUSTOMER_PREFIX) for n in self.customer_features_]
            found = values.reset_index(drop=True).reindex(index=range(len(users)), columns=wanted)
            if any(pd.api.types.is_object_dtype(d) for d in found.dtypes):  # text: what is no number is NaN
                found = found.apply(pd.to_numeric, errors="coerce")
            table[:] = found.to_numpy(np.float32)
        return table

    def _with_customer_features(
        self,
        frame: pd.DataFrame,
        users: np.ndarray,
        channels: list[str | None],
        at: pd.Timestamp,
        strict: bool = False,
        table: np.ndarray | None = None,
    ) -> tuple[pd.DataFrame, np.ndarray | None]:
        """``frame`` with a column per customer feature of each row's user in their channel, and the users ×
        features table they came from (``table``: already read, e.g. by the fast path's check)."""
        if table is None:
            table = self.customer_table(users, channels, at, strict)
        if table is None:
            return frame, None
        codes = frame[USER].to_numpy()
        return frame.assign(**{name: table[codes, n] for n, name in enumerate(self.customer_features_)}), table

    def item_table(self, codes: np.ndarray, at: pd.Timestamp, strict: bool = False) -> np.ndarray | None:
        """catalog items × ``extra_features_`` (float32), filled for ``codes`` (NaN where the source has no value,
        or failed and not ``strict``); None when the model has no extra item features. In ``fit`` the first read (at
        the first cut) names the features."""
        if self.extra_features_ == []:
            return None
        return self._item_table(self.state_, codes, at, strict)

    def pin_item_features(self) -> np.ndarray | None:
        """Read the extra item features of every catalog item once and rank with those values from now on (the
        fast path's precomputed rankings were made with them; the item windows change once a day, and a redeploy
        reads them again). Returns the items × features table, or None when the model has no extra item features
        or the read failed (nothing is pinned then)."""
        if not self.extra_features_:
            return None
        state = self.state_
        values = _read_source(self.item_features, "item", self.now_, False, state.item_ids, self.now_)
        if values is None:
            return None
        table = self._item_table(state, np.arange(len(state.item_ids)), self.now_, False, values)
        self.item_features = _PinnedItems(state.item_ids, table, list(self.extra_features_))
        return table

    def _item_table(
        self, state: ItemState, codes: np.ndarray, at: pd.Timestamp, strict: bool, values: Any = None
    ) -> np.ndarray | None:
        wanted = np.unique(codes)
        if values is None:
            values = _read_source(self.item_features, "item", at, strict, state.item_ids[wanted], at)
        if self.extra_features_ is None:
            self.extra_features_ = [str(c) for c in values.columns] if values is not None else []
            if not self.extra_features_:
                return None
        table = np.full((len(state.item_ids), len(self.extra_features_)), np.nan, dtype=np.float32)
        if values is not None:
            found = values.reindex(index=state.item_ids[wanted], columns=self.extra_features_)
            table[wanted] = found.apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
        return table

    def _with_item_features(
        self, frame: pd.DataFrame, state: ItemState, at: pd.Timestamp, strict: bool = False
    ) -> pd.DataFrame:
        """``frame`` with a column per extra item feature (NaN where the source has no value, or failed and not
        ``strict``)."""
        if self.extra_features_ == []:
            return frame
        codes = frame[cand.ITEM].to_numpy()
        table = self._item_table(state, codes, at, strict)
        if table is None:
            return frame
        return frame.assign(**{name: table[codes, n] for n, name in enumerate(self.extra_features_)})

    # --- ranking ----------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "state_"):
            raise RuntimeError("RecSys is not fitted; call fit() or RecSys.load()")

    def _frame(
        self,
        events: pd.DataFrame,
        users: np.ndarray,
        now: pd.Timestamp,
        discover: bool,
        exclude: dict[Any, Iterable[str]] | set[str] | None,
        channels: dict[Any, str] | None = None,
        customer_table: np.ndarray | None = None,
    ) -> Scored:
        state, tt = self.state_, self.two_tower_
        batch = cand.describe(events, state, now, users)
        mask = np.zeros(batch.binary.shape, dtype=bool)
        if discover:
            mask |= batch.binary.toarray() > 0
        if exclude:
            if isinstance(exclude, dict):
                for n, u in enumerate(users.tolist()):
                    cols = [state.index[i] for i in exclude.get(u, ()) if i in state.index]
                    mask[n, cols] = True
            else:
                mask[:, [state.index[i] for i in exclude if i in state.index]] = True
        weights = two_tower.user_weights(events, users, state.index, now, tt.params)
        vectors = tt.user_vectors(weights)
        context = [channels.get(u) for u in users.tolist()] if channels else None
        frame = cand.candidates(
            batch, state, self.params.candidates, tt.scores(vectors)[:, : tt.n_warm], mask, channels=context
        )
        frame = self._with_item_features(frame, state, now)
        in_channel = cand.context_channels(batch, context)
        frame, table = self._with_customer_features(frame, users, in_channel, now, table=customer_table)
        boosters = self.boosters_["discover" if discover else "main"]
        x = frame[self.features].to_numpy(np.float32)
        frame["score"] = ranker.predict(boosters, x, self.features)
        return Scored(frame, x, batch, weights, vectors, in_channel, table, discover)

    def rank_users(
        self,
        interactions: pd.DataFrame,
        users: Sequence[Any],
        k: int = 20,
        *,
        discover: bool = False,
        now: pd.Timestamp | None = None,
        exclude: dict[Any, Iterable[str]] | None = None,
        channels: dict[Any, str] | None = None,
        batch_size: int = 1000,
    ) -> dict[Any, list[str]]:
        """The top ``k`` item ids for each user from their events before ``now`` (default: the training cut).

        ``discover`` ranks only items the user never bought (the "novel" setting); ``channels`` the channel each
        user is asking from (default: the channel of their latest order)."""
        self._check_fitted()
        now = pd.Timestamp(now) if now is not None else self.now_
        events = cand.normalize_events(interactions)
        users = np.array(list(users))
        out: dict[Any, list[str]] = {}
        fallback = np.argsort(-self.state_.stats["i_buyers_30d"].to_numpy(), kind="stable")
        batch_size = min(batch_size, self.block_users(len(self.state_.item_ids)))
        rows_of = events.groupby(C.customer_id, sort=False).indices  # one pass, not one scan per batch
        for start in range(0, len(users), batch_size):
            chunk = users[start : start + batch_size]
            rows = [rows_of[u] for u in chunk.tolist() if u in rows_of]
            chunk_events = events.iloc[np.sort(np.concatenate(rows))] if rows else events.iloc[:0]
            scored = self._frame(chunk_events, chunk, now, discover, exclude, channels)
            frame, batch = scored.frame, scored.batch
            frame = frame.sort_values([USER, "score"], ascending=[True, False], kind="stable")
            top = frame[frame.groupby(USER).cumcount() < k]
            picked = top.groupby(USER)[cand.ITEM].agg(list).to_dict()
            owned = batch.binary.tolil().rows
            for n, u in enumerate(chunk.tolist()):
                items = picked.get(n, [])
                if len(items) < k:  # a full ranking: the rest by recent popularity
                    blocked = set(items) | (set(owned[n]) if discover else set())
                    if exclude and u in exclude:
                        blocked |= {self.state_.index[i] for i in exclude[u] if i in self.state_.index}
                    items = items + [int(i) for i in fallback if int(i) not in blocked][: k - len(items)]
                out[u] = self.state_.item_ids[items].tolist()
        return out

    def recommend(
        self,
        user_history: pd.DataFrame | Sequence[str] | Sequence[dict[str, Any]],
        k: int = 10,
        *,
        exclude: Iterable[str] = (),
        context: dict[str, Any] | None = None,
        select: Select | None = None,
        customer_table: np.ndarray | None = None,
    ) -> list[dict[str, Any]]:
        """Top ``k`` items for one customer, each with a score, a plain-words reason and its TreeSHAP contributions.

        ``user_history``: the customer's purchase events (item_id, event_timestamp, optional quantity, price,
        order_id), or just item ids. ``exclude``: items never to propose (in the basket, out of stock, …); they are
        dropped from the ranking after scoring, so they never change how the other items rank.
        ``context``: ``now`` (default: the training cut), ``discover`` (only never-bought items),
        ``new_items`` (slots for catalog items without interactions, chosen by the two-tower content model),
        ``channel`` (where the customer is now; default: the channel of their latest order).
        ``select``: the caller's rules, given the ranked items (item_id, title, category, score) and how many new
        items follow them, returning the ones to keep; only those are explained. ``customer_table``: the
        customer's features, already read (``customer_table``)."""
        self._check_fitted()
        context = context or {}
        now = pd.Timestamp(context.get("now", self.now_))
        if now.tzinfo is None:
            now = now.tz_localize("UTC")
        history = cand.normalize_events(_history_frame(user_history, now))
        user = history[C.customer_id].iloc[0] if len(history) else "_"
        exclude = set(map(str, exclude))
        discover = bool(context.get("discover", False))
        scored = self._frame(
            history,
            np.array([user]),
            now,
            discover,
            None,
            {user: context["channel"]} if context.get("channel") else None,
            customer_table,
        )
        ranked = Ranked.of(scored)
        n_new = min(int(context.get("new_items", 0)), k)
        new = self._new_items(n_new, exclude, ranked.owned, scored.weights, scored.vectors) if n_new else []
        return self.answer(ranked, k - n_new, exclude, select, new)

    def answer(
        self,
        ranked: Ranked,
        k: int,
        exclude: set[str],
        select: Select | None = None,
        new: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """The first ``k`` of ``ranked`` outside ``exclude``, those ``select`` keeps explained, then ``new``."""
        state, new = self.state_, new or []
        keep = [p for p, i in enumerate(ranked.codes.tolist()) if state.item_ids[i] not in exclude][:k]
        items = [
            {
                C.item_id: state.item_ids[ranked.codes[p]],
                C.title: state.titles[ranked.codes[p]],
                C.category: state.category_names[state.categories[ranked.codes[p]]],
                "score": float(ranked.scores[p]),
                "position": p,
            }
            for p in keep
        ]
        if select is not None:
            items = select(items, len(new))
        return self.explain(ranked, [i["position"] for i in items]) + new

    def explain(self, ranked: Ranked, positions: Sequence[int]) -> list[dict[str, Any]]:
        """The items at ``positions`` of ``ranked``, each with its TreeSHAP score, contributions and reason."""
        if not len(positions):
            return []
        state = self.state_
        positions = list(positions)
        rows = ranked.rows[positions]
        done = len(ranked.shap_scores) if ranked.shap_scores is not None else 0
        todo = [n for n, p in enumerate(positions) if p >= done]
        scores = np.zeros(len(positions), np.float32)
        groups = np.zeros((len(positions), len(cand.REASON_GROUPS)), np.float32)
        if len(todo) < len(positions):
            stored = [p for p in positions if p < done]
            at = [n for n, p in enumerate(positions) if p < done]
            scores[at], groups[at] = ranked.shap_scores[stored], ranked.shap_groups[stored]
        if todo:
            boosters = self.boosters_["discover" if ranked.discover else "main"]
            scores[todo], groups[todo] = ranker.contributions(boosters, rows[todo])
        names_of = self.features
        out = []
        for p, row, score, contrib in zip(positions, rows, scores, groups, strict=True):
            i = int(ranked.codes[p])
            names = self._anchor_names(i, ranked.owned)
            if ranked.channel:
                names["channel"] = ranked.channel
            reason, contributions = ranker.explain(contrib, dict(zip(names_of, row.tolist(), strict=True)), names)
            out.append(
                {
                    C.item_id: state.item_ids[i],
                    C.title: state.titles[i],
                    C.category: names["category"],
                    "score": round(float(score), 6),
                    "reason": reason,
                    "contributions": contributions,
                }
            )
        return out

    def _anchor_names(self, i: int, owned: np.ndarray) -> dict[str, str]:
        """The history item behind "often bought with" / "similar to", and the item's category name."""
        state = self.state_
        names = {"category": state.category_names[state.categories[i]]}
        # another variant of the same product (same title) would read "similar to <itself>"
        title = state.titles[i]
        others = owned[[o != i and not (title and state.titles[o] == title) for o in owned]]
        if len(others):
            link = item2item.take(state.ease, others, [i])[:, 0] + 0.1 * item2item.take(state.cooc, others, [i])[:, 0]
            together = others[np.argmax(link)]
            similar = others[np.argmax(state.text[others] @ state.text[i])]
            names["together"] = state.titles[together] or str(state.item_ids[together])
            names["similar"] = state.titles[similar] or str(state.item_ids[similar])
        return names

    def _new_items(
        self, n: int, exclude: set[str], owned: np.ndarray, weights: Any, vectors: np.ndarray
    ) -> list[dict[str, Any]]:
        """Catalog items without interactions that the content model finds closest to the customer (``weights``,
        ``vectors``: their two-tower history weights and user vector)."""
        tt = self.two_tower_
        if len(tt.item_ids) <= tt.n_warm:
            return []
        cold, blended = self._cold(weights, vectors)
        scores = blended[0]
        order = [c for c in cold[np.argsort(-scores, kind="stable")] if tt.item_ids[c] not in exclude][:n]
        best = {c: float(s) for c, s in zip(cold, scores, strict=True)}
        out = []
        for c in order:
            similar = ""
            if len(owned):
                similar = self.state_.titles[owned[np.argmax(tt.item_vectors[owned] @ tt.item_vectors[c])]]
            reason = f"New in the catalog, like {similar}" if similar else "New in the catalog"
            out.append(
                {
                    C.item_id: tt.item_ids[c],
                    C.title: self.cold_items_.get(tt.item_ids[c], ["", ""])[0],
                    C.category: self.cold_items_.get(tt.item_ids[c], ["", ""])[1],
                    "score": round(best[c], 6),
                    "reason": reason,
                    "contributions": {"similar": 1.0},
                }
            )
        return out

    def popular(self, k: int, exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The ``k`` items most bought over the last 30 days before the cut: what a stranger is shown."""
        self._check_fitted()
        state, blocked = self.state_, set(map(str, exclude))
        share = state.stats["i_buyers_30d"].to_numpy()
        order = np.argsort(-(share + 1e-3 * state.stats["i_buyers"].to_numpy()), kind="stable")
        out = []
        for i in order:
            if len(out) >= k:
                break
            if state.item_ids[i] in blocked:
                continue
            row = {"i_buyers_30d": float(share[i])}
            out.append(
                {
                    C.item_id: state.item_ids[i],
                    C.title: state.titles[i],
                    C.category: state.category_names[state.categories[i]],
                    "score": round(float(share[i]), 6),
                    "reason": _sentence(ranker.describe_reason("popular", row, {}) or "popular this month"),
                    "contributions": {"popular": 1.0},
                }
            )
        return out

    def cold_scores(
        self, interactions: pd.DataFrame, users: Sequence[Any], now: pd.Timestamp | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two-tower scores of every catalog item without training interactions, for each user:
        (item ids, users × items)."""
        self._check_fitted()
        now = pd.Timestamp(now) if now is not None else self.now_
        tt = self.two_tower_
        events = cand.normalize_events(interactions)
        weights = two_tower.user_weights(events, np.array(list(users)), self.state_.index, now, tt.params)
        cold, scores = self._cold(weights, tt.user_vectors(weights))
        return tt.item_ids[cold], scores

    def _cold(self, weights: Any, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes of the catalog items without interactions, users × those items): the two-tower content score
        blended with the cosine between the item's text and the customer's history text (``weights``: users ×
        warm items, as the two-tower's user tower reads them), each standardised per customer first."""
        tt = self.two_tower_
        cold = np.arange(tt.n_warm, len(tt.item_ids))
        learned = tt.scores(vectors, cold)
        share = self.params.cold_text_weight
        if share <= 0 or not len(cold):
            return cold, learned
        profile = np.asarray(weights @ self.state_.text, dtype=np.float32)  # warm items, in the two-tower's order
        similar = profile @ self.cold_text_.T
        return cold, share * _standardise(similar) + (1 - share) * _standardise(learned)

    # --- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """Write the fitted model as plain files into ``directory`` (created; replaced files are overwritten)."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.state_.save(directory)
        self.two_tower_.save(directory)
        np.savez(directory / "cold_text.npz", vectors=self.cold_text_.astype(np.float16))
        ranker.save(self.boosters_, directory, prefix="ranker_")
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.params.to_dict(),
            "now": self.now_.isoformat(),
            "ease_lambda": self.ease_lambda_,
            "ease_scores": {str(k): v for k, v in self.ease_scores_.items()},
            "timings": self.timings_,
            "features": self.features,
            "channel_features": self.channel_features_,
            "customer_features": self.customer_features_,
            "extra_features": self.extra_features_,
            "content_vocab": self.content_vocab_,
            "cold_items": self.cold_items_,
        }
        (directory / "recsys.json").write_text(json.dumps(meta, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> RecSys:

        directory = Path(directory)
        meta = json.loads((directory / "recsys.json").read_text())
        if meta["format_version"] != FORMAT_VERSION:
            raise ValueError(f"model format {meta['format_version']} is not {FORMAT_VERSION}")
        channel_features = meta.get("channel_features", [])  # none in a model saved before channels
        customer_features = meta.get("customer_features", [])
        if meta["features"] != [*cand.FEATURES, *channel_features, *customer_features, *meta["extra_features"]]:
            raise ValueError("the saved ranker was trained on other features than this code computes")
        model = cls(RecSysParams.from_dict(meta["params"]))
        model.state_ = ItemState.load(directory)
        model.two_tower_ = TwoTowerIndex.load(directory)
        with np.load(directory / "cold_text.npz") as saved:
            model.cold_text_ = saved["vectors"].astype(np.float32)
        model.boosters_ = ranker.load(directory, prefix="ranker_")
        model.now_ = pd.Timestamp(meta["now"])
        model.ease_lambda_ = meta["ease_lambda"]
        model.ease_scores_ = {float(k): v for k, v in meta["ease_scores"].items()}
        model.timings_ = meta["timings"]
        model.content_vocab_ = meta["content_vocab"]
        model.cold_items_ = meta["cold_items"]
        model.channel_features_ = list(channel_features)
        model.customer_features_ = list(customer_features)
        model.customer_features = None
        model.extra_features_ = list(meta["extra_features"])
        model.item_features = None
        return model


class _PinnedItems:
    """An item features source that answers from values read once (``RecSys.pin_item_features``)."""

    def __init__(self, item_ids: np.ndarray, table: np.ndarray, names: list[str]) -> None:
        self.index = {i: n for n, i in enumerate(item_ids.tolist())}
        self.table, self.names = table, names

    def __call__(self, item_ids: np.ndarray, at: pd.Timestamp) -> pd.DataFrame:
        ids = [str(i) for i in item_ids]
        found = np.array([self.index.get(i, -1) for i in ids], dtype=np.int64)
        values = np.where(found[:, None] >= 0, self.table[np.maximum(found, 0)], np.nan)
        return pd.DataFrame(values.astype(np.float32), index=ids, columns=self.names)


class FeatureSourceError(RuntimeError):
    """A feature source failed while training: the run stops rather than learn from features that are missing."""


def _read_source(
    source: Callable[..., pd.DataFrame] | None, what: str, at: pd.Timestamp, strict: bool, *args: Any
) -> Any:
    """``source(*args)``, or None when there is no source. When it fails, ``strict`` (training) raises
    ``FeatureSourceError``: a model fitted on missing values would learn that they are normal and be promoted on
    them. Otherwise (ranking, evaluating, serving) the outage is logged and the rows rank with those features
    missing: it never fails an answer."""
    if source is None:
        return None
    try:
        return source(*args)
    except Exception as exc:
        if strict:
            raise FeatureSourceError(f"{what} features unavailable at {at}: {exc}") from exc
        log.exception("%s features unavailable at %s; ranking without them", what, at)
        return None


def _standardise(scores: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (a constant row becomes zeros)."""
    spread = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def _titles_and_categories(catalog: pd.DataFrame, item_ids: np.ndarray) -> dict[str, list[str]]:
    """item id → [title, category] from the catalog (empty strings where it says nothing)."""
    info = catalog.drop_duplicates(C.item_id).set_index(C.item_id).reindex(item_ids)

    def column(name: str) -> list[str]:
        return info[name].fillna("").astype(str).tolist() if name in info else [""] * len(info)

    return {str(i): [t, c] for i, t, c in zip(info.index, column(C.title), column(C.category), strict=True)}


def _sentence(text_: str) -> str:
    return text_[0].upper() + text_[1:]


def _folds(users: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Each customer's fold (0 .. n - 1) for early stopping: the same in every cut, by a hash of the id, so a
    customer held out of a booster never trains it through an overlapping window."""
    import hashlib

    def unit(user: Any) -> float:  # blake2b, not crc32: ids such as "c1".."c999" must spread evenly too
        digest = hashlib.blake2b(f"{seed}:{user}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    return np.array([int(unit(u) * n) for u in users.tolist()], dtype=np.int64)


def _cut_folds(cut_users: list[np.ndarray], params: RecSysParams) -> list[np.ndarray]:
    """Each cut's customers' folds (``_folds``). When some booster would hold out nobody (tiny data), the query
    groups of every cut, in order, get random folds instead, each booster's fold given at least one."""
    n = ranker.n_folds(params.ranker)
    folds = [_folds(users, n, params.seed) for users in cut_users]
    present = set(np.concatenate(folds).tolist()) if folds else set()
    if all(bag in present for bag in range(params.ranker.n_bags)):
        return folds
    total = sum(len(u) for u in cut_users)
    fold_of = np.random.default_rng(params.seed).integers(0, n, total)
    fold_of[: params.ranker.n_bags] = np.arange(min(params.ranker.n_bags, total))  # every bag holds some out
    return np.split(fold_of, np.cumsum([len(u) for u in cut_users])[:-1])


def _first_channels(window: pd.DataFrame, users: np.ndarray) -> list[str | None] | None:
    """The channel of each user's first purchase in a label window: where a request would have come from."""
    channel_of = cand.first_channels(window)
    return None if channel_of is None else [channel_of.get(u) or None for u in users.tolist()]


def _two_tower_scores(
    index: TwoTowerIndex, state: ItemState, events: pd.DataFrame, users: np.ndarray, now: pd.Timestamp
) -> np.ndarray:
    """users × state items two-tower scores; the index may be older than ``state`` (its unknown items score by
    content)."""
    columns = pd.Index(index.item_ids).get_indexer(state.item_ids)
    if (columns < 0).any():
        raise ValueError("the two-tower index does not cover every item of the catalog state")
    warm = {item: n for n, item in enumerate(index.item_ids[: index.n_warm].tolist())}
    vectors = index.user_vectors(two_tower.user_weights(events, users, warm, now, index.params))
    return index.scores(vectors, columns)


def _history_frame(user_history: Any, now: pd.Timestamp) -> pd.DataFrame:
    """One customer's history as events; bare item ids count as one purchase each just before ``now``."""
    if isinstance(user_history, pd.DataFrame):
        df = user_history.copy()
    else:
        records = list(user_history)
        if records and isinstance(records[0], dict):
            df = pd.DataFrame(records)
        else:
            df = pd.DataFrame({C.item_id: [str(i) for i in records]})
    if C.item_id not in df:
        df[C.item_id] = pd.Series(dtype=str)
    if C.customer_id not in df:
        df[C.customer_id] = "_"
    if C.event_timestamp not in df:
        df[C.event_timestamp] = now - pd.Timedelta(minutes=1)
    return df
