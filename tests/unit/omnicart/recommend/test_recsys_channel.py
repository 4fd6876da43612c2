"""The request's channel in the ranking: a shop whose customers buy some things in store and others on the web.

Every customer has three regular store items and three regular web items and buys each set only in its channel; an
order comes every two to three weeks, so the channel of the next order (where the request comes from) says which set
the coming fortnight holds. A ranker blind to the channel ranks both sets the same way whatever the channel.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
from recsys_data import PARAMS, channel_shop

from omnicart.recommend import recsys
from omnicart.recommend.predictor import Recommender
from omnicart.schemas import C
from serving.recommend import CustomerFeatureReader, RecommendRequest, RecommendService


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    purchases, catalog = channel_shop()
    model = recsys.RecSys(PARAMS).fit(purchases, catalog)
    predictor = Recommender.save(model, purchases, tmp_path_factory.mktemp("channel") / "model")
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


class ChannelOrders:
    """Each customer's orders in their channel over the 30 days before the asked time, from the events (what the
    Feast customer_channel view holds); records every call so the tests see which times and channels were asked."""

    def __init__(self, purchases: pd.DataFrame, fail: bool = False) -> None:
        self.purchases, self.fail = purchases, fail
        self.calls: list[tuple[pd.Timestamp, list[str | None]]] = []

    def __call__(self, customers: np.ndarray, channels: list[str | None], at: pd.Timestamp) -> pd.DataFrame:
        self.calls.append((pd.Timestamp(at), list(channels)))
        if self.fail:
            raise ConnectionError("online store down")
        ts = self.purchases[C.event_timestamp]
        recent = self.purchases[(ts < at) & (ts >= at - pd.Timedelta(days=30))]
        counts = recent.groupby([C.customer_id, C.channel]).size()
        return pd.DataFrame(
            {"orders_30d": [float(counts.get((c, ch), 0)) for c, ch in zip(customers, channels, strict=True)]}
        )


@pytest.fixture(scope="module")
def with_customer_features():
    purchases, catalog = channel_shop()
    source = ChannelOrders(purchases)
    model = recsys.RecSys(PARAMS).fit(purchases, catalog, customer_features=source)
    return model, purchases, source


def test_customer_features_are_read_at_each_cut_in_the_channel_of_the_next_order(with_customer_features):
    model, purchases, source = with_customer_features
    assert model.customer_features_ == ["cc_orders_30d"] and model.features[-1] == "cc_orders_30d"
    cuts = set(PARAMS.cuts(model.now_))
    assert {at for at, _ in source.calls} == cuts  # never a time after the labels start
    assert all(set(channels) <= {"store", "web"} for _, channels in source.calls)
    customer = sorted(purchases[C.customer_id].unique())[0]
    history = purchases[purchases[C.customer_id] == customer]
    source.calls.clear()
    recs = model.recommend(history, k=3, context={"channel": "web"})
    assert len(recs) == 3 and source.calls == [(model.now_, ["web"])]
    assert all("channel" in r["contributions"] for r in recs)


def test_customer_features_survive_save_and_load_and_a_store_outage(with_customer_features, tmp_path):
    model, purchases, source = with_customer_features
    customer = sorted(purchases[C.customer_id].unique())[2]
    predictor = Recommender.save(model, purchases, tmp_path / "model")
    assert predictor.model_.features == model.features
    predictor.use_customer_features(source)
    served = [r[C.item_id] for r in predictor.recommend(customer, 3, channel="store")]
    history = purchases[purchases[C.customer_id] == customer]
    assert served == [r[C.item_id] for r in model.recommend(history, k=3, context={"channel": "store"})]

    down = CustomerFeatureReader(ChannelOrders(purchases, fail=True))
    service = RecommendService(lambda: predictor, lambda _cid: {}, "1", customer_features=down)
    answer = service.recommend(RecommendRequest(customer_id=customer, k=3, context={"channel": "store"}))
    assert len(answer.items) == 3 and answer.fallback == "customer_features_error"
    # one failed read when the service precomputed the rankings at start, one for the request: one fallback
    assert down.failures == 2 and service.fallbacks["customer_features_error"] == 1


def test_a_store_failure_is_the_fallback_of_its_own_request_only(with_customer_features, tmp_path):
    """The Serve app answers requests in parallel threads: a read that fails for one customer while another
    customer's request is in flight is that request's fallback, never the other's."""
    model, purchases, source = with_customer_features
    failing, healthy = sorted(purchases[C.customer_id].unique())[:2]
    predictor = Recommender.save(model, purchases, tmp_path / "model")
    healthy_reading = threading.Event()

    def read(customers: np.ndarray, channels: list[str | None], at: pd.Timestamp) -> pd.DataFrame:
        if customers[0] == failing:
            raise ConnectionError("online store timed out for this read")
        healthy_reading.set()
        deadline = time.monotonic() + 30
        while reader.failures == 0 and time.monotonic() < deadline:  # stay in flight until the other read failed
            time.sleep(0.01)
        return source(customers, channels, at)

    reader = CustomerFeatureReader(read)
    # the live path (no precomputed rankings): every request reads the store, as this test needs
    service = RecommendService(lambda: predictor, lambda _cid: {}, "1", customer_features=reader, precompute=False)
    answers = {}

    def ask(customer: str) -> None:
        answers[customer] = service.recommend(RecommendRequest(customer_id=customer, k=3, context={"channel": "web"}))

    other = threading.Thread(target=ask, args=(healthy,))
    other.start()
    assert healthy_reading.wait(30)
    ask(failing)
    other.join(30)
    assert reader.failures == 1
    assert answers[failing].fallback == "customer_features_error"
    assert answers[healthy].fallback is None and len(answers[healthy].items) == 3
    assert service.fallbacks["customer_features_error"] == 1
