"""``omnicart bench recommend --input FILE --items FILE --split DATE``: canonical interaction files, read and run
through the temporal-full protocol beside its baselines (training in process here, Ray Train jobs from the CLI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from recsys_data import DAYS, PARAMS, START, channel_shop

from benchmarks import recommend as bench
from omnicart import schemas
from omnicart.recommend import recsys
from omnicart.schemas import C
from omnicart.settings import Settings


def _canonical_files(tmp_path) -> tuple:
    purchases, catalog = channel_shop()
    events = purchases.rename(columns={C.customer_id: schemas.INPUT_USER, C.event_timestamp: schemas.INPUT_TIMESTAMP})
    events[C.event_type] = "purchase"
    views = events.head(50).assign(**{C.event_type: "view", C.item_id: "never-bought"})
    path, items = tmp_path / "interactions.csv", tmp_path / "items.csv"
    pd.concat([events, views]).to_csv(path, index=False)
    catalog.to_csv(items, index=False)
    return path, items


def test_canonical_files_keep_purchases_and_name_a_missing_column(tmp_path):
    path, items = _canonical_files(tmp_path)
    interactions, catalog = bench.read_canonical(path, items)
    assert "never-bought" not in set(interactions[C.item_id])  # views are not purchases
    assert {C.customer_id, C.item_id, C.event_timestamp, C.channel} <= set(interactions.columns)
    assert len(catalog) == 40
    pd.read_csv(path).drop(columns=[schemas.INPUT_USER]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=schemas.INPUT_USER):
        bench.read_canonical(tmp_path / "bad.csv")


def test_temporal_full_on_canonical_files_ranks_in_the_channel_of_each_test_customer(tmp_path, monkeypatch):
    """The last 14 days hold about one order per customer, in one channel, of that channel's regulars: repeat
    history cannot tell which half of a customer's regulars is due, the model told the channel can. The baselines
    score the test customers a few at a time (as a file of millions of lines would have them)."""
    monkeypatch.setattr(bench, "BLOCK_CELLS", 40 * 7)  # 40 items: blocks of 7 test customers
    path, items = _canonical_files(tmp_path)
    interactions, catalog = bench.read_canonical(path, items)
    cut = START + pd.Timedelta(days=DAYS - 14)
    # the model is sized to the training history as the platform's training sizes it (small ones here, for speed)
    import training.recommend

    sized = []
    monkeypatch.setattr(training.recommend, "params_for", lambda train, seed: sized.append((train, seed)) or PARAMS)
    rows, gates = bench.temporal_full(
        Settings(home=tmp_path / "home"), interactions, catalog, cut, executor=recsys.LocalExecutor()
    )
    assert len(sized) == 1 and sized[0][1] == 0
    assert len(sized[0][0]) == (interactions[C.event_timestamp] < cut).sum()  # the rows before the split, no others
    by_model = {r["model"]: r for r in rows}
    assert list(by_model) == ["popularity", "repeat", "ease", "omnicart"]
    assert by_model["omnicart"]["stage_seconds"]["ranker"] > 0
    assert all(r["peak_rss_gb"] > 0.05 for r in rows)  # the process tree's peak while each model trained and ranked
    assert by_model["omnicart"]["train_rows"] > 0
    assert [g["metric"] for g in gates] == ["ndcg@10", "novel_ndcg@10"]
    assert all(g["rule"] == "ratio" and g["pass"] == (g["ratio"] >= g["target"]) for g in gates)
    assert all(0 < g["floor"] < 1 for g in gates)  # between chance and a perfect score, even over 40 items
    ours, repeat = by_model["omnicart"]["ndcg@10"], by_model["repeat"]["ndcg@10"]
    assert ours >= 1.2 * repeat, (ours, repeat)


def test_ranking_in_blocks_is_ranking_all_at_once():
    """Any block size gives the same top items; the discovery ranking never offers an owned item."""
    rng = np.random.default_rng(0)
    users, items = [f"u{n}" for n in range(23)], np.array([f"i{n}" for n in range(30)], dtype=object)
    scores = rng.normal(size=(23, 30)).round(1)  # rounded: ties, broken the same way in every block
    owned = sp.random(23, 30, density=0.2, random_state=1, format="csr")
    whole = bench.ranked_in_blocks(lambda part: scores[part], users, owned, items, 10, 23)
    for block in (1, 4, 7):
        assert bench.ranked_in_blocks(lambda part: scores[part], users, owned, items, 10, block) == whole
    ranked, discovered = whole
    for n, u in enumerate(users):
        assert ranked[u] == items[np.argsort(-scores[n], kind="stable")[:10]].tolist()
        assert not set(discovered[u]) & set(items[owned[n].indices])
