"""The request's channel in the ranking: a shop whose customers buy some things in store and others on the web.

Every customer has three regular store items and three regular web items and buys each set only in its channel; an
order comes every two to three weeks, so the channel of the next order (where the request comes from) says which set
the coming fortnight holds. A ranker blind to the channel ranks both sets the same way whatever the channel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from recsys_data import PARAMS

from omnicart.schemas import C
from serving.recommend import RecommendRequest, RecommendService
from training import recommend, recsys

N_CUSTOMERS, N_ITEMS, DAYS = 80, 40, 300
START = pd.Timestamp("2026-01-01", tz="UTC")


def channel_shop(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(purchases, catalog): store items are 0-19, web items 20-39; every 15 to 25 days a customer places one order
    in one channel, of one or two of their regulars for that channel."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(N_CUSTOMERS):
        regulars = {"store": rng.choice(20, 3, replace=False), "web": 20 + rng.choice(20, 3, replace=False)}
        day = float(rng.uniform(0, 20))
        while day < DAYS:
            channel = "store" if rng.random() < 0.5 else "web"
            for item in rng.choice(regulars[channel], size=int(rng.integers(1, 3)), replace=False):
                rows.append((f"c{c}", f"i{item}", START + pd.Timedelta(days=day), channel))
            day += float(rng.uniform(15, 25))
    purchases = pd.DataFrame(rows, columns=[C.customer_id, C.item_id, C.event_timestamp, C.channel])
    catalog = pd.DataFrame(
        {
            C.item_id: [f"i{n}" for n in range(N_ITEMS)],
            C.title: [f"product number {n}" for n in range(N_ITEMS)],
            C.category: [f"range {n % 4}" for n in range(N_ITEMS)],  # ranges mix both channels
            C.price: 5.0 + np.arange(N_ITEMS) % 7,
        }
    )
    return purchases, catalog


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    purchases, catalog = channel_shop()
    model = recsys.RecSys(PARAMS).fit(purchases, catalog)
    predictor = recommend.Recommender.save(model, purchases, tmp_path_factory.mktemp("channel") / "model")
    return model, predictor, purchases


def _store_items(ids: list[str]) -> int:
    return sum(int(i[1:]) < 20 for i in ids)


def test_the_requests_channel_decides_which_regulars_come_first(fitted):
    model, predictor, purchases = fitted
    assert model.features[len(recsys.cand.FEATURES) :] == list(recsys.cand.CHANNEL_FEATURES)
    store_first = web_first = 0
    customers = sorted(purchases[C.customer_id].unique())[:20]
    for customer in customers:
        in_store = [r[C.item_id] for r in predictor.recommend(customer, 3, channel="store")]
        on_web = [r[C.item_id] for r in predictor.recommend(customer, 3, channel="web")]
        store_first += _store_items(in_store) == 3
        web_first += _store_items(on_web) == 0
    # both sets are equally regular, so a ranker blind to the channel would put at most one side first for each
    assert store_first >= 16 and web_first >= 16, (store_first, web_first)


def test_evaluation_ranks_each_customer_in_the_channel_given(fitted):
    model, _, purchases = fitted
    customers = sorted(purchases[C.customer_id].unique())[:10]
    store = model.rank_users(purchases, customers, 3, channels=dict.fromkeys(customers, "store"))
    web = model.rank_users(purchases, customers, 3, channels=dict.fromkeys(customers, "web"))
    assert all(_store_items(store[c]) > _store_items(web[c]) for c in customers)


def test_a_channel_reason_names_the_channel(fitted):
    _, predictor, purchases = fitted
    customer = sorted(purchases[C.customer_id].unique())[0]
    recs = predictor.recommend(customer, 3, channel="store")
    assert all("channel" in r["contributions"] for r in recs)
    assert any("in store" in r["reason"] for r in recs), [r["reason"] for r in recs]


def test_the_channel_features_survive_save_and_load(fitted, tmp_path):
    model, _, purchases = fitted
    loaded = recsys.RecSys.load(model.save(tmp_path / "m"))
    assert loaded.features == model.features and loaded.state_.channels == ["store", "web"]
    customer = sorted(purchases[C.customer_id].unique())[0]
    history = purchases[purchases[C.customer_id] == customer]
    for channel in ("store", "web"):
        ours = [r[C.item_id] for r in model.recommend(history, k=5, context={"channel": channel})]
        theirs = [r[C.item_id] for r in loaded.recommend(history, k=5, context={"channel": channel})]
        assert ours == theirs


def test_events_without_channels_train_without_channel_features():
    purchases, catalog = channel_shop(seed=1)
    one_channel = purchases.assign(**{C.channel: "web"})
    for events in (purchases.drop(columns=[C.channel]), one_channel):
        model = recsys.RecSys(PARAMS).fit(events, catalog)
        assert model.channel_features_ == [] and model.features == list(recsys.cand.FEATURES)


def test_the_service_ranks_in_the_channel_of_the_request(fitted):
    _, predictor, purchases = fitted
    service = RecommendService(lambda: predictor, lambda _cid: {}, "1")
    customer = sorted(purchases[C.customer_id].unique())[1]

    def top(channel: str) -> list[str]:
        request = RecommendRequest(customer_id=customer, k=3, context={"channel": channel})
        return [i.item_id for i in service.recommend(request).items]

    assert _store_items(top("store")) == 3 and _store_items(top("web")) == 0
