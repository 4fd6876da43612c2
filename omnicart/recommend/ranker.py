"""XGBoost learning-to-rank over the candidates' features, and plain-words explanations from its own TreeSHAP.

Two models share the features of ``candidates.FEATURES`` (plus the context channel's, ``CHANNEL_FEATURES``, and any
item features the platform reads from Feast, explained as the "trend" group): ``main`` ranks every candidate (repeat
purchases and new items together), ``discover`` is trained on the items a user has never bought and ranks them when
the caller asks for new items only. Each model is the mean of ``n_bags`` boosters early-stopped on different folds
of customers. The training rows are written block by block as Parquet shards (``ShardWriter``) and streamed from them
into each booster (``fit_boosters``, plain xgboost); in a Ray Train job it runs inside an ``XGBoostTrainer`` worker
(``training.ray_job.ranker_loop``), which is given the shards' paths, never the rows, and splits the files across
workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart.recommend.candidates import CHANNEL_GROUP, CUSTOMER_PREFIX, FEATURE_GROUP, FEATURES, REASON_GROUPS

BOOSTERS = ("main", "discover")


@dataclass(frozen=True)
class RankerParams:
    objective: str = "rank:ndcg"
    eta: float = 0.1
    max_depth: int = 6
    min_child_weight: float = 20.0
    # rows drawn per tree: 0.5 against 0.8 on online_retail_ii's inner validation (fold 0 of the training cuts):
    # holdout NDCG@10 0.4375 vs 0.4348 (main), 0.1977 vs 0.1996 (discover), about a third less fitting time
    subsample: float = 0.5
    colsample_bytree: float = 0.8
    max_bin: int = 64
    num_parallel_tree: int = 1  # > 1: each round averages several subsampled trees (less variance)
    num_pair_per_sample: int = 16
    max_rounds: int = 400
    # rounds without a better holdout NDCG@10 before a booster stops: 20 against 30 on online_retail_ii's six boosters
    # (their whole 400-round curves, fit once): 681 vs 792 rounds for main, mean holdout 0.4534 vs 0.4538; 373 vs 465
    # for discover, 0.2033 vs 0.2037
    early_stopping_rounds: int = 20
    eval_share: float = 0.2  # share of customers held out (in every cut) for early stopping: one fold of 1 / share
    # boosters per model, each early-stopped on another fold of customers (and trained on the others) with its own
    # seed; their scores are averaged, which evens out the sampling and the stopping point of any single one
    n_bags: int = 3
    neg_per_user: int = 1000  # training only: never-bought negatives kept per user (a uniform sample)
    seed: int = 0

    def xgb_params(self, use_gpu: bool = False) -> dict[str, Any]:
        params = {
            "objective": self.objective,
            "eta": self.eta,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "max_bin": self.max_bin,
            "tree_method": "hist",
            "num_parallel_tree": self.num_parallel_tree,
            "eval_metric": "ndcg@10-",  # "-": a query without any purchase scores 0, not 1
            "seed": self.seed,
        }
        if self.objective.startswith("rank:"):
            params.update(lambdarank_pair_method="topk", lambdarank_num_pair_per_sample=self.num_pair_per_sample)
        if use_gpu:
            params["device"] = "cuda"
        return params


WHERE = {  # a channel in a sentence: "you usually buy this <where>"
    "web": "on the web shop",
    "app": "in the app",
    "store": "in store",
    "social": "through social media",
    "service": "through customer service",
}
EXTRA_GROUP = "trend"  # the reason group of a feature outside candidates.FEATURES (recent sales, conversion)


def n_folds(params: RankerParams) -> int:
    """Folds of customers: one is held out per booster, so ``n_bags`` never exceeds them."""
    return max(int(round(1.0 / params.eval_share)), params.n_bags, 2)


# the columns of a training shard besides the features
SHARD_COLUMNS = ("label", "group", "fold", "train", "owned")


def sample_key(seed: int, group: np.ndarray, item: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per (query group, item), from a hash (splitmix64) rather than a generator's
    stream: the same row draws the same number whichever block of customers it is built in."""
    with np.errstate(over="ignore"):
        z = group.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z ^= item.astype(np.uint64) + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def sample_negatives(frame: pd.DataFrame, params: RankerParams) -> np.ndarray:
    """Which candidate rows a booster trains on: every item the user bought before, every positive and, of the other
    negatives, the ``neg_per_user`` with the smallest ``sample_key`` per query group: a uniform sample (so no feature
    is biased by it) that does not depend on how the groups were split into blocks. ``frame``: ``ui_orders``,
    ``label``, ``group`` and the item code column ``i``."""
    train = (frame["ui_orders"].to_numpy() > 0) | (frame["label"].to_numpy() > 0)
    rest = np.flatnonzero(~train)
    if not len(rest):
        return train
    group = frame["group"].to_numpy()[rest]
    key = sample_key(params.seed, group, frame["i"].to_numpy()[rest])
    order = np.lexsort((key, group))
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    nth = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    train[rest[order[nth < params.neg_per_user]]] = True
    return train


def training_frame(frame: pd.DataFrame, params: RankerParams, features: Sequence[str] = FEATURES) -> pd.DataFrame:
    """The rows of ``frame`` (candidates with ``label``, ``group`` and ``fold``, the customer's fold) the boosters
    read: those ``sample_negatives`` picks for training (``train``), and every row of the folds ``0 .. n_bags - 1``,
    each some booster's held-out customers, for early stopping on whole rankings. Columns: ``features`` (float32),
    then ``SHARD_COLUMNS``."""
    train = sample_negatives(frame, params)
    keep = train | (frame["fold"].to_numpy() < params.n_bags)
    kept = frame[keep]
    out = pd.DataFrame({f: kept[f].to_numpy(np.float32) for f in features})
    out["label"] = kept["label"].to_numpy(np.float32)
    out["group"] = kept["group"].to_numpy(np.int64)
    out["fold"] = kept["fold"].to_numpy(np.int64)
    out["train"] = train[keep]
    out["owned"] = kept["ui_orders"].to_numpy() > 0
    return out


def training_rows(
    frame: pd.DataFrame, params: RankerParams, features: Sequence[str] = FEATURES
) -> dict[str, np.ndarray]:
    """``training_frame`` of a whole frame in memory, as arrays (the reference the shards are checked against)."""
    return _arrays(training_frame(frame, params, features), features)


def _arrays(rows: pd.DataFrame, features: Sequence[str]) -> dict[str, np.ndarray]:
    return {
        "x": rows[list(features)].to_numpy(np.float32),
        "features": np.asarray(list(features)),
        "y": rows["label"].to_numpy(np.float32),
        "group": rows["group"].to_numpy(np.int64),
        "fold": rows["fold"].to_numpy(np.int64),
        "train": rows["train"].to_numpy(bool),
        "owned": rows["owned"].to_numpy(bool),
    }


@dataclass(frozen=True)
class Shards:
    """The ranker's training rows as Parquet files, each holding whole query groups in ascending order (a block of
    customers at one cut), in ascending group order across files: what the training job reads, file by file."""

    paths: tuple[str, ...]
    features: tuple[str, ...]
    rows: int

    def read(self, path: str) -> dict[str, np.ndarray]:
        """One file's rows as arrays (``training_rows``' keys)."""
        import pyarrow.parquet as pq

        return _arrays(pq.read_table(path).to_pandas(), self.features)

    def read_all(self) -> dict[str, np.ndarray]:
        """Every file's rows in one set of arrays (small data and tests only: this is what the shards avoid)."""
        parts = [self.read(p) for p in self.paths]
        out = {k: np.concatenate([part[k] for part in parts]) for k in parts[0] if k != "features"}
        return {**out, "features": np.asarray(self.features)}


class ShardWriter:
    """Writes ``training_frame`` blocks as Parquet shards into ``directory``, in the order given."""

    def __init__(self, directory: Path, params: RankerParams, features: Sequence[str]) -> None:
        self.directory = Path(directory)
        self.params = params
        self.features = tuple(features)
        self.paths: list[str] = []
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> int:
        """Sample and write one block of candidate rows; returns the rows written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = training_frame(frame, self.params, self.features)
        if not len(rows):
            return 0
        path = self.directory / f"rows-{len(self.paths):05d}.parquet"
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path, compression="lz4")
        self.paths.append(str(path))
        self.rows += len(rows)
        return len(rows)

    def shards(self) -> Shards:
        return Shards(tuple(self.paths), self.features, self.rows)


Keep = Callable[[dict[str, np.ndarray]], np.ndarray]


def _picked(shards: Shards, paths: Sequence[str], keep: Keep):
    """Each file's rows that ``keep`` picks, file by file (whole query groups), as (x, y, group); files with none are
    skipped. What both the streamed training matrix and the held early-stopping fold read."""
    for path in paths:
        rows = shards.read(path)
        m = keep(rows)
        if m.any():
            yield rows["x"][m], rows["y"][m], rows["group"][m]


def _empty(width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((0, width), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


def _row_iterator(shards: Shards, paths: Sequence[str], keep: Keep):
    """An XGBoost ``DataIter`` over ``paths``: one file per batch (whole query groups), the rows ``keep`` picks."""
    import xgboost as xgb

    names = list(shards.features)

    class Rows(xgb.DataIter):
        def __init__(self) -> None:
            self.reset()
            super().__init__(release_data=True)

        def next(self, input_data: Callable) -> bool:
            part = next(self._parts, None)
            if part is None and self._given:
                return False
            # nothing kept at all (a worker's files hold none of these rows): one empty batch
            x, y, group = part if part is not None else _empty(len(names))
            input_data(data=x, label=y, qid=group, feature_names=names)
            self._given = True
            return True

        def reset(self) -> None:
            self._parts, self._given = _picked(shards, paths, keep), False

    return Rows()


def _held_matrix(shards: Shards, paths: Sequence[str], keep: Keep):
    """The early-stopping rows ``keep`` picks from ``paths``, as a plain ``DMatrix`` (float32, one fold of the rows).

    XGBoost adds each new tree's prediction on the evaluation rows every round, which on CPU costs several times as
    much on a ``QuantileDMatrix`` (dmlc/xgboost#10793): with online_retail_ii's 512k held rows a round of the first
    ``main`` booster took 0.57-0.61 s with the quantised fold, 0.44-0.46 s with these plain rows and 0.41-0.43 s with
    no evaluation. The scores are the same (a split's threshold is a bin boundary)."""
    import xgboost as xgb

    parts = list(_picked(shards, paths, keep)) or [_empty(len(shards.features))]
    x, y, group = (np.concatenate(column) for column in zip(*parts, strict=True))
    del parts
    return xgb.DMatrix(x, label=y, qid=group, feature_names=list(shards.features))


def fit_boosters(
    shards: Shards, params: RankerParams, *, use_gpu: bool = False, shard: tuple[int, int] = (0, 1)
) -> dict[str, Any]:
    """Train ``main`` on every candidate and ``discover`` on never-bought ones: ``n_bags`` boosters each, booster
    ``b`` early-stopped on the customers of fold ``b`` and trained on the rest, with seed ``seed + b``.

    Each booster's training rows stream from the shards into an XGBoost ``QuantileDMatrix`` (one file at a time:
    only the quantised rows are held, about one byte per value); its early-stopping fold is held as float32 rows
    (``_held_matrix``). ``shard=(rank, world)`` keeps every ``world``-th file (data-parallel workers; a file holds
    whole query groups)."""
    import xgboost as xgb

    rank, world = shard
    paths = shards.paths[rank::world]
    boosters: dict[str, Any] = {}
    for name in BOOSTERS:
        boosters[name], scores = [], []
        for bag in range(params.n_bags):

            def train(r: dict[str, np.ndarray], bag: int = bag, name: str = name) -> np.ndarray:
                return (r["fold"] != bag) & r["train"] & ((name == "main") | ~r["owned"])

            def hold(r: dict[str, np.ndarray], bag: int = bag, name: str = name) -> np.ndarray:
                return (r["fold"] == bag) & ((name == "main") | ~r["owned"])

            dtrain = xgb.QuantileDMatrix(_row_iterator(shards, paths, train), max_bin=params.max_bin)
            dhold = _held_matrix(shards, paths, hold)
            booster = xgb.train(
                {**params.xgb_params(use_gpu), "seed": params.seed + bag},
                dtrain,
                num_boost_round=params.max_rounds,
                evals=[(dhold, "holdout")],
                early_stopping_rounds=params.early_stopping_rounds,
                verbose_eval=False,
            )
            del dtrain, dhold
            boosters[name].append(booster[: int(booster.best_iteration) + 1])
            scores.append(float(booster.best_score))
        boosters[f"{name}_holdout_ndcg@10"] = float(np.mean(scores))
    return boosters


def predict(boosters: Sequence[Any], x: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """The ensemble's score of each row: the mean margin of its boosters."""
    import xgboost as xgb

    d = xgb.DMatrix(x, feature_names=list(features))
    return np.mean([b.predict(d) for b in boosters], axis=0)


def save(boosters: dict[str, Any], directory, prefix: str = "") -> None:
    """Every booster as XGBoost JSON: ``{prefix}{name}_{bag}.json``."""
    for name in BOOSTERS:
        for bag, booster in enumerate(boosters[name]):
            booster.save_model(str(directory / f"{prefix}{name}_{bag}.json"))


def load(directory, prefix: str = "") -> dict[str, list[Any]]:
    """The boosters ``save`` wrote (a model saved before bagging has one booster per name, without a number)."""
    import xgboost as xgb

    out = {}
    for name in BOOSTERS:
        files = sorted(directory.glob(f"{prefix}{name}_*.json"), key=lambda f: int(f.stem.rsplit("_", 1)[1]))
        files = files or [directory / f"{prefix}{name}.json"]
        out[name] = [xgb.Booster(model_file=str(f)) for f in files]
    return out


# --- explanations ------------------------------------------------------------------------------------------------
def reason_group(feature: str) -> str:
    """The reason family a feature's contribution counts for: its candidates group; the customer's own features in
    the channel count as "channel", the other outside item features (recent sales, conversion) as "trend"."""
    if feature in FEATURE_GROUP:
        return FEATURE_GROUP[feature]
    return CHANNEL_GROUP if feature.startswith(CUSTOMER_PREFIX) else EXTRA_GROUP


def contributions(boosters: Sequence[Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and TreeSHAP contributions of each row (columns in the boosters' feature order), summed per feature
    group: rows × ``REASON_GROUPS``. The ensemble's contributions are its boosters' mean: SHAP values are linear in
    the model, so they still add up to the (mean) score."""
    import xgboost as xgb

    names = tuple(boosters[0].feature_names)
    d = xgb.DMatrix(x, feature_names=list(names), nthread=1)  # a handful of rows: threads cost more than they save
    contrib = np.mean([b.predict(d, pred_contribs=True) for b in boosters], axis=0)  # last column: bias
    # per-row sums (not a matrix product): a row's values do not depend on how many rows are explained together
    groups = np.zeros((len(x), len(REASON_GROUPS)), np.float32)
    for n, columns in enumerate(_group_columns(names)):
        if len(columns):
            groups[:, n] = contrib[:, columns].sum(axis=1)
    return contrib.sum(axis=1), groups


@lru_cache(maxsize=8)
def _group_columns(names: tuple[str, ...]) -> list[np.ndarray]:
    """For each of ``REASON_GROUPS``, the positions of the features that count for it."""
    return [np.array([n for n, f in enumerate(names) if reason_group(f) == g], dtype=np.int64) for g in REASON_GROUPS]


def describe_reason(group: str, row: dict[str, float], names: dict[str, str]) -> str | None:
    """One plain sentence for a feature group, from the candidate's feature values; None when it has nothing to say."""
    if group == "repeat" and row.get("ui_orders", 0) > 0:
        n, last, cycle = int(row["ui_orders"]), row.get("ui_days_since_last"), row.get("ui_cycle")
        if n >= 2 and cycle is not None and np.isfinite(cycle) and cycle >= 1:
            return f"you buy this about every {cycle:.0f} days (last time {last:.0f} days ago)"
        times = "once" if n == 1 else f"{n} times"
        return f"you bought this {times}, last time {last:.0f} days ago"
    if group == "together" and names.get("together"):
        return f"often bought with {names['together']}"
    if group == "similar" and names.get("similar"):
        return f"similar to {names['similar']}, which you bought"
    if group == "popular":
        share = 100.0 * row.get("i_buyers_30d", 0.0)
        return (
            f"popular this month ({share:.0f}% of this month's customers bought it)"
            if share >= 1
            else "popular this month"
        )
    if group == "trend":
        if row.get("i_trend", 1.0) > 1.1:
            return "trending: more customers are buying it this month than usual"
        return "selling steadily this week"
    if group == "price":
        return "in your usual price range"
    if group == "category" and names.get("category"):
        return f"from a range you often buy ({names['category']})"
    if group == "item" and row.get("i_repurchase", 0) > 0.2:
        return "customers who buy it tend to buy it again"
    if group == "channel" and names.get("channel"):
        where = WHERE.get(names["channel"], f"on {names['channel']}")
        if row.get("ui_orders", 0) > 0 and row.get("ch_ui_share", 0) >= 0.5:
            return f"you usually buy this {where}"
        if row.get("ch_item_lift", 1.0) >= 1.2:
            return f"a favourite of customers who shop {where}"
    return None


def explain(
    groups: np.ndarray, row: dict[str, float], names: dict[str, str], max_reasons: int = 2
) -> tuple[str, dict[str, float]]:
    """The reason (the top positive contributions in plain words) and the contributions of every group
    (``groups``: one value per ``REASON_GROUPS``, as ``contributions`` returns them)."""
    values = np.asarray(groups, dtype=np.float64)
    sentences: list[str] = []
    for n in np.argsort(-values, kind="stable"):
        if values[n] <= 0 or len(sentences) >= max_reasons:
            break
        sentence = describe_reason(REASON_GROUPS[n], row, names)
        if sentence and sentence not in sentences:
            sentences.append(sentence)
    if not sentences:
        top = REASON_GROUPS[int(np.argmax(values))]
        sentences.append(describe_reason(top, row, names) or "a good match for what you usually buy")
    reason = "; ".join(sentences)
    return reason[0].upper() + reason[1:], {g: round(float(v), 4) for g, v in zip(REASON_GROUPS, values, strict=True)}


def params_dict(params: RankerParams) -> dict[str, Any]:
    return asdict(params)
