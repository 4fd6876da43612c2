"""The skeleton recommender (popularity per segment + co-occurrence) and the serving logic around it, without Ray."""

import datetime as dt

import pandas as pd
import pytest

from omnicart.features import customer_stats, end_of_day, item_stats
from omnicart.schemas import C, F
from serving.recommend import RecommendRequest, RecommendService
from training.recommend import Recommender, fit, save


def _events(rows):
    return pd.DataFrame(rows, columns=[C.customer_id, C.item_id, C.event_type, C.event_timestamp])


@pytest.fixture
def model(tmp_path):
    t = pd.Timestamp("2026-01-01", tz="UTC")
    rows = []
    # a and b are bought together by many; c is popular with "premium"; d is rare
    for n in range(20):
        rows += [(f"u{n}", "a", "purchase", t), (f"u{n}", "b", "purchase", t)]
    for n in range(20, 35):
        rows += [(f"u{n}", "c", "purchase", t)]
    rows += [("u40", "d", "view", t)]
    events = _events(rows)
    segments = pd.DataFrame(
        {C.customer_id: [f"u{n}" for n in range(41)], C.segment: ["bargain"] * 20 + ["premium"] * 21}
    )
    items = pd.DataFrame(
        {C.item_id: list("abcd"), C.title: ["Apple", "Banana", "Cherry", "Date"], C.category: ["f"] * 4}
    )
    save(fit(events, segments, items), tmp_path / "m")
    return Recommender.from_directory(tmp_path / "m")


def test_cooccurring_item_ranks_first_and_is_explained(model):
    recs = model.recommend("bargain", ["a"], k=3)
    assert recs[0][C.item_id] == "b"
    assert "often bought with Apple" in recs[0]["reason"]
    assert len({r[C.item_id] for r in recs}) == 3


def test_segment_popularity_drives_cold_customers(model):
    assert model.recommend("premium", [], k=1)[0][C.item_id] == "c"
    assert "premium" in model.recommend("premium", [], k=1)[0]["reason"]


def test_excluded_items_never_appear(model):
    recs = model.recommend("bargain", ["a"], k=4, exclude={"b", "c"})
    assert {r[C.item_id] for r in recs}.isdisjoint({"b", "c"})


def test_service_falls_back_to_popular_for_unknown_customers(model):
    service = RecommendService(lambda: model, lambda cid: {C.segment: None, F.recent_items: None}, "7")
    response = service.recommend(RecommendRequest(customer_id="stranger", k=2))
    assert response.source == "popular" and len(response.items) == 2 and response.model_version == "7"
    assert service.fallbacks["unknown_customer"] == 1


def test_service_survives_a_feature_store_outage(model):
    def broken(_cid):
        raise ConnectionError("online store down")

    service = RecommendService(lambda: model, broken)
    response = service.recommend(RecommendRequest(customer_id="u1", k=2))
    assert response.source == "popular" and len(response.items) == 2
    assert service.fallbacks["features_error"] == 1


def test_request_validation_names_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        RecommendRequest(customer_id="", k=0)
    assert {e["loc"][0] for e in err.value.errors()} == {"customer_id", "k"}


def test_feature_windows_are_point_in_time():
    day = dt.date(2026, 1, 10)
    t = pd.Timestamp(day, tz="UTC")
    events = pd.DataFrame(
        {
            C.customer_id: ["u1", "u1", "u1", "u1"],
            C.item_id: ["a", "b", "c", "z"],
            C.event_type: ["purchase", "view", "purchase", "purchase"],
            C.event_timestamp: [t, t - pd.Timedelta(days=2), t - pd.Timedelta(days=40), t + pd.Timedelta(days=1)],
            C.price: [2.0, 3.0, 5.0, 100.0],
            C.quantity: [3, 1, 1, 1],
        }
    )
    customers = pd.DataFrame({C.customer_id: ["u1", "u2"], C.segment: ["family", "bargain"]})
    stats = customer_stats(events, customers, day, recent_n=5).set_index(C.customer_id)
    assert stats.loc["u1", F.n_purchases_30d] == 1  # 40 days ago is outside; tomorrow is the future
    assert stats.loc["u1", F.spend_30d] == 6.0
    assert stats.loc["u1", F.recent_items] == ["a", "b"]
    assert stats.loc["u2", F.n_purchases_30d] == 0 and stats.loc["u2", F.recent_items] == []
    assert (stats[C.event_timestamp] == end_of_day(day)).all()
    items = pd.DataFrame({C.item_id: ["a", "z"], C.category: ["x", "y"], C.price: [2.0, 100.0]})
    pop = item_stats(events, items, day).set_index(C.item_id)
    assert pop.loc["a", F.popularity_7d] == 1 and pop.loc["z", F.popularity_7d] == 0
