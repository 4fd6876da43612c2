"""POST /price logic without Ray: answers carry their explanation; bad requests are 4xx naming the field."""

from __future__ import annotations

import numpy as np
import pytest
from pricing_data import fitted, simulated

from omnicart.pricing.optimiser import PricingItem, PricingPolicy, violations
from omnicart.schemas import C
from serving.pricing import PriceBatchRequest, PriceRequest, PricingRequestError, PricingService


@pytest.fixture(scope="module")
def service() -> PricingService:
    _, _, catalog = simulated()
    return PricingService(load_model=fitted, catalog=catalog, policy=PricingPolicy(), model_version="7")


def test_single_price_is_guarded_and_explained(service: PricingService) -> None:
    _, _, catalog = simulated()
    row = catalog.iloc[3]
    answer = service.price({"product_id": row[C.item_id], "competitor_price": float(row[C.price])})
    assert answer.current_price == pytest.approx(float(row[C.price]))
    assert answer.suggested.price >= float(row[C.cost]) * 1.05
    assert abs(answer.suggested_price / answer.current_price - 1) <= 0.10 + 1e-9
    assert answer.elasticity is not None and answer.elasticity < 0
    assert answer.elasticity_low <= answer.elasticity <= answer.elasticity_high
    assert len(answer.drivers) == 3 and answer.reason
    assert answer.current.profit is not None and answer.suggested.revenue is not None
    assert answer.model_version == "7"
    item = PricingItem(row[C.item_id], float(row[C.price]), float(row[C.cost]), competitor_price=float(row[C.price]))
    assert not violations(item, _as_suggestion(answer), PricingPolicy())


def _as_suggestion(answer):
    from omnicart.pricing.optimiser import Outcome, Suggestion

    return Suggestion(
        product_id=answer.product_id,
        store_id=answer.store_id,
        objective=answer.objective,
        current=Outcome(**answer.current.model_dump()),
        suggested=Outcome(**answer.suggested.model_dump()),
        elasticity=answer.elasticity,
        elasticity_low=answer.elasticity_low,
        elasticity_high=answer.elasticity_high,
        drivers=[d.model_dump() for d in answer.drivers],
        binding=answer.binding,
        relaxed=answer.relaxed,
        allowed_low=answer.allowed_low,
        allowed_high=answer.allowed_high,
    )


def test_batch_prices_every_item_in_order(service: PricingService) -> None:
    _, _, catalog = simulated()
    ids = catalog[C.item_id].tolist()[:8]
    batch = service.price_batch(PriceBatchRequest(items=[PriceRequest(product_id=i, explain=False) for i in ids]))
    assert [r.product_id for r in batch.results] == ids
    assert all(r.drivers == [] and r.reason for r in batch.results)
    revenue = service.price({"product_id": ids[0], "objective": "revenue"})
    assert revenue.objective == "revenue"


def test_unknown_product_is_a_404_naming_product_id(service: PricingService) -> None:
    with pytest.raises(PricingRequestError) as caught:
        service.price({"product_id": "NOPE"})
    assert caught.value.field == "product_id" and caught.value.status_code == 404
    assert caught.value.body()["fields"][0]["field"] == "product_id"


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"product_id": "I00001", "cost": -1.0}, "cost"),
        ({"product_id": "I00001", "current_price": 0}, "current_price"),
        ({"product_id": "I00001", "min_price": 12.0, "max_price": 10.0}, "max_price"),
        ({"product_id": "I00001", "inventory": -3}, "inventory"),
        ({"product_id": "I00001", "competitor_price": float("nan")}, "competitor_price"),
        ({"product_id": "I00001", "surprise": 1}, "surprise"),
        ({"product_id": ""}, "product_id"),
        ({"product_id": "I00001", "objective": "volume"}, "objective"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(service: PricingService, request_body: dict, field: str) -> None:
    with pytest.raises(PricingRequestError) as caught:
        service.price(request_body)
    assert caught.value.field == field and caught.value.status_code == 422
    assert field in str(caught.value)


def test_a_bad_item_in_a_batch_is_named_by_index(service: PricingService) -> None:
    with pytest.raises(PricingRequestError) as caught:
        service.price_batch([{"product_id": "I00001"}, {"product_id": "I00002", "cost": -5}])
    assert caught.value.field == "items[1].cost"
    with pytest.raises(PricingRequestError) as caught:
        service.price_batch([{"product_id": "I00001"}, {"product_id": "missing"}])
    assert caught.value.field == "items[1].product_id" and caught.value.status_code == 404
    with pytest.raises(PricingRequestError, match="items"):
        service.price_batch([])


def test_a_failing_model_still_answers_with_a_guarded_price() -> None:
    class Broken:
        spec_ = fitted().spec_
        state_ = fitted().state_

        def known_product(self, product_id: str) -> bool:
            return True

        def known_store(self, store_id: str | None) -> bool:
            return True

        def series_id(self, product_id: str, store_id: str | None) -> str:
            return product_id

        def context(self, *args, **kwargs):
            raise RuntimeError("model file corrupt")

    service = PricingService(load_model=Broken, catalog={"X": {C.price: 19.5, C.cost: 9.0}})
    answer = service.price({"product_id": "X", "competitor_price": 20.0})
    assert answer.fallback is not None
    assert answer.suggested_price >= 9.0 * 1.05 and abs(answer.suggested_price - 19.5) <= 19.5 * 0.1 + 0.01
    assert np.isclose(answer.suggested_price % 1, 0.99)


def test_loads_the_registry_predictor_as_well_as_a_bare_model() -> None:
    from omnicart.pricing.pyfunc import PricingPredictor

    predictor = PricingPredictor()
    predictor.model_ = fitted()
    service = PricingService(load_model=lambda: predictor)
    assert service.model is fitted()
    assert service.price({"product_id": "I00002"}).product_id == "I00002"


@pytest.fixture(scope="module")
def with_recent_demand():
    """A model that also learned from each item's demand over the previous 7 days (as Feast serves it)."""
    from omnicart.pricing.model import DemandModel

    frame, _, catalog = simulated()
    frame = frame.sort_values([C.series_id, C.period]).copy()
    past = frame.groupby(C.series_id)[C.units].transform(lambda u: u.shift(1).rolling(7, min_periods=1).sum())
    frame["sales_7d"] = past
    model = DemandModel(n_estimators=80, max_depth=5, max_train_rows=None, nthread=1, seed=0).fit(frame)
    assert "sales_7d" in model.spec_.extras
    return model, catalog


def test_online_features_reach_the_demand_model(with_recent_demand) -> None:
    model, catalog = with_recent_demand
    product = catalog.iloc[2][C.item_id]
    units = {}
    for level in (0.0, 5000.0):
        service = PricingService(
            load_model=lambda: model, read_features=lambda ids, v=level: [{"sales_7d": v}] * len(ids)
        )
        units[level] = service.price({"product_id": product}).current.units
    assert units[5000.0] > units[0.0]  # the item's recent demand, read online, moves the forecast


def test_failing_feature_store_is_counted_and_still_answers(with_recent_demand) -> None:
    model, catalog = with_recent_demand

    def broken(ids):
        raise ConnectionError("online store down")

    service = PricingService(load_model=lambda: model, read_features=broken)
    answer = service.price({"product_id": catalog.iloc[2][C.item_id]})
    assert answer.suggested_price > 0 and answer.fallback is None  # the model's latest history filled the features
    assert service.feature_failures == 1
