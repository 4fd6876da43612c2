"""A two-tower retrieval model whose item tower reads content, so items without interactions still get vectors.

Item tower: an id embedding (dropped at random while training, and absent for new items) plus an MLP over the
MiniLM text embedding of the item text (``text.item_text``), a category embedding, a brand embedding, log price (with
a missing flag) and an optional image embedding. User tower: the recency-weighted mean of the item vectors of the user's
history, through a linear map. Score = scale · ⟨user, item⟩ + a content bias of the item. Trained with a softmax to
predict the items of each basket that are new to the user (discovery), from the baskets before it: over the whole
warm catalog when it has at most ``full_softmax_items`` items, otherwise over a sampled one (every target of the
batch plus ``negatives`` items drawn by popularity, with the logQ correction), so that a step's cost depends on the
batch and not on the catalog: the item tower runs with gradients only over the step's classes, and the user tower
reads its history items' vectors from a copy of the warm catalog's refreshed every ``history_refresh`` steps (without
gradients; those items learn as targets and negatives). Otherwise a step would run the tower over every item its
users' histories span, a set that grows with the catalog (in the scale benchmark's shops, 5,084 items a step with
12,500 warm ones, 6,738 with 50,000).

``fit`` is plain PyTorch (one process, or one Ray Train worker of many: it shards examples by rank and uses
``ray.train.torch.prepare_model``); ``TwoTowerIndex`` is the numpy inference side stored as plain arrays.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omnicart.schemas import C

DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class TwoTowerParams:
    dim: int = 64
    hidden: int = 128
    epochs: int = 8
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-6
    id_dropout: float = 0.5
    half_life_days: float = 60.0
    max_targets_per_user: int = 8
    max_history: int = 200
    negatives: int = 1024  # sampled softmax: items drawn per step by target popularity (logQ-corrected)
    full_softmax_items: int = 8192  # a warm catalog up to this size gets the exact softmax over every item
    # sampled softmax: steps between refreshes of the history items' vectors the user tower reads (0: every step,
    # with gradients through them, as the full softmax does)
    history_refresh: int = 32
    seed: int = 0


@dataclass
class Content:
    """Item content arrays aligned with ``item_ids``; ``warm`` marks items that may take an id embedding."""

    item_ids: np.ndarray
    text: np.ndarray  # n × DIM (omnicart.text)
    category: np.ndarray  # int codes, 0 = unknown
    brand: np.ndarray  # int codes, 0 = unknown
    price: np.ndarray  # n × 2: standardised log price, missing flag
    image: np.ndarray  # n × k (k may be 0)
    warm: np.ndarray  # bool

    @property
    def n_features(self) -> int:
        return self.text.shape[1] + self.price.shape[1] + self.image.shape[1]

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"content_{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_arrays(cls, arrays: Any) -> Content:
        return cls(**{k: arrays[f"content_{k}"] for k in cls.__dataclass_fields__})


def build_content(
    item_ids: np.ndarray, items: pd.DataFrame | None, text: np.ndarray, warm: np.ndarray, vocab: dict | None = None
) -> tuple[Content, dict[str, list[str]]]:
    """Content arrays for ``item_ids`` from the catalog (category/brand vocabularies are fitted unless given)."""
    n = len(item_ids)
    cat = pd.DataFrame(index=pd.Index(item_ids))
    if items is not None and len(items):
        known = items.drop_duplicates(C.item_id).set_index(C.item_id)
        cat = known.reindex(item_ids)
    vocab = dict(vocab or {})
    codes = {}
    for column in (C.category, C.brand):
        values = cat[column].fillna("").astype(str).to_numpy() if column in cat else np.full(n, "")
        if column not in vocab:
            vocab[column] = sorted({v for v in values if v})
        lookup = {v: k + 1 for k, v in enumerate(vocab[column])}
        codes[column] = np.array([lookup.get(v, 0) for v in values], dtype=np.int64)
    price = pd.to_numeric(cat[C.price], errors="coerce").to_numpy(np.float64) if C.price in cat else np.full(n, np.nan)
    logp = np.log(np.where(price > 0, price, np.nan))
    if "price_stats" not in vocab:
        finite = logp[np.isfinite(logp)]
        vocab["price_stats"] = [float(finite.mean()), float(finite.std() + 1e-6)] if len(finite) else [0.0, 1.0]
    mean, std = vocab["price_stats"]
    price_feats = np.stack([np.nan_to_num((logp - mean) / std), ~np.isfinite(logp)], axis=1).astype(np.float32)
    image = np.zeros((n, 0), dtype=np.float32)
    if C.image_embedding in cat and cat[C.image_embedding].notna().any():
        vectors = [v for v in cat[C.image_embedding] if isinstance(v, list | np.ndarray)]
        size = len(vectors[0])
        image = np.stack(
            [
                np.asarray(v, np.float32) if isinstance(v, list | np.ndarray) else np.zeros(size)
                for v in cat[C.image_embedding]
            ]
        ).astype(np.float32)
    content = Content(
        item_ids=np.asarray(item_ids, dtype=object),
        text=np.asarray(text, np.float32),
        category=codes[C.category],
        brand=codes[C.brand],
        price=price_feats,
        image=image,
        warm=np.asarray(warm, bool),
    )
    return content, vocab


def training_examples(
    events: pd.DataFrame, index: dict[str, int], params: TwoTowerParams
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(history, targets): per example, the recency-weighted items of a user's earlier baskets, and the items of
    the next basket that are new to the user. Normalised events; only items of ``index`` count.

    Users in order of their ids, each user's baskets in time order (ties in order of first appearance), one example
    per basket among the user's last ``max_targets_per_user`` (not the first) with an item new to the user. One pass
    over each user's baskets keeps the items seen so far (last time, number of baskets), so the cost grows with the
    lines, not with baskets² per user."""
    ev = events[events[C.item_id].isin(index)]
    shape = (0, len(index))
    if ev.empty:
        return sp.csr_matrix(shape, dtype=np.float32), sp.csr_matrix(shape, dtype=np.float32)
    by_basket = ev.groupby([C.customer_id, C.order_id], sort=False)
    lines = pd.DataFrame(
        {
            "customer": ev[C.customer_id].to_numpy(),
            "basket": by_basket.ngroup().to_numpy(),  # numbered in order of first appearance
            "t": pd.DatetimeIndex(by_basket[C.event_timestamp].transform("min")).asi8,  # the basket's time, ns
            "item": ev[C.item_id].map(index).to_numpy(np.int64),
        }
    )
    lines = lines.drop_duplicates(["basket", "item"]).sort_values(["customer", "t", "basket", "item"], kind="stable")
    basket = lines["basket"].to_numpy()
    starts = np.flatnonzero(np.r_[True, basket[1:] != basket[:-1]])  # each basket's first line
    ends = np.r_[starts[1:], len(basket)].tolist()
    customer = pd.factorize(lines["customer"].to_numpy()[starts])[0]
    firsts = np.r_[np.flatnonzero(np.r_[True, customer[1:] != customer[:-1]]), len(starts)].tolist()
    times = lines["t"].to_numpy()[starts]
    items, starts = lines["item"].tolist(), starts.tolist()
    day, rate = DAY.value, np.log(2) / params.half_life_days
    h_cols: list[np.ndarray] = []
    h_vals: list[np.ndarray] = []
    h_lens: list[int] = []
    t_cols: list[int] = []
    t_lens: list[int] = []
    for lo, hi in zip(firsts[:-1], firsts[1:], strict=True):
        first_target = max(1, hi - lo - params.max_targets_per_user)
        last_seen: dict[int, float] = {}
        counts: dict[int, int] = {}
        for j in range(hi - lo):
            now = (times[lo + j] - times[lo]) / day
            bought = items[starts[lo + j] : ends[lo + j]]
            if j >= first_target and (new := [i for i in bought if i not in last_seen]):
                recent = sorted(last_seen, key=last_seen.get, reverse=True)[: params.max_history]
                age = now - np.fromiter((last_seen[i] for i in recent), np.float64, len(recent))
                n = np.fromiter((counts[i] for i in recent), np.float64, len(recent))
                weights = np.exp(-rate * age) * np.log1p(n)
                h_cols.append(np.asarray(recent, np.int64))
                h_vals.append((weights / weights.sum()).astype(np.float32))
                h_lens.append(len(recent))
                t_cols += new
                t_lens.append(len(new))
            for i in bought:
                last_seen[i] = now
                counts[i] = counts.get(i, 0) + 1
    shape = (len(h_lens), len(index))
    if not h_lens:
        return sp.csr_matrix(shape, dtype=np.float32), sp.csr_matrix(shape, dtype=np.float32)
    history = sp.csr_matrix((np.concatenate(h_vals), np.concatenate(h_cols), np.r_[0, np.cumsum(h_lens)]), shape=shape)
    history.sort_indices()
    targets = sp.csr_matrix(
        (np.ones(len(t_cols), np.float32), np.asarray(t_cols, np.int64), np.r_[0, np.cumsum(t_lens)]), shape=shape
    )
    return history, targets


def save_task(path: Path, history: sp.csr_matrix, targets: sp.csr_matrix, content: Content) -> None:
    """One training task (``fit``'s inputs) as a plain NPZ file, so a training job is given its path, not arrays."""
    arrays = {f"history_{k}": v for k, v in _csr_arrays(history).items()}
    arrays |= {f"targets_{k}": v for k, v in _csr_arrays(targets).items()}
    content_arrays = content.arrays()
    content_arrays["content_item_ids"] = np.asarray(content.item_ids, dtype=str)
    np.savez(path, **arrays, **content_arrays)


def load_task(path: Path) -> tuple[sp.csr_matrix, sp.csr_matrix, Content]:
    """What ``save_task`` wrote: (history, targets, content)."""
    with np.load(path) as a:
        history, targets = (
            sp.csr_matrix((a[f"{n}_data"], a[f"{n}_indices"], a[f"{n}_indptr"]), shape=tuple(a[f"{n}_shape"]))
            for n in ("history", "targets")
        )
        return history, targets, Content.from_arrays(a)


def _csr_arrays(m: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {"data": m.data, "indices": m.indices, "indptr": m.indptr, "shape": np.asarray(m.shape)}


def user_weights(
    events: pd.DataFrame, users: np.ndarray, index: dict[str, int], now: pd.Timestamp, params: TwoTowerParams
) -> sp.csr_matrix:
    """users × items history weights at ``now``, as in training (recency × log count, rows summing to one)."""
    ucode = {u: k for k, u in enumerate(users.tolist())}
    ev = events[(events[C.event_timestamp] < now) & events[C.item_id].isin(index) & events[C.customer_id].isin(ucode)]
    g = ev.groupby([C.customer_id, C.item_id]).agg(last=(C.event_timestamp, "max"), n=(C.order_id, "nunique"))
    g = g.reset_index()
    age = ((now - g["last"]) / DAY).to_numpy()
    w = np.exp(-np.log(2) / params.half_life_days * age) * np.log1p(g["n"].to_numpy())
    m = sp.csr_matrix(
        (w.astype(np.float32), (g[C.customer_id].map(ucode).to_numpy(), g[C.item_id].map(index).to_numpy())),
        shape=(len(users), len(index)),
    )
    sums = np.asarray(m.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.where(sums > 0, sums, 1.0)).astype(np.float32) @ m


# --- the torch model ---------------------------------------------------------------------------------------------
def _module(content: Content, params: TwoTowerParams, n_warm: int, n_category: int, n_brand: int):
    import torch
    from torch import nn

    class TwoTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = params.dim
            self.ids = nn.Embedding(n_warm + 1, d)  # row 0: unknown id
            nn.init.normal_(self.ids.weight, std=0.01)
            self.category = nn.Embedding(n_category + 1, 16)
            self.brand = nn.Embedding(n_brand + 1, 16)
            self.content = nn.Sequential(
                nn.Linear(content.n_features + 32, params.hidden), nn.GELU(), nn.Linear(params.hidden, d)
            )
            self.bias = nn.Sequential(nn.Linear(content.n_features + 32, 32), nn.GELU(), nn.Linear(32, 1))
            self.user = nn.Linear(d, d)
            self.scale = nn.Parameter(torch.tensor(10.0))

        def items(self, dense, category, brand, ids):
            x = torch.cat([dense, self.category(category), self.brand(brand)], dim=1)
            v = self.content(x) + self.ids(ids)
            return nn.functional.normalize(v, dim=1), self.bias(x).squeeze(1)

        def users(self, history, item_vectors):
            h = torch.sparse.mm(history, item_vectors) if history.is_sparse else history @ item_vectors
            return nn.functional.normalize(self.user(h), dim=1)

    return TwoTower()


def _content_tensors(content: Content, device):
    import torch

    dense = np.concatenate([content.text, content.price, content.image], axis=1).astype(np.float32)
    return (
        torch.from_numpy(dense).to(device),
        torch.from_numpy(content.category).to(device),
        torch.from_numpy(content.brand).to(device),
    )


def fit(
    history: sp.csr_matrix,
    targets: sp.csr_matrix,
    content: Content,
    params: TwoTowerParams,
    *,
    distributed: bool = False,
) -> dict[str, Any]:
    """Train on (history, targets) over the warm items (the first ``history.shape[1]`` of ``content``) and return
    the inference arrays of every content item (``TwoTowerIndex`` fields)."""
    import torch

    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    n_warm = history.shape[1]
    device = torch.device("cpu")
    if distributed:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        history, targets = history[rank::world], targets[rank::world]
        device = ray.train.torch.get_device()
    n_category = int(content.category.max(initial=0))
    n_brand = int(content.brand.max(initial=0))
    model = _module(content, params, n_warm, n_category, n_brand)
    core = model
    if distributed:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
        core = model.module if hasattr(model, "module") else model
    model.to(device)
    dense, category, brand = _content_tensors(content, device)
    warm_ids = torch.arange(1, n_warm + 1, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True)
    n = history.shape[0]
    steps = max(1, -(-n // params.batch_size)) * params.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=params.lr, total_steps=steps, pct_start=0.1)
    sampler = _Sampler(targets, params) if n_warm > params.full_softmax_items else None
    cached = sampler is not None and params.history_refresh > 0
    history_vectors = None  # the cached copy (sampled softmax): warm items' vectors with their ids, as at inference
    losses = []
    for _ in range(params.epochs):
        order = rng.permutation(n)
        for start in range(0, n, params.batch_size):
            if cached and len(losses) % params.history_refresh == 0:
                with torch.no_grad():
                    history_vectors = core.items(dense[:n_warm], category[:n_warm], brand[:n_warm], warm_ids)[0]
            rows = order[start : start + params.batch_size]
            h_rows, t_rows = history[rows], targets[rows]
            if sampler is None:  # exact: every warm item is a class
                need = columns = np.arange(n_warm)
                log_q = None
            else:
                columns = np.union1d(t_rows.indices, sampler.draw(rng))
                # the item tower runs over these only: the classes, and the history items unless they are cached
                need = columns if cached else np.union1d(columns, h_rows.indices)
                log_q = torch.from_numpy(sampler.log_q[columns]).to(device)
            at = torch.from_numpy(need).to(device)
            ids = warm_ids[at] * (torch.rand(len(need), device=device) >= params.id_dropout)
            v, b = core.items(dense[at], category[at], brand[at], ids)
            if cached:
                u = core.users(_sparse(h_rows, None, device), history_vectors)
            else:
                u = core.users(_sparse(h_rows, need, device), v)
            c = torch.from_numpy(np.searchsorted(need, columns)).to(device)
            logits = core.scale * u @ v[c].T + b[c]
            if log_q is not None:
                logits = logits - log_q
            t = _sparse(t_rows, columns, device).to_dense()
            loss = -(torch.log_softmax(logits, dim=1) * (t / t.sum(1, keepdim=True))).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    core.eval()
    with torch.no_grad():
        ids = torch.zeros(len(content.item_ids), dtype=torch.long, device=device)
        ids[:n_warm] = warm_ids
        v, b = core.items(dense, category, brand, ids)
        v_cold, b_cold = core.items(dense, category, brand, torch.zeros_like(ids))
    state = {k: t.detach().cpu().numpy() for k, t in core.state_dict().items()}
    return {
        "item_vectors": v.cpu().numpy(),
        "item_bias": b.cpu().numpy(),
        "content_vectors": v_cold.cpu().numpy(),
        "content_bias": b_cold.cpu().numpy(),
        "user_weight": state["user.weight"],
        "user_bias": state["user.bias"],
        "scale": float(state["scale"]),
        "loss_first": float(np.mean(losses[: max(1, len(losses) // 20)])),
        "loss_last": float(np.mean(losses[-max(1, len(losses) // 20) :])),
        "examples": int(n),
    }


class _Sampler:
    """Negatives for the sampled softmax: ``negatives`` draws (with replacement) from the targets' popularity,
    smoothed by one. ``log_q`` is the log of an item's chance to be among the draws: subtracted from its logit, it
    keeps popular items from being over-penalised as negatives (the logQ correction of Yi et al. 2019)."""

    def __init__(self, targets: sp.csr_matrix, params: TwoTowerParams) -> None:
        counts = np.bincount(targets.indices, minlength=targets.shape[1]).astype(np.float64) + 1.0
        self.p = counts / counts.sum()
        self.k = params.negatives
        self.cdf = np.cumsum(self.p)
        self.log_q = np.log(-np.expm1(self.k * np.log1p(-self.p))).astype(np.float32)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return np.searchsorted(self.cdf, rng.random(self.k) * self.cdf[-1]).clip(max=len(self.p) - 1)


def _sparse(rows: sp.csr_matrix, columns: np.ndarray | None, device):
    """A batch's sparse rows restricted to ``columns`` (sorted; every stored column of ``rows`` is among them; None:
    all of them) as a torch sparse tensor of batch × len(columns)."""
    import torch

    coo = rows.tocoo()
    col = coo.col if columns is None else np.searchsorted(columns, coo.col)
    width = rows.shape[1] if columns is None else len(columns)
    index = np.stack([coo.row, col]).astype(np.int64)
    values = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(torch.from_numpy(index), values, (rows.shape[0], width)).to(device)


@dataclass
class TwoTowerIndex:
    """Inference side: item vectors and the user map, as plain arrays."""

    item_ids: np.ndarray  # every content item; the first ``n_warm`` are the trained vocabulary
    n_warm: int
    item_vectors: np.ndarray
    item_bias: np.ndarray
    user_weight: np.ndarray
    user_bias: np.ndarray
    scale: float
    params: TwoTowerParams

    @classmethod
    def from_fit(
        cls, item_ids: np.ndarray, n_warm: int, result: dict[str, Any], params: TwoTowerParams
    ) -> TwoTowerIndex:
        return cls(
            item_ids=np.asarray(item_ids, dtype=object),
            n_warm=n_warm,
            item_vectors=result["item_vectors"],
            item_bias=result["item_bias"],
            user_weight=result["user_weight"],
            user_bias=result["user_bias"],
            scale=result["scale"],
            params=params,
        )

    def user_vectors(self, weights: sp.csr_matrix) -> np.ndarray:
        """Users' vectors from their history weights over the warm items."""
        h = np.asarray(weights @ self.item_vectors[: self.n_warm])
        # in float64, rounded once: a float32 product's last bit depends on how many users are in the batch (BLAS
        # blocking), and the precomputed rankings (many users) must match a single request's exactly
        u = h.astype(np.float64) @ self.user_weight.T.astype(np.float64) + self.user_bias
        return (u / np.linalg.norm(u, axis=1, keepdims=True).clip(min=1e-9)).astype(np.float32)

    def scores(self, user_vectors: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """users × items scores; ``columns`` picks item positions (default: all)."""
        v = self.item_vectors if columns is None else self.item_vectors[columns]
        b = self.item_bias if columns is None else self.item_bias[columns]
        return (self.scale * user_vectors.astype(np.float64) @ v.T.astype(np.float64) + b).astype(np.float32)

    def save(self, directory: Path, prefix: str = "two_tower") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            directory / f"{prefix}.npz",
            item_vectors=self.item_vectors,
            item_bias=self.item_bias,
            user_weight=self.user_weight,
            user_bias=self.user_bias,
        )
        meta = {
            "item_ids": self.item_ids.tolist(),
            "n_warm": self.n_warm,
            "scale": self.scale,
            "params": asdict(self.params),
        }
        (directory / f"{prefix}.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path, prefix: str = "two_tower") -> TwoTowerIndex:
        meta = json.loads((directory / f"{prefix}.json").read_text())
        with np.load(directory / f"{prefix}.npz") as a:
            return cls(
                item_ids=np.array(meta["item_ids"], dtype=object),
                n_warm=meta["n_warm"],
                item_vectors=a["item_vectors"],
                item_bias=a["item_bias"],
                user_weight=a["user_weight"],
                user_bias=a["user_bias"],
                scale=meta["scale"],
                params=TwoTowerParams(**meta["params"]),
            )
