"""Item features from outside the event log (the platform's Feast item windows) in the ranker: read point in time
at each training cut, saved with the model, read again when serving, and never a reason for an error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from recsys_data import PARAMS, fitted_shop

from omnicart import text
from omnicart.recommend import recsys
from omnicart.recommend.predictor import Recommender
from omnicart.schemas import C, F
from serving.recommend import ItemFeatureCache, RecommendRequest, RecommendService

NAME = "sales_7d"


class PointInTime:
    """Each item's purchases in the 7 days before the asked time, from the events (what the item window holds);
    records every call so the tests can see which times were asked for."""

    def __init__(self, purchases: pd.DataFrame) -> None:
        self.purchases = purchases.assign(**{C.event_timestamp: pd.to_datetime(purchases[C.event_timestamp], utc=True)})
        self.calls: list[pd.Timestamp] = []

    def __call__(self, item_ids: np.ndarray, at: pd.Timestamp) -> pd.DataFrame:
        self.calls.append(pd.Timestamp(at))
        ts = self.purchases[C.event_timestamp]
        recent = self.purchases[(ts < at) & (ts >= at - pd.Timedelta(days=7))]
        counts = recent.groupby(C.item_id).size()
        return pd.DataFrame({NAME: counts.reindex(item_ids).fillna(0.0).to_numpy()}, index=item_ids)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    _, purchases, catalog, _ = fitted_shop()
    source = PointInTime(purchases)
    model = recsys.RecSys(PARAMS).fit(purchases, catalog, item_features=source)
    predictor = Recommender.save(model, purchases, tmp_path_factory.mktemp("rec") / "model")
    return model, predictor, purchases, source


def _customer(purchases: pd.DataFrame) -> str:
    return str(purchases[C.customer_id].value_counts().index[0])


def test_training_reads_the_features_at_each_cut_and_ranks_with_them(fitted):
    model, _, purchases, source = fitted
    assert model.features[-1] == NAME and model.extra_features_ == [NAME]
    cuts = set(PARAMS.cuts(model.now_))
    assert model.now_ - pd.Timedelta(days=PARAMS.cut_stride_days) in cuts  # a recent cut: its window ends at now
    assert set(source.calls) == cuts  # only the cuts: never a time after the labels start
    assert all(b.feature_names == model.features for boosters in model.boosters_.values() for b in boosters)

    source.calls.clear()
    recs = model.recommend(purchases[purchases[C.customer_id] == _customer(purchases)], k=5)
    assert len(recs) == 5 and source.calls == [model.now_]  # served at the model's cut
    assert all(set(r["contributions"]) >= {"trend", "repeat"} for r in recs)


def test_a_loaded_model_keeps_its_features_and_ranks_without_a_source(fitted):
    model, predictor, purchases, source = fitted
    assert predictor.model_.extra_features_ == [NAME]
    customer = _customer(purchases)
    predictor.use_item_features(None)  # serving before the store is wired: the features are missing, not an error
    assert len(predictor.recommend(customer, k=5)) == 5
    predictor.use_item_features(source)
    with_source = [r[C.item_id] for r in predictor.recommend(customer, k=5)]
    assert with_source == [r[C.item_id] for r in model.recommend(predictor.history(customer), k=5)]


def test_the_online_cache_reads_only_stale_items():
    reads: list[list[str]] = []
    now = [0.0]

    def read(ids: list[str]) -> list[dict]:
        reads.append(list(ids))
        return [{NAME: float(len(i)), C.item_id: i} for i in ids]

    cache = ItemFeatureCache(read, [NAME], ttl_s=60.0, clock=lambda: now[0])
    first = cache(np.array(["a", "bb"]), pd.Timestamp.now(tz="UTC"))
    assert first[NAME].tolist() == [1.0, 2.0]
    cache(np.array(["bb", "ccc"]), pd.Timestamp.now(tz="UTC"))
    now[0] = 61.0
    cache(np.array(["a"]), pd.Timestamp.now(tz="UTC"))
    assert reads == [["a", "bb"], ["ccc"], ["a"]]


def test_an_online_store_outage_answers_and_is_counted(fitted):
    _, predictor, purchases, _ = fitted

    def down(_ids: list[str]) -> list[dict]:
        raise ConnectionError("online store unreachable")

    service = RecommendService(
        lambda: predictor,
        lambda _cid: {C.segment: "family", F.recent_items: []},
        "7",
        item_features=ItemFeatureCache(down, [NAME]),
    )
    response = service.recommend(RecommendRequest(customer_id=_customer(purchases), k=5))
    assert len(response.items) == 5 and response.source == "personal"
    assert response.fallback == "item_features_error" and service.fallbacks["item_features_error"] == 1


def test_a_catalog_whose_every_item_sold_trains_and_recommends():
    """No cold items: no cold text vectors and no new-item slots, but training and recommending still work."""
    _, purchases, catalog, _ = fitted_shop()
    sold = catalog[catalog[C.item_id].isin(set(purchases[C.item_id]))]
    model = recsys.RecSys(PARAMS).fit(purchases, sold)
    assert model.cold_text_.shape == (0, text.DIM)
    recs = model.recommend(purchases[purchases[C.customer_id] == _customer(purchases)], k=5, context={"new_items": 2})
    assert len(recs) == 3 and not any(r["reason"].startswith("New in the catalog") for r in recs)


def test_a_store_outage_while_training_fails_the_run_instead_of_learning_from_missing_values():
    _, purchases, catalog, _ = fitted_shop()
    source = PointInTime(purchases)

    def flaky(item_ids: np.ndarray, at: pd.Timestamp) -> pd.DataFrame:
        if source.calls:  # the first cut reads, the second finds the store down
            source.calls.append(pd.Timestamp(at))
            raise ConnectionError("offline store unreachable")
        return source(item_ids, at)

    with pytest.raises(recsys.FeatureSourceError, match="item features unavailable at .*offline store unreachable"):
        recsys.RecSys(PARAMS).fit(purchases, catalog, item_features=flaky)
    assert len(source.calls) == 2
