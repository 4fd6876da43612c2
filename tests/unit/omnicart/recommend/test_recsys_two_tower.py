"""The two-tower model reads item content, so an item nobody has bought yet is found by what it is (cold start)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from omnicart import text
from omnicart.recommend import two_tower
from omnicart.recommend.two_tower import TwoTowerIndex, TwoTowerParams
from omnicart.schemas import C

TOPICS = {
    "tea": ["green tea leaves", "black tea bags", "jasmine tea", "earl grey tea", "chamomile herbal tea", "oolong tea"],
    "garden": ["garden hose", "lawn mower", "pruning shears", "watering can", "garden gloves", "flower seeds"],
    "toys": ["wooden toy train", "teddy bear", "building blocks", "toy car", "jigsaw puzzle", "rag doll"],
    "kitchen": ["chef knife", "frying pan", "cutting board", "saucepan", "mixing bowl", "kitchen whisk"],
}
COLD = {
    "tea": "matcha green tea powder",
    "garden": "garden rake",
    "toys": "plush toy rabbit",
    "kitchen": "cast iron skillet",
}


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    titles = {f"{t}-{n}": title for t, names in TOPICS.items() for n, title in enumerate(names)}
    titles.update({f"{t}-new": title for t, title in COLD.items()})
    rows, user_topic = [], {}
    start = pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(120):
        topic = list(TOPICS)[u % len(TOPICS)]
        user_topic[u] = topic
        for order in range(5):
            day = start + pd.Timedelta(days=int(7 * order + rng.integers(0, 5)))
            for n in rng.choice(6, size=2, replace=False):
                rows.append((u, f"{topic}-{n}", day, f"{u}-{order}"))
    events = pd.DataFrame(rows, columns=[C.customer_id, C.item_id, C.event_timestamp, C.order_id])
    events[C.quantity], events[C.price] = 1, np.nan
    catalog = pd.DataFrame({C.item_id: list(titles), C.title: list(titles.values())})
    catalog[C.category] = ""
    return events, catalog, user_topic


@pytest.mark.parametrize("softmax", ["full", "sampled", "sampled-exact-history"])
def test_a_cold_item_is_retrieved_by_its_content(world, softmax):
    """Both softmaxes: over every warm item, and over the batch's targets plus a few popularity-drawn items; the
    sampled one with the history items' vectors read from the refreshed copy (the default) or computed each step."""
    events, catalog, user_topic = world
    warm_ids = np.array(sorted(events[C.item_id].unique()), dtype=object)
    cold_ids = np.array([f"{t}-new" for t in COLD], dtype=object)
    item_ids = np.concatenate([warm_ids, cold_ids])
    emb = dict(zip(catalog[C.item_id], text.encode(catalog[C.title].tolist()), strict=True))
    content, _ = two_tower.build_content(
        item_ids, catalog, np.stack([emb[i] for i in item_ids]), np.arange(len(item_ids)) < len(warm_ids)
    )
    params = TwoTowerParams(dim=32, hidden=64, epochs=40, batch_size=64, lr=5e-3, id_dropout=0.5, seed=0)
    if softmax.startswith("sampled"):  # 24 warm items: 6 draws a step, so most of the catalog is left out of a step
        params = dataclasses.replace(params, negatives=6, full_softmax_items=0)
    if softmax == "sampled-exact-history":
        params = dataclasses.replace(params, history_refresh=0)
    index_of = {item: n for n, item in enumerate(warm_ids.tolist())}
    history, targets = two_tower.training_examples(events, index_of, params)
    assert history.shape[0] > 0 and history.shape == targets.shape
    result = two_tower.fit(history, targets, content, params)
    assert result["loss_last"] < result["loss_first"]  # it learned something
    index = TwoTowerIndex.from_fit(item_ids, len(warm_ids), result, params)

    users = np.array(sorted(user_topic))
    now = events[C.event_timestamp].max() + pd.Timedelta(days=1)
    vectors = index.user_vectors(two_tower.user_weights(events, users, index_of, now, params))
    cold_columns = np.arange(len(warm_ids), len(item_ids))
    best = cold_ids[np.argmax(index.scores(vectors, cold_columns), axis=1)]
    hits = np.mean([b == f"{user_topic[u]}-new" for u, b in zip(users, best, strict=True)])
    assert hits >= 0.9, f"only {hits:.0%} of users get their topic's new item first"


def test_the_index_round_trips_through_plain_files(tmp_path):
    params = TwoTowerParams(dim=4)
    rng = np.random.default_rng(1)
    index = TwoTowerIndex(
        item_ids=np.array(["a", "b", "c"], dtype=object),
        n_warm=2,
        item_vectors=rng.normal(size=(3, 4)).astype(np.float32),
        item_bias=rng.normal(size=3).astype(np.float32),
        user_weight=rng.normal(size=(4, 4)).astype(np.float32),
        user_bias=np.zeros(4, np.float32),
        scale=7.0,
        params=params,
    )
    index.save(tmp_path)
    again = TwoTowerIndex.load(tmp_path)
    u = rng.normal(size=(2, 4))
    assert np.allclose(index.scores(u), again.scores(u))
    assert again.params == params and again.n_warm == 2


def test_the_sampled_softmax_corrects_by_each_items_chance_to_be_drawn():
    """logQ is the log of an item's chance to be among a step's draws: popular items are drawn more often and their
    logits are lowered by that much; the draws' frequencies match it."""
    counts = np.array([50, 20, 5, 1, 0])
    targets = sp.csr_matrix(
        (np.ones(counts.sum()), (np.arange(counts.sum()), np.repeat(np.arange(5), counts))), shape=(counts.sum(), 5)
    )
    sampler = two_tower._Sampler(targets, TwoTowerParams(negatives=4))
    rng = np.random.default_rng(0)
    seen = np.zeros(5)
    for _ in range(20_000):
        seen[np.unique(sampler.draw(rng))] += 1
    assert np.allclose(seen / 20_000, np.exp(sampler.log_q), atol=0.01)
    assert np.all(np.diff(sampler.log_q) < 0)  # by popularity


def _examples_by_definition(events, index, params):
    """The examples written as defined, target by target from scratch (a user's baskets² work): the reference."""
    ev = events[events[C.item_id].isin(index)]
    lines = (
        ev.groupby([C.customer_id, C.order_id], sort=False)
        .agg(t=(C.event_timestamp, "min"), items=(C.item_id, lambda s: sorted({index[i] for i in s})))
        .reset_index()
        .sort_values([C.customer_id, "t"], kind="stable")
    )
    rate = np.log(2) / params.half_life_days
    history, targets = [], []
    for _, user in lines.groupby(C.customer_id, sort=False):
        times = ((user["t"] - user["t"].iloc[0]) / pd.Timedelta(days=1)).to_numpy()
        baskets = user["items"].tolist()
        for k in list(range(1, len(baskets)))[-params.max_targets_per_user :]:
            last_seen, counts = {}, {}
            for j in range(k):
                for item in baskets[j]:
                    last_seen[item] = times[j]
                    counts[item] = counts.get(item, 0) + 1
            new = [i for i in baskets[k] if i not in last_seen]
            if new:
                recent = sorted(last_seen, key=last_seen.get, reverse=True)[: params.max_history]
                w = np.array([np.exp(-rate * (times[k] - last_seen[i])) * np.log1p(counts[i]) for i in recent])
                history.append(dict(zip(recent, w / w.sum(), strict=True)))
                targets.append(new)
    return history, targets


def test_training_examples_are_the_examples_as_defined():
    """One pass per user gives the examples of the definition: same rows in the same order, same weights."""
    rng = np.random.default_rng(3)
    n = 3000
    start = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame(
        {
            C.customer_id: rng.choice([f"c{k}" for k in range(60)], n),
            C.item_id: rng.choice([f"i{k}" for k in range(40)], n),
            C.order_id: rng.integers(0, 15, n).astype(str),  # repeated order ids: several lines per basket
            C.event_timestamp: start + pd.to_timedelta(rng.integers(0, 20, n), unit="D"),  # ties in basket time
        }
    )
    events[C.order_id] = events[C.customer_id] + "-" + events[C.order_id]
    index = {f"i{k}": k for k in range(35)}  # items i35..i39 are not in the vocabulary
    params = TwoTowerParams(max_targets_per_user=4, max_history=6, half_life_days=7.0)
    history, targets = two_tower.training_examples(events, index, params)
    want_history, want_targets = _examples_by_definition(events, index, params)
    assert history.shape == targets.shape == (len(want_history), 35) and len(want_history) > 100
    for row, (h, t) in enumerate(zip(want_history, want_targets, strict=True)):
        got = history[row]
        assert dict(zip(got.indices.tolist(), got.data.tolist(), strict=True)) == pytest.approx(h, rel=1e-6)
        assert targets[row].indices.tolist() == t
    empty = two_tower.training_examples(events[events[C.item_id] == "i39"], index, params)
    assert empty[0].shape == (0, 35) and empty[1].nnz == 0
