"""POST /price logic without Ray: answers carry their explanation; bad requests are 4xx naming the field."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pricing_data import fitted, simulated

from omnicart.pricing.optimiser import MAX_INVENTORY, MAX_PRICE, MIN_PRICE, PricingItem, PricingPolicy, violations
from omnicart.schemas import C
from serving.pricing import (
    PriceBatchRequest,
    PriceBatchResponse,
    PriceItemError,
    PriceRequest,
    PriceResponse,
    PricingRequestError,
    PricingService,
)


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


def test_a_bad_item_in_a_batch_is_answered_in_its_slot_and_the_others_are_priced(service: PricingService) -> None:
    body = {
        "items": [
            {"product_id": "I00001"},
            {"product_id": "I00002", "cost": -5},
            {"product_id": "missing"},
            {"product_id": "I00003", "current_price": 1e300},
            {"product_id": "I00004"},
            7,
        ]
    }
    batch = service.price_batch(PriceBatchRequest.model_validate(body))  # as the ingress parses it: no 422 for all
    results = batch.results
    assert len(results) == 6
    assert isinstance(results[0], PriceResponse) and isinstance(results[4], PriceResponse)
    assert [r.product_id for r in (results[0], results[4])] == ["I00001", "I00004"]
    errors = {i: r for i, r in enumerate(results) if isinstance(r, PriceItemError)}
    assert {i: (e.field, e.status_code) for i, e in errors.items()} == {
        1: ("items[1].cost", 422),
        2: ("items[2].product_id", 404),
        3: ("items[3].current_price", 422),
        5: ("items[5]", 422),
    }
    assert errors[2].product_id == "missing" and errors[5].product_id is None and errors[1].error
    assert PriceBatchResponse.model_validate(batch.model_dump()).results[1] == errors[1]  # the schema documents it
    # the same through the plain-list entry point
    listed = service.price_batch([{"product_id": "I00001"}, {"product_id": "I00002", "cost": -5}])
    assert isinstance(listed.results[0], PriceResponse) and listed.results[1].field == "items[1].cost"
    with pytest.raises(PricingRequestError, match="items"):
        service.price_batch([])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"current_price": 0.001}, "current_price"),
        ({"current_price": 5e-324}, "current_price"),
        ({"current_price": 1e8}, "current_price"),
        ({"current_price": 1e300}, "current_price"),
        ({"cost": 1e20}, "cost"),
        ({"competitor_price": float("inf")}, "competitor_price"),
        ({"min_price": 1e9}, "min_price"),
        ({"max_price": 0.001}, "max_price"),
        ({"inventory": 1e300}, "inventory"),
        ({"period": "0001-01-01"}, "period"),
        ({"period": "9999-12-31"}, "period"),
    ],
)
def test_numbers_out_of_range_are_422_naming_the_field(service: PricingService, fields: dict, field: str) -> None:
    with pytest.raises(PricingRequestError) as caught:
        service.price({"product_id": "I00001", **fields})
    assert caught.value.field == field and caught.value.status_code == 422


@pytest.mark.parametrize(
    "fields",
    [
        {"current_price": MIN_PRICE},
        {"current_price": MAX_PRICE},
        {"current_price": MAX_PRICE, "cost": MAX_PRICE, "competitor_price": MAX_PRICE, "inventory": MAX_INVENTORY},
        {"cost": 0.0, "inventory": 0.0},
        {"min_price": MAX_PRICE},
    ],
)
def test_the_ends_of_every_range_are_priced_cleanly(service: PricingService, fields: dict) -> None:
    started = time.perf_counter()
    answer = service.price({"product_id": "I00001", "explain": False, **fields})
    assert time.perf_counter() - started < 2.0  # the grid does not grow with the price (1e8 took 4.7 s before)
    assert answer.suggested_price >= MIN_PRICE and np.isfinite(answer.suggested_price) and answer.reason


def test_an_out_of_range_catalog_default_is_a_422_not_a_crash() -> None:
    _, _, catalog = simulated()
    rows = {r[C.item_id]: {C.price: r[C.price], C.cost: r[C.cost]} for r in catalog.to_dict("records")}
    first, second = list(rows)[:2]
    rows[first] = {C.price: 0.001, C.cost: 0.0}
    service = PricingService(load_model=fitted, catalog=rows)
    with pytest.raises(PricingRequestError) as caught:
        service.price({"product_id": first})
    assert caught.value.field == "current_price" and caught.value.status_code == 422
    batch = service.price_batch([{"product_id": first}, {"product_id": second}])
    assert isinstance(batch.results[0], PriceItemError) and batch.results[0].field == "items[0].current_price"
    assert isinstance(batch.results[1], PriceResponse)


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


def test_single_requests_priced_together_get_what_each_alone_gets(service: PricingService) -> None:
    """``price_each`` (what concurrent /price requests share in a replica) answers each slot as ``price`` would,
    and a request that cannot be priced gets its own error, the field named as for a single request."""
    _, _, catalog = simulated()
    rows = catalog.iloc[:6]
    requests = [PriceRequest(product_id=r[C.item_id], competitor_price=float(r[C.price])) for _, r in rows.iterrows()]
    requests.insert(2, PriceRequest(product_id="NO-SUCH-ITEM"))
    requests.insert(4, PriceRequest(product_id="NOT-IN-THE-CATALOG-EITHER"))
    together = service.price_each(requests)
    assert len(together) == len(requests)
    for request, answer in zip(requests, together, strict=True):
        try:
            alone = service.price(request)
        except PricingRequestError as error:
            assert isinstance(answer, PricingRequestError)
            assert (answer.field, answer.status_code, answer.message) == (error.field, error.status_code, error.message)
        else:
            assert answer.model_dump() == alone.model_dump()
    assert [type(a).__name__ for a in together].count("PricingRequestError") == 2
