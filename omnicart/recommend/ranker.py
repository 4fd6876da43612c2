"""XGBoost learning-to-rank over the candidates' features, and plain-words explanations from its own TreeSHAP.

Two models share the features of ``candidates.FEATURES`` (plus the context channel's, ``CHANNEL_FEATURES``, and any
item features the platform reads from Feast, explained as the "trend" group): ``main`` ranks every candidate (repeat
purchases and new items together), ``discover`` is trained on the items a user has never bought and ranks them when
the caller asks for new items only. Each model is the mean of ``n_bags`` boosters early-stopped on different folds
of customers. ``fit_boosters`` is plain xgboost; in a Ray Train job it runs inside an ``XGBoostTrainer`` worker
(``training.ray_job.ranker_loop``), which shards the query groups across workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
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
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    max_bin: int = 64
    num_parallel_tree: int = 1  # > 1: each round averages several subsampled trees (less variance)
    num_pair_per_sample: int = 16
    max_rounds: int = 400
    early_stopping_rounds: int = 30
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


def training_rows(
    frame: pd.DataFrame, params: RankerParams, features: Sequence[str] = FEATURES
) -> dict[str, np.ndarray]:
    """Arrays for the boosters from candidate rows with ``label``, ``group`` (query id, sorted) and ``fold`` (the
    customer's fold; folds ``0 .. n_bags - 1`` are each some booster's held-out customers).

    A booster trains on every item the user bought before, every positive and, of the other negatives, a uniform
    sample of ``neg_per_user`` per user (uniform, so no feature is biased by the sampling): the rows marked
    ``train``. The folds that some booster holds out keep all their rows, for early stopping on whole rankings."""
    rng = np.random.default_rng(params.seed)
    owned = frame["ui_orders"].to_numpy() > 0
    label = frame["label"].to_numpy()
    fold = frame["fold"].to_numpy()
    train = owned | (label > 0)
    rest = np.flatnonzero(~train)
    order = rest[rng.permutation(len(rest))]
    nth = pd.Series(frame["group"].to_numpy()[order]).groupby(frame["group"].to_numpy()[order]).cumcount().to_numpy()
    train[order[nth < params.neg_per_user]] = True
    keep = train | (fold < params.n_bags)
    kept = frame[keep]
    return {
        "x": kept[list(features)].to_numpy(np.float32),
        "features": np.asarray(list(features)),
        "y": kept["label"].to_numpy(np.float32),
        "group": kept["group"].to_numpy(np.int64),
        "fold": kept["fold"].to_numpy(np.int64),
        "train": train[keep],
        "owned": kept["ui_orders"].to_numpy() > 0,
    }


def _dmatrix(x: np.ndarray, y: np.ndarray, group: np.ndarray, features: Sequence[str]):
    import xgboost as xgb

    d = xgb.DMatrix(x, label=y, feature_names=list(features))
    _, sizes = np.unique(group, return_counts=True)  # groups are contiguous and sorted
    d.set_group(sizes)
    return d


def fit_boosters(
    rows: dict[str, np.ndarray], params: RankerParams, *, use_gpu: bool = False, shard: tuple[int, int] = (0, 1)
) -> dict[str, Any]:
    """Train ``main`` on every candidate and ``discover`` on never-bought ones: ``n_bags`` boosters each, booster
    ``b`` early-stopped on the customers of fold ``b`` and trained on the rest, with seed ``seed + b``.

    ``shard=(rank, world)`` keeps the query groups with ``group % world == rank`` (data-parallel workers)."""
    import xgboost as xgb

    rank, world = shard
    mine = rows["group"] % world == rank
    features = rows["features"].tolist()
    boosters: dict[str, Any] = {}
    for name in BOOSTERS:
        m = mine & (np.ones_like(mine) if name == "main" else ~rows["owned"])
        boosters[name], scores = [], []
        for bag in range(params.n_bags):
            held = rows["fold"] == bag
            train, hold = m & ~held & rows["train"], m & held
            dtrain = _dmatrix(rows["x"][train], rows["y"][train], rows["group"][train], features)
            dhold = _dmatrix(rows["x"][hold], rows["y"][hold], rows["group"][hold], features)
            booster = xgb.train(
                {**params.xgb_params(use_gpu), "seed": params.seed + bag},
                dtrain,
                num_boost_round=params.max_rounds,
                evals=[(dhold, "holdout")],
                early_stopping_rounds=params.early_stopping_rounds,
                verbose_eval=False,
            )
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
