"""The evaluation's baselines: repeat history ranks a customer's own items by count, ties by popularity, then fills
with the most popular items; customers without history get popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from omnicart.schemas import C
from training.recommend import _baselines


def _one_by_one(purchases: pd.DataFrame, customers: list[str], k: int) -> dict[str, list[str]]:
    """The definition, customer by customer (the reference the grouped version must equal)."""
    popularity = purchases.groupby(C.item_id)[C.customer_id].nunique().sort_values(ascending=False, kind="stable")
    top = popularity.index[:k].tolist()
    rank_of = {item: n for n, item in enumerate(popularity.index)}
    out = {}
    for c in customers:
        own = purchases[purchases[C.customer_id] == c].groupby(C.item_id).size()
        mine = sorted(own.index, key=lambda i: (-own[i], rank_of[i]))[:k]
        out[c] = mine + [i for i in top if i not in set(mine)][: k - len(mine)]
    return out


def test_repeat_history_matches_its_definition_customer_by_customer() -> None:
    rng = np.random.default_rng(0)
    purchases = pd.DataFrame(
        {
            C.customer_id: [f"c{n}" for n in rng.integers(0, 40, 600)],
            C.item_id: [f"i{n:02d}" for n in rng.zipf(1.5, 600) % 30],
        }
    )
    customers = [f"c{n}" for n in range(45)]  # five without any purchase
    got = _baselines(purchases, customers, k=10)
    assert got["repeat"] == _one_by_one(purchases, customers, 10)
    top = got["popularity"]["c0"]
    assert got["repeat"]["c44"] == top and len(top) == 10
    busiest = purchases[C.customer_id].value_counts().index[0]
    own = purchases[purchases[C.customer_id] == busiest][C.item_id].value_counts()
    assert got["repeat"][busiest][0] in set(own[own == own.max()].index)
