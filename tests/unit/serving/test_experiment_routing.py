"""Online experiments over HTTP (FastAPI's test client, no Ray): the sticky split, the variant on every answer and
logged row, recommend's exploration propensities, and price tests through /price with guardrails intact."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pricing_data import fitted, simulated

from omnicart import lake
from omnicart.experiments import config as xconfig
from omnicart.experiments import offpolicy
from omnicart.pricing.optimiser import PricingPolicy
from omnicart.schemas import C, predictions_table
from omnicart.settings import Settings
from serving.app import create_api, price_champion
from serving.experiments import explore_recommend, running_experiments
from serving.prediction_log import PredictionLog
from serving.pricing import PricingService
from serving.recommend import RecommendedItem, RecommendResponse

KEY = "k" * 24
OK = {"X-API-Key": KEY}
DAY = dt.date(2026, 3, 1)


class Ranker:
    """A recommend service that ranks a fixed list; the version names which one answered."""

    def __init__(self, version: str, items: list[str]) -> None:
        self.model_version, self.items = version, items
        self.fallbacks: Counter[str] = Counter()
        self.model = object()

    def recommend(self, request):
        items = [
            RecommendedItem(item_id=i, score=1.0 / (n + 1), title=i, reason="ranked") for n, i in enumerate(self.items)
        ]
        return RecommendResponse(
            customer_id=request.customer_id,
            items=items[: request.k],
            source="personal",
            model_version=self.model_version,
        )


class Backend:
    def __init__(self, tmp_path, experiments, challengers, pricer=None, exploration=0.0) -> None:
        self.settings = Settings(home=tmp_path, recommend_exploration=exploration, recommend_exploration_pool=5)
        self.api_key = KEY
        self.predictions = PredictionLog(tmp_path / "lake", flush_seconds=3600)
        self.recommender = Ranker("1", [f"I{i}" for i in range(30)])
        self.pricer = pricer
        self.support = None
        self.store = None
        self.price_period = None
        self.experiments, self.challengers = experiments, challengers

    async def price_together(self, request):
        return price_champion(self, [request])[0]  # what the Serve replica runs for a batch of one


def recommend_experiment() -> xconfig.Experiment:
    exp = xconfig.start("recommend", "2", DAY, stages=(0.3, 0.6))
    return exp


def logged(tmp_path, family: str):
    return lake.read_table(tmp_path / "lake", predictions_table(family))


def test_split_is_sticky_by_customer_and_every_row_carries_its_variant(tmp_path) -> None:
    exp = recommend_experiment()
    challenger = Ranker("2", [f"I{i}" for i in range(30)][::-1])
    backend = Backend(tmp_path, {"recommend": exp}, {"recommend": challenger})
    client = TestClient(create_api(lambda: backend))
    seen: dict[str, str] = {}
    for n in range(400):
        cid = f"C{n % 200:04d}"
        answer = client.post("/recommend", json={"customer_id": cid, "k": 3}, headers=OK).json()
        assert answer["variant"] == exp.variant(cid)
        assert answer["model_version"] == ("2" if answer["variant"] == "challenger" else "1")
        assert seen.setdefault(cid, answer["variant"]) == answer["variant"]  # sticky
    share = np.mean([v == "challenger" for v in seen.values()])
    assert share == pytest.approx(0.3, abs=0.08)
    backend.predictions.flush()
    rows = logged(tmp_path, "recommend")
    assert len(rows) == 400 * 3
    assert set(rows[C.variant]) == {"champion", "challenger"}
    assert (rows.groupby(C.customer_id)[C.variant].nunique() == 1).all()
    assert (rows[C.latency_ms] >= 0).all()


def test_without_an_experiment_answers_carry_no_variant(tmp_path) -> None:
    backend = Backend(tmp_path, {}, {})
    answer = TestClient(create_api(lambda: backend)).post("/recommend", json={"customer_id": "C1"}, headers=OK)
    assert answer.json()["variant"] is None


def test_exploration_logs_the_propensity_of_what_was_shown(tmp_path) -> None:
    backend = Backend(tmp_path, {}, {}, exploration=0.5)
    client = TestClient(create_api(lambda: backend))
    ranked, pool = [f"I{i}" for i in range(4)], [f"I{i}" for i in range(4, 9)]
    explored = 0
    for _ in range(60):
        answer = client.post("/recommend", json={"customer_id": "C1", "k": 4}, headers=OK).json()
        items = [i["item_id"] for i in answer["items"]]
        explored += items != ranked
        for slot, item in enumerate(answer["items"]):
            expected = offpolicy.propensity(item["item_id"], slot, ranked, pool, 0.5)
            assert item["propensity"] == pytest.approx(expected)
    assert 10 < explored < 50  # about half the answers explore
    backend.predictions.flush()
    rows = logged(tmp_path, "recommend")
    assert rows[C.propensity].between(0, 1, inclusive="right").all()


def test_explore_recommend_without_epsilon_is_the_plain_ranking() -> None:
    from serving.recommend import RecommendRequest

    answer = explore_recommend(Ranker("1", ["a", "b", "c"]), RecommendRequest(customer_id="C1", k=2), 0.0, 5, None)
    assert [i.item_id for i in answer.items] == ["a", "b"] and {i.propensity for i in answer.items} == {1.0}


@pytest.fixture(scope="module")
def pricers():
    _, _, catalog = simulated()
    champion = PricingService(load_model=fitted, catalog=catalog, policy=PricingPolicy(), model_version="7")
    challenger = PricingService(
        load_model=fitted, catalog=catalog, policy=PricingPolicy(objective="revenue"), model_version="8"
    )
    return champion, challenger, catalog


def test_price_tests_run_through_price_by_product_and_keep_the_guardrails(tmp_path, pricers) -> None:
    champion, challenger, catalog = pricers
    exp = xconfig.start("pricing", "8", DAY, stages=(0.5,))
    backend = Backend(tmp_path, {"pricing": exp}, {"pricing": challenger}, pricer=champion)
    client = TestClient(create_api(lambda: backend))
    products = [str(p) for p in catalog[C.item_id].head(12)]
    variants = set()
    for product in products:
        answer = client.post("/price", json={"product_id": product}, headers=OK).json()
        assert answer["variant"] == exp.variant(product)
        assert answer["model_version"] == ("8" if answer["variant"] == "challenger" else "7")
        # the guardrails hold for both: at most ±10 % from the current price, never below cost + 5 %
        assert abs(answer["suggested_price"] / answer["current_price"] - 1) <= 0.10 + 1e-9
        assert answer["suggested_price"] >= answer["allowed_low"] - 1e-9
        variants.add(answer["variant"])
    assert variants == {"champion", "challenger"}
    # a batch mixing both variants and a bad item: each slot answered by its product's variant, errors in place
    items = [{"product_id": p} for p in products[:6]] + [{"product_id": products[0], "cost": -1}]
    batch = client.post("/price/batch", json={"items": items}, headers=OK).json()["results"]
    for product, result in zip(products[:6], batch, strict=False):
        assert result["product_id"] == product and result["variant"] == exp.variant(product)
    assert batch[6]["field"] == "items[6].cost" and batch[6]["status_code"] == 422
    backend.predictions.flush()
    rows = logged(tmp_path, "pricing")
    assert len(rows) == 12 + 6 and set(rows[C.variant]) == {"champion", "challenger"}


def test_a_challenger_that_cannot_load_leaves_the_champion_serving(tmp_path) -> None:
    xconfig.save(tmp_path, xconfig.start("recommend", "2", DAY))
    xconfig.save(tmp_path, xconfig.start("pricing", "3", DAY))

    def load(family, exp):
        if family == "pricing":
            raise RuntimeError("no such model")
        return Ranker(exp.config.challenger_version, ["a"])

    experiments, challengers = running_experiments(tmp_path, ("recommend", "pricing", "support"), load)
    assert set(experiments) == set(challengers) == {"recommend"}
    assert challengers["recommend"].model_version == "2"
