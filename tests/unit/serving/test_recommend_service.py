"""The recommend family as served: the two-stage model behind ``RecommendService``, its rules and its fallbacks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from recsys_data import fitted_shop

from omnicart.recommend.predictor import Recommender
from omnicart.schemas import C, F
from serving.recommend import (
    RecommendRequest,
    RecommendRequestError,
    RecommendService,
    apply_rules,
    popular_items,
)
from training import recommend


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The shared small-shop recommender, saved and loaded back as serving loads it."""
    model, purchases, catalog, repeats = fitted_shop()
    predictor = Recommender.save(model, purchases, tmp_path_factory.mktemp("recommend-home") / "model")
    return predictor, purchases, catalog, repeats


def _service(predictor, features=None, unavailable=frozenset(), popular=None, precompute=True):
    return RecommendService(
        lambda: predictor,
        features or (lambda _cid: {C.segment: "family", F.recent_items: []}),
        "3",
        unavailable=lambda: set(unavailable),
        popular=popular,
        precompute=precompute,
    )


def _ids(response) -> list[str]:
    return [i.item_id for i in response.items]


def test_a_regular_purchase_ranks_high(shop):
    predictor, purchases, _, repeats = shop
    bought = purchases.groupby([C.customer_id, C.item_id]).size()
    regulars = [
        (r[C.customer_id], r[C.item_id])
        for r in repeats.to_dict("records")
        if r[C.cycle_days] <= 14 and bought.get((r[C.customer_id], r[C.item_id]), 0) >= 3
    ]
    assert len(regulars) >= 10
    service = _service(predictor)
    ranks = []
    for customer, item in regulars:
        items = _ids(service.recommend(RecommendRequest(customer_id=customer, k=10)))
        ranks.append(items.index(item) if item in items else 99)
    assert np.mean(np.array(ranks) < 3) >= 0.8, f"ranks of regular purchases: {ranks}"
    customer, item = regulars[0]
    answer = service.recommend(RecommendRequest(customer_id=customer, k=10))
    regular = next(i for i in answer.items if i.item_id == item)
    assert answer.source == "personal" and answer.fallback is None and answer.model_version == "3"
    assert "you buy this about every" in regular.reason.lower() or "you bought this" in regular.reason.lower()


def test_an_unavailable_item_never_appears(shop):
    predictor, purchases, _, _ = shop
    customers = purchases[C.customer_id].value_counts().index[:5].tolist()
    first = {c: _ids(_service(predictor).recommend(RecommendRequest(customer_id=c, k=10))) for c in customers}
    gone = {i for items in first.values() for i in items[:3]}
    service = _service(predictor, unavailable=gone)
    for c in customers:
        for request in (
            RecommendRequest(customer_id=c, k=10),
            RecommendRequest(customer_id=c, k=10, exclude_bought=True, max_per_category=2),
            RecommendRequest(customer_id=c, k=10, boost=sorted(gone)),
            RecommendRequest(customer_id="stranger", k=10, context={"item_id": first[c][0]}),
        ):
            items = _ids(service.recommend(request))
            assert len(items) == 10 and not gone & set(items)
    excluded = service.recommend(
        RecommendRequest(customer_id=customers[0], k=10, exclude_items=first[customers[0]][3:6])
    )
    assert not set(first[customers[0]][3:6]) & set(_ids(excluded))


def test_every_item_has_an_explanation(shop):
    predictor, purchases, _, _ = shop
    service = _service(predictor)
    answers = [service.recommend(RecommendRequest(customer_id=c, k=10)) for c in purchases[C.customer_id].unique()[:5]]
    answers.append(service.recommend(RecommendRequest(customer_id="nobody", k=10)))
    for answer in answers:
        assert len(answer.items) == 10
        for item in answer.items:
            assert item.reason.strip() and item.contributions
            assert all(np.isfinite(v) for v in item.contributions.values())
    regular = purchases[C.customer_id].value_counts().index[0]  # the heaviest buyer: own repeats lead some items
    items = service.recommend(RecommendRequest(customer_id=regular, k=10)).items
    repeat_led = [i.reason for i in items if max(i.contributions, key=i.contributions.get) == "repeat"]
    assert repeat_led, [i.contributions for i in items]
    # the largest TreeSHAP contribution, in plain words
    assert all(reason.lower().startswith("you b") for reason in repeat_led), repeat_led


def test_exclude_bought_and_diversity(shop):
    predictor, purchases, _, _ = shop
    customer = purchases[C.customer_id].value_counts().index[0]
    owned = set(purchases.loc[purchases[C.customer_id] == customer, C.item_id])
    service = _service(predictor)
    fresh = service.recommend(RecommendRequest(customer_id=customer, k=10, exclude_bought=True))
    assert len(fresh.items) == 10 and not owned & set(_ids(fresh))
    diverse = service.recommend(RecommendRequest(customer_id=customer, k=8, max_per_category=2))
    assert len(diverse.items) == 8
    assert max(Counter(i.category for i in diverse.items).values()) <= 2


def test_boost_puts_items_first_and_bury_puts_them_last(shop):
    predictor, purchases, _, _ = shop
    customer = purchases[C.customer_id].value_counts().index[1]
    service = _service(predictor)
    plain = _ids(service.recommend(RecommendRequest(customer_id=customer, k=10)))
    ruled = service.recommend(RecommendRequest(customer_id=customer, k=10, boost=[plain[7]], bury=plain[:2]))
    ids = _ids(ruled)
    assert ids[0] == plain[7] and "featured" in ruled.items[0].reason
    assert not set(plain[:2]) & set(ids[:8])


def test_rules_alone():
    items = [{C.item_id: f"i{n}", C.category: "ab"[n % 2], "reason": "r"} for n in range(8)]
    picked = apply_rules(items, 4, boost=["i5"], bury=["i0"], max_per_category=3)
    assert [i[C.item_id] for i in picked] == ["i5", "i1", "i2", "i3"]


def test_unknown_customer_gets_context_or_popular_items_and_is_counted(shop):
    predictor, purchases, _, _ = shop
    service = _service(predictor, features=lambda _cid: {C.segment: None, F.recent_items: None})
    popular = service.recommend(RecommendRequest(customer_id="stranger", k=5))
    assert popular.source == "popular" and popular.fallback == "unknown_customer" and len(popular.items) == 5
    item = purchases[C.item_id].value_counts().index[0]
    context = service.recommend(RecommendRequest(customer_id="stranger", k=5, context={"item_id": item}))
    assert context.source == "context" and len(context.items) == 5 and _ids(context) != _ids(popular)
    assert service.fallbacks["unknown_customer"] == 1


def test_failures_fall_back_and_are_counted(shop):
    predictor, purchases, catalog, _ = shop
    customer = purchases[C.customer_id].iloc[0]

    def outage(_cid):
        raise ConnectionError("online store down")

    service = _service(predictor, features=outage)
    answer = service.recommend(RecommendRequest(customer_id=customer, k=5))
    assert answer.source == "personal" and answer.fallback == "features_error" and len(answer.items) == 5
    assert service.fallbacks["features_error"] == 1

    class Broken:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def recommend(self, *args, **kwargs):
            raise RuntimeError("model bug")

    broken = _service(Broken())
    answer = broken.recommend(RecommendRequest(customer_id=customer, k=5))
    assert answer.source == "popular" and answer.fallback == "model_error" and len(answer.items) == 5

    def missing():
        raise LookupError("no champion")

    popular = popular_items(purchases, catalog)
    none = RecommendService(
        missing, lambda _cid: {}, None, popular=popular, unavailable=lambda: {popular[0][C.item_id]}
    )
    answer = none.recommend(RecommendRequest(customer_id=customer, k=5))
    assert answer.fallback == "no_model" and len(answer.items) == 5 and popular[0][C.item_id] not in _ids(answer)
    assert all(i.reason for i in answer.items) and none.fallbacks["no_model"] == 1


def test_bad_requests_name_the_field(shop):
    predictor, _, _, _ = shop
    with pytest.raises(RecommendRequestError) as err:
        _service(predictor).recommend(RecommendRequest(customer_id="c", context={"item_id": "NO-SUCH-ITEM"}))
    assert err.value.status_code == 404 and err.value.body() == {"error": "unknown item", "field": "context.item_id"}
    with pytest.raises(ValidationError) as invalid:
        RecommendRequest(customer_id="", k=0, max_per_category=0, context={"channel": "fax"})
    assert {".".join(map(str, e["loc"])) for e in invalid.value.errors()} == {
        "customer_id",
        "k",
        "max_per_category",
        "context.channel",
    }


def test_the_registry_model_answers_through_pyfunc(shop):
    predictor, purchases, _, _ = shop
    customer = purchases[C.customer_id].iloc[0]
    out = predictor.predict(None, pd.DataFrame({C.customer_id: [customer, "stranger"]}), {"k": 3})
    assert len(out) == 2 and all(len(items) == 3 for items in out)
    signature = recommend.signature(predictor)
    assert signature.inputs.input_names() == [C.customer_id] and signature.params is not None


def test_the_precomputed_rankings_answer_as_the_live_path(shop):
    """The fast path (rankings precomputed at start) returns the same items, order, scores, reasons and
    contributions as the live path for every kind of request it answers, and the live path answers the rest."""
    predictor, purchases, _, _ = shop
    fast = _service(predictor)
    assert predictor.fast_ is not None and len(predictor.fast_.customers) == purchases[C.customer_id].nunique()
    live_model = Recommender.from_directory(predictor.model_dir_)  # the same saved model, never precomputed
    live = _service(live_model, precompute=False)
    assert getattr(live_model, "fast_", None) is None
    customers = purchases[C.customer_id].value_counts().index[:12].tolist()
    for c in customers:
        top = _ids(live.recommend(RecommendRequest(customer_id=c, k=10)))
        owned = sorted(set(purchases.loc[purchases[C.customer_id] == c, C.item_id]))
        for request in (
            RecommendRequest(customer_id=c, k=10),
            RecommendRequest(customer_id=c, k=5, exclude_items=top[:3]),
            RecommendRequest(customer_id=c, k=10, max_per_category=2, boost=top[5:6], bury=top[:1]),
            RecommendRequest(customer_id=c, k=30),
            RecommendRequest(customer_id=c, k=10, exclude_bought=True),
            RecommendRequest(customer_id=c, k=10, context={"item_id": owned[0]}),
            RecommendRequest(customer_id=c, k=10, context={"channel": "social"}),
        ):
            a, b = fast.recommend(request), live.recommend(request)
            assert a.model_dump() == b.model_dump(), (c, request)
    # recent items the customer had bought before the cut change nothing; a new one joins the history (live path)
    c = customers[0]
    owned = sorted(set(purchases.loc[purchases[C.customer_id] == c, C.item_id]))
    fresh = next(i for i in predictor.model_.state_.item_ids if i not in owned)
    plain = fast.recommend(RecommendRequest(customer_id=c, k=10))
    for recent in ([owned[0]], [fresh]):
        features = {C.segment: "family", F.recent_items: recent}
        a = _service(predictor, features=lambda _cid, f=features: f).recommend(RecommendRequest(customer_id=c, k=10))
        b = _service(live_model, features=lambda _cid, f=features: f, precompute=False).recommend(
            RecommendRequest(customer_id=c, k=10)
        )
        assert a.model_dump() == b.model_dump()
        assert (a.model_dump() == plain.model_dump()) == (recent == [owned[0]])


def test_new_items_take_their_slots_with_a_reason(shop):
    predictor, purchases, catalog, _ = shop
    model = predictor.model_
    cold = set(model.cold_items_)
    assert cold, "the simulated catalog has items without sales"
    customer = purchases[C.customer_id].value_counts().index[0]
    service = _service(predictor)
    answer = service.recommend(RecommendRequest(customer_id=customer, k=10, new_items=3))
    assert len(answer.items) == 10
    new = [i for i in answer.items if i.item_id in cold]
    assert [i.item_id for i in answer.items[-3:]] == [i.item_id for i in new] and len(new) == 3
    assert all(i.reason.startswith("New in the catalog") for i in new)
    assert not cold & set(_ids(service.recommend(RecommendRequest(customer_id=customer, k=10))))
    # excluded new items are not proposed, and new_items never exceeds k
    gone = [i.item_id for i in new]
    again = service.recommend(RecommendRequest(customer_id=customer, k=10, new_items=3, exclude_items=gone))
    assert not set(gone) & set(_ids(again))
    with pytest.raises(ValidationError) as err:
        RecommendRequest(customer_id=customer, k=2, new_items=3)
    assert err.value.errors()[0]["loc"] == ("new_items",)


def test_time_requests_reports_latency(shop):
    from serving.recommend import time_requests

    predictor, purchases, _, _ = shop
    service = _service(predictor)
    stats = time_requests(service, [RecommendRequest(customer_id=c) for c in purchases[C.customer_id].unique()[:20]])
    assert stats["n"] == 20 and 0 < stats["p50_ms"] <= stats["p99_ms"]


def _count_live_rankings(predictor) -> list[int]:
    """Count the live path's rankings of ``predictor`` from now on: the one-element list holds the count."""
    count = [0]
    original = predictor.model_.recommend

    def counting(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    predictor.model_.recommend = counting
    return count


def test_recent_items_read_at_start_keep_the_fast_path_until_they_change(shop):
    """A customer who viewed items they had not bought is ranked with them at start (one read for many
    customers), answers from the precomputed ranking exactly as the live path would, and goes live when an event
    changes their recent items."""
    predictor, purchases, _, _ = shop
    customers = purchases[C.customer_id].value_counts().index[:6].tolist()
    catalog = predictor.model_.state_.item_ids
    recent: dict[str, list[str]] = {}
    for n, c in enumerate(customers):
        owned = set(purchases.loc[purchases[C.customer_id] == c, C.item_id])
        fresh = [i for i in catalog if i not in owned]
        recent[c] = [fresh[n], sorted(owned)[0], fresh[n + 1]]  # two new items and one bought before the cut
    features = {c: {C.segment: "family", F.recent_items: r} for c, r in recent.items()}

    def read(cid):
        return features.get(cid, {C.segment: "family", F.recent_items: []})

    reads: list[int] = []

    def read_many(ids):
        reads.append(len(ids))
        return [read(i) for i in ids]

    fast_model = Recommender.from_directory(predictor.model_dir_)
    fast = RecommendService(lambda: fast_model, read, "3", read_features_many=read_many)
    live_model = Recommender.from_directory(predictor.model_dir_)
    live = RecommendService(lambda: live_model, read, "3", precompute=False)
    assert sum(reads) == purchases[C.customer_id].nunique() and len(reads) < sum(reads)
    ranked_live = _count_live_rankings(fast_model)
    for c in customers:
        assert fast_model.fast_.lookup(c).touched == [recent[c][0], recent[c][2]]
        for request in (RecommendRequest(customer_id=c, k=10), RecommendRequest(customer_id=c, k=5)):
            assert fast.recommend(request).model_dump() == live.recommend(request).model_dump()
    assert ranked_live[0] == 0, "every request above is one the precomputed rankings answer"
    # an event since the start: the customer's recent items differ, the live path answers, as the live service does
    c = customers[0]
    features[c] = {C.segment: "family", F.recent_items: [recent[c][2], recent[c][0]]}
    request = RecommendRequest(customer_id=c, k=10)
    assert fast.recommend(request).model_dump() == live.recommend(request).model_dump()
    assert ranked_live[0] == 1


def test_newcomers_with_recent_items_are_ranked_ahead_as_the_live_path_would(shop):
    """A customer without a purchase before the cut who has touched items since (named by ``newcomers``) gets a
    precomputed ranking of those items: the same answer as the live path, without ranking live; a newcomer without
    recent items is not stored, and one whose recent items change goes live."""
    predictor, purchases, _, _ = shop
    catalog = predictor.model_.state_.item_ids
    assert "N-1" not in set(purchases[C.customer_id])
    features = {
        "N-1": {C.segment: "family", F.recent_items: [catalog[0], catalog[3]]},
        "N-2": {C.segment: "family", F.recent_items: ["NO-SUCH-ITEM"]},  # nothing the model knows
    }

    def read(cid):
        return features.get(cid, {C.segment: "family", F.recent_items: []})

    asked: list[object] = []

    def newcomers(cut):
        asked.append(cut)
        return ["N-1", "N-2", "N-3"]

    fast_model = Recommender.from_directory(predictor.model_dir_)
    fast = RecommendService(
        lambda: fast_model, read, "3", read_features_many=lambda ids: [read(i) for i in ids], newcomers=newcomers
    )
    live_model = Recommender.from_directory(predictor.model_dir_)
    live = RecommendService(lambda: live_model, read, "3", precompute=False)
    assert asked == [fast_model.cut]
    assert fast_model.fast_.lookup("N-1").touched == [catalog[0], catalog[3]]
    assert fast_model.fast_.lookup("N-2") is None and fast_model.fast_.lookup("N-3") is None
    ranked_live = _count_live_rankings(fast_model)
    for request in (RecommendRequest(customer_id="N-1", k=10), RecommendRequest(customer_id="N-1", k=4)):
        a, b = fast.recommend(request), live.recommend(request)
        assert a.source == "personal" and a.model_dump() == b.model_dump()
    assert ranked_live[0] == 0
    features["N-1"] = {C.segment: "family", F.recent_items: [catalog[3]]}  # an event since the start
    request = RecommendRequest(customer_id="N-1", k=10)
    assert fast.recommend(request).model_dump() == live.recommend(request).model_dump()
    assert ranked_live[0] == 1


def test_active_since_names_the_customers_with_events_from_the_cut_day_on(tmp_path):
    import datetime as dt
    from types import SimpleNamespace

    from omnicart import lake, schemas
    from serving.recommend import active_since

    for day, ids in ((dt.date(2026, 3, 1), ["A", "B"]), (dt.date(2026, 3, 2), ["B", "C", None])):
        lake.write_partition(tmp_path, schemas.EVENTS, day, pd.DataFrame({C.customer_id: ids, C.item_id: "I1"}))
    settings = SimpleNamespace(lake_dir=tmp_path)
    assert active_since(settings, pd.Timestamp("2026-03-02 00:00")) == ["B", "C"]
    assert active_since(settings, pd.Timestamp("2026-03-01 12:00")) == ["A", "B", "C"]
    assert active_since(settings, pd.Timestamp("2026-03-03")) == []
