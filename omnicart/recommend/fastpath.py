"""Every known customer's ranking, computed once when serving starts, so that a request costs an array lookup and
the explanations of the items it returns instead of a pass over pandas, two-tower and the ranker.

For each customer known at the training cut ``build`` keeps their best ``top`` candidates as the live path ranks
them: catalog codes, scores, and the ranker features of those rows, split so that what repeats is stored once (the
item columns live in one catalog table, the customer's own columns in one row per customer). Memory grows linearly
with the customers: ``top`` × (4 + 4 + 4 × per-row features) + 4 × customer features + 4 × owned items bytes each
+ the TreeSHAP of the first ``explained`` (4 × 11 each) bytes (``FastPath.nbytes``; about 8 KB per customer with
the default 48 candidates). It is built in chunks of customers,
never holding more than one chunk's candidate frame.

The precomputed ranking depends on: the model, the customer's purchases at the cut, the items they touched lately
(online ``recent_items``, read when it is built) that they had not bought, their context channel (the
channel of their latest order), the item features read when it is built (the model then ranks with those pinned,
see ``RecSys.pin_item_features``), the customer's online features read when it is built, and nothing being
excluded before scoring (exclusions drop items after scoring in both paths). A request that differs in any of
these (another channel, ``discover``, other recent items than when it was built, a context item,
new-item slots, customer features that changed) is answered by the live path; ``Recommender.recommend`` decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from omnicart.recommend import candidates as cand
from omnicart.recommend import ranker
from omnicart.recommend.recsys import Ranked, RecSys
from omnicart.schemas import C

log = logging.getLogger(__name__)

TOP = 48  # candidates kept per customer: k * OVERFETCH (40) for the default k of 10, and room for some exclusions
# candidates per customer explained ahead (TreeSHAP costs milliseconds per request, little per row in bulk): the
# default k of 10 and room for a couple of exclusions; the others are explained when a request picks them
EXPLAINED = 12
CELLS_PER_CHUNK = 20_000_000  # customers × catalog items per chunk: the dense candidate masks stay ~100 MB


@dataclass
class Lookup:
    """One customer's stored ranking, whether it holds every candidate the live path would rank (else only the
    best ``TOP``), and the customer features it was ranked with."""

    ranked: Ranked
    complete: bool
    customer_values: np.ndarray
    touched: list[str]  # the recent items (not bought before the cut) it was ranked with, in the order used


@dataclass
class FastPath:
    customers: dict[str, int]
    codes: np.ndarray  # customers × top, int32 catalog codes best first (-1: no more candidates)
    scores: np.ndarray  # customers × top, float32
    rows: np.ndarray  # customers × top × per-row features, float32
    user_values: np.ndarray  # customers × customer features (the u_* and the online cc_* ones), float32
    item_values: np.ndarray  # catalog items × item features (the i_* and the extra ones), float32
    complete: np.ndarray  # customers, bool: every candidate is stored
    channels: np.ndarray  # customers, int16 index into channel_names (-1: none)
    channel_names: list[str]
    owned_ptr: np.ndarray  # CSR of the catalog codes each customer owns
    owned: np.ndarray
    row_columns: np.ndarray  # where each group of stored columns goes in the ranker's feature order
    user_columns: np.ndarray
    item_columns: np.ndarray
    n_online: int  # the last n_online user columns are the online customer features
    shap_scores: np.ndarray  # customers × explained, float32: the TreeSHAP score of the first candidates
    shap_groups: np.ndarray  # customers × explained × reason groups, float32
    touched_ptr: np.ndarray  # CSR of the catalog codes of the recent items each customer was ranked with
    touched: np.ndarray
    item_ids: np.ndarray  # catalog code -> item id

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.codes,
                self.scores,
                self.rows,
                self.user_values,
                self.item_values,
                self.complete,
                self.channels,
                self.owned_ptr,
                self.owned,
                self.shap_scores,
                self.shap_groups,
                self.touched_ptr,
                self.touched,
            )
        )

    def lookup(self, customer_id: str, channel: str | None = None) -> Lookup | None:
        """The stored ranking of a customer, or None when there is none for them in ``channel`` (None: their
        usual one)."""
        n = self.customers.get(customer_id)
        if n is None:
            return None
        usual = self.channel_names[self.channels[n]] if self.channels[n] >= 0 else None
        if channel and channel != usual:
            return None
        codes = self.codes[n]
        m = int(np.count_nonzero(codes >= 0))
        rows = np.empty((m, len(self.row_columns) + len(self.user_columns) + len(self.item_columns)), np.float32)
        rows[:, self.row_columns] = self.rows[n, :m]
        rows[:, self.user_columns] = self.user_values[n]
        rows[:, self.item_columns] = self.item_values[codes[:m]]
        ranked = Ranked(
            codes=codes[:m].astype(np.int64),
            scores=self.scores[n, :m],
            rows=rows,
            owned=self.owned[self.owned_ptr[n] : self.owned_ptr[n + 1]],
            channel=usual,
            discover=False,
            shap_scores=self.shap_scores[n, : min(m, self.shap_scores.shape[1])],
            shap_groups=self.shap_groups[n, : min(m, self.shap_scores.shape[1])],
        )
        online = self.user_values[n, len(self.user_columns) - self.n_online :]
        touched = self.item_ids[self.touched[self.touched_ptr[n] : self.touched_ptr[n + 1]]].tolist()
        return Lookup(ranked, bool(self.complete[n]), online, touched)


def build(
    model: RecSys,
    histories: pd.DataFrame,
    rows_of: dict[str, np.ndarray],
    *,
    top: int = TOP,
    explained: int = EXPLAINED,
    chunk: int | None = None,
    item_values: np.ndarray | None = None,
    touched: dict[str, list[str]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FastPath:
    """The fast path of every customer in ``rows_of`` (customer id -> their rows of ``histories``), ranked by
    ``model`` at its cut. ``item_values``: the extra item features the model ranks with (all catalog items).
    ``touched``: per customer, the recent items they had not bought (catalog ids), which join their history as
    ``Recommender.history`` adds them (one event each, a second before the cut)."""
    state, features = model.state_, model.features
    now = model.now_
    customers = np.array(list(rows_of), dtype=object)
    n = len(customers)
    position = {f: p for p, f in enumerate(features)}
    item_names = [f for f in features if f in state.stats.columns] + list(model.extra_features_)
    online = list(model.customer_features_)
    user_names = [*cand.FEATURE_GROUPS["user"], *online]
    row_names = [f for f in features if f not in set(item_names) | set(user_names)]
    items = np.column_stack(
        [state.stats[f].to_numpy(np.float32) for f in item_names if f in state.stats.columns]
        + ([item_values] if model.extra_features_ else [])
    ).astype(np.float32)
    codes = np.full((n, top), -1, np.int32)
    scores = np.zeros((n, top), np.float32)
    rows = np.zeros((n, top, len(row_names)), np.float32)
    users = np.full((n, len(user_names)), np.nan, np.float32)
    complete = np.zeros(n, bool)
    explained = min(explained, top)
    shap_scores = np.zeros((n, explained), np.float32)
    shap_groups = np.zeros((n, explained, len(cand.REASON_GROUPS)), np.float32)
    boosters = model.boosters_["main"]
    channel_names: list[str] = []  # every context channel met (a model without channel features still names it)
    channel_code: dict[str, int] = {}
    channels = np.full(n, -1, np.int16)
    owned_parts: list[np.ndarray] = []
    owned_sizes = np.zeros(n + 1, np.int64)
    touched = touched or {}
    touched_parts: list[np.ndarray] = []
    touched_sizes = np.zeros(n + 1, np.int64)
    before_cut = now - pd.Timedelta(seconds=1)
    row_idx = np.array([position[f] for f in row_names], dtype=np.int64)
    user_idx = np.array([position[f] for f in user_names], dtype=np.int64)
    item_idx = np.array([position[f] for f in item_names], dtype=np.int64)
    size = chunk or int(np.clip(CELLS_PER_CHUNK // max(len(state.item_ids), 1), 50, 1000))
    for start in range(0, n, size):
        chunk_users = customers[start : start + size]
        take = np.concatenate([rows_of[c] for c in chunk_users.tolist()])
        own = histories.iloc[take]
        extra = [(c, i) for c in chunk_users.tolist() for i in touched.get(c, ())]
        if extra:
            ids, items_ = zip(*extra, strict=True)
            recent = pd.DataFrame({C.customer_id: ids, C.item_id: items_, C.event_timestamp: before_cut})
            own = pd.concat([own, recent], ignore_index=True)
        events = cand.normalize_events(own)
        scored = model._frame(events, chunk_users, now, False, None, None)
        u = scored.frame[cand.USER].to_numpy()
        score = scored.frame["score"].to_numpy()
        order = np.lexsort((-score, u))  # per customer, best first; ties keep the frame's order (as the live path)
        u_sorted = u[order]
        first = np.searchsorted(u_sorted, np.arange(len(chunk_users)))
        counts = np.bincount(u, minlength=len(chunk_users))
        rank = np.arange(len(order)) - first[u_sorted]
        kept = order[rank < top]
        ku, kr = u[kept], rank[rank < top]
        g = start + ku
        codes[g, kr] = scored.frame[cand.ITEM].to_numpy()[kept]
        scores[g, kr] = score[kept]
        rows[g, kr] = scored.x[kept][:, row_idx]
        ahead = kr < explained
        shap_scores[g[ahead], kr[ahead]], shap_groups[g[ahead], kr[ahead]] = ranker.contributions(
            boosters, scored.x[kept[ahead]]
        )
        x = scored.x
        # the customer's columns are the same on each of their rows, the item columns the catalog table's
        firsts = first[counts > 0]
        users[start + u_sorted[firsts]] = x[order[firsts]][:, user_idx]
        same_user = x[:, user_idx] == users[start + u]
        same_item = x[:, item_idx] == items[scored.frame[cand.ITEM].to_numpy()]
        if not (
            (same_user | (np.isnan(x[:, user_idx]) & np.isnan(users[start + u]))).all()
            and (same_item | (np.isnan(x[:, item_idx]) & np.isnan(items[scored.frame[cand.ITEM].to_numpy()]))).all()
        ):
            raise RuntimeError("a customer or item feature varies across candidate rows; the fast path cannot split")
        if scored.customer_table is not None:
            users[start : start + len(chunk_users), len(user_names) - len(online) :] = scored.customer_table
        complete[start : start + len(chunk_users)] = counts <= top
        for k, ch in enumerate(scored.channels):
            if ch is not None and ch not in channel_code:
                channel_code[ch] = len(channel_names)
                channel_names.append(ch)
            channels[start + k] = channel_code[ch] if ch is not None else -1
        binary = scored.batch.binary
        for k in range(len(chunk_users)):
            owned = binary.indices[binary.indptr[k] : binary.indptr[k + 1]].astype(np.int32)
            owned_parts.append(owned)
            owned_sizes[start + k + 1] = len(owned)
            mine = np.array([state.index[i] for i in touched.get(chunk_users[k], ())], dtype=np.int32)
            touched_parts.append(mine)
            touched_sizes[start + k + 1] = len(mine)
        if progress is not None:
            progress(min(start + size, n), n)
    return FastPath(
        customers={c: k for k, c in enumerate(customers.tolist())},
        codes=codes,
        scores=scores,
        rows=rows,
        user_values=users,
        item_values=items,
        complete=complete,
        channels=channels,
        channel_names=channel_names,
        owned_ptr=np.cumsum(owned_sizes),
        owned=np.concatenate(owned_parts) if owned_parts else np.zeros(0, np.int32),
        row_columns=row_idx,
        user_columns=user_idx,
        item_columns=item_idx,
        n_online=len(online),
        shap_scores=shap_scores,
        shap_groups=shap_groups,
        touched_ptr=np.cumsum(touched_sizes),
        touched=np.concatenate(touched_parts) if touched_parts else np.zeros(0, np.int32),
        item_ids=np.asarray(state.item_ids, dtype=object),
    )
