"""Serving's prediction log: answers become lake rows that monitoring reads back (prediction drift, outcomes), written
off the request path by size or time, and a broken lake never reaches the handler."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pandas as pd
import pytest

from monitoring import families
from omnicart import lake, schemas
from omnicart.schemas import C
from omnicart.settings import Settings
from serving.prediction_log import PredictionLog
from serving.pricing import OutcomeModel, PriceRequest, PriceResponse
from serving.recommend import RecommendedItem, RecommendRequest, RecommendResponse
from serving.support import FeedbackRequest, SupportRequest, SupportResponse

DAY = dt.date(2026, 1, 12)
NOON = dt.datetime(2026, 1, 12, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path / "home")
    items = pd.DataFrame({C.item_id: ["I1", "I2", "I3"], C.category: ["toys", "books", "toys"]})
    lake.write_partition(s.lake_dir, schemas.ITEMS, DAY, items)
    return s


def log_for(settings: Settings, **kwargs) -> PredictionLog:
    kwargs.setdefault("flush_seconds", 3600)  # only explicit flushes, unless a test says otherwise
    return PredictionLog(settings.lake_dir, clock=lambda: NOON, **kwargs)


def recommendation(customer: str, items: list[str], source: str = "personal") -> RecommendResponse:
    ranked = [RecommendedItem(item_id=i, score=1.0 / (n + 1), title=i, reason="r") for n, i in enumerate(items)]
    return RecommendResponse(customer_id=customer, items=ranked, source=source, model_version="4")


def price_answer(product: str, current: float, suggested: float, units: float | None) -> PriceResponse:
    outcome = OutcomeModel(price=current, units=units, revenue=None, profit=None)
    return PriceResponse(
        product_id=product,
        store_id=None,
        objective="profit",
        current_price=current,
        suggested_price=suggested,
        current=outcome,
        suggested=outcome.model_copy(update={"price": suggested, "units": None if units is None else units * 0.9}),
        elasticity=-1.5,
        elasticity_low=None,
        elasticity_high=None,
        drivers=[],
        binding=[],
        relaxed=[],
        allowed_low=current * 0.8,
        allowed_high=current * 1.2,
        fallback=None if units is not None else "model_failed",
        reason="r",
        model_version="2",
    )


def test_recommendations_round_trip_to_the_hit_rate_of_the_next_day(settings):
    log = log_for(settings)
    log.recommend(RecommendRequest(customer_id="C1", k=2), recommendation("C1", ["I1", "I2"]))
    log.recommend(RecommendRequest(customer_id="C2", k=2), recommendation("C2", ["I2", "I3"]))
    assert log.flush() == 4 and log.counts["written"] == 4

    logged = families.load_predictions(settings, "recommend", DAY, DAY)
    assert list(logged[C.rank]) == [1, 2, 1, 2] and set(logged[C.model_version]) == {"4"}
    assert list(logged[C.category]) == ["toys", "books", "books", "toys"]  # joined for prediction drift
    # The next day's purchases: C1 bought a recommended item, C2 bought something else.
    buys = pd.DataFrame({C.customer_id: ["C1", "C2"], C.item_id: ["I2", "I1"], C.event_type: ["purchase", "purchase"]})
    lake.write_partition(settings.lake_dir, schemas.EVENTS, DAY + dt.timedelta(days=1), buys)
    outcomes = families.recommend_outcomes(settings, DAY + dt.timedelta(days=1))
    assert families.recommend_metrics(outcomes) == {"hit_rate": (0.5, 2)}


def test_an_unknown_customers_id_is_never_written(settings):
    log = log_for(settings)
    log.recommend(
        RecommendRequest(customer_id="jane@example.com"), recommendation("jane@example.com", ["I1"], "popular")
    )
    log.flush()
    logged = families.load_predictions(settings, "recommend", DAY, DAY)
    assert logged[C.customer_id].isna().all() and list(logged[C.source]) == ["popular"]


def test_prices_are_logged_for_the_period_priced_and_scored_against_its_sales(settings):
    log = log_for(settings)
    period = DAY + dt.timedelta(days=1)
    requests = [PriceRequest(product_id="I1", period=period), PriceRequest(product_id="I2", competitor_price=9.0)]
    answers = [price_answer("I1", 10.0, 11.0, 4.0), price_answer("I2", 20.0, 19.0, None)]
    log.pricing(requests, answers, default_period=pd.Timestamp(period))
    log.flush()

    assert lake.partitions(settings.lake_dir, schemas.predictions_table("pricing")) == [period]
    logged = families.load_predictions(settings, "pricing", period, period)
    assert list(logged[C.price]) == [11.0, 19.0] and list(logged[C.current_price]) == [10.0, 20.0]
    assert (pd.to_datetime(logged[C.event_timestamp]).dt.date == period).all()
    assert list(logged[C.competitor_price].isna()) == [True, False]
    sales = pd.DataFrame({C.item_id: ["I1", "I2"], C.units_sold: [5, 7]})
    lake.write_partition(settings.lake_dir, schemas.PRICES, period, sales)
    outcomes = families.pricing_outcomes(settings, period)
    # I2's answer came from the guarded fallback (no forecast): only I1 is scored, |4 - 5| / 5
    assert families.pricing_metrics(outcomes) == {"wape": (0.2, 1)}


def test_batch_slots_that_could_not_be_priced_are_not_logged(settings):
    from serving.pricing import PriceBatchRequest, PriceItemError

    log = log_for(settings)
    body = PriceBatchRequest.model_validate({"items": [{"product_id": "I1"}, {"product_id": "I2", "cost": -1}]})
    error = PriceItemError(product_id="I2", error="negative", field="items[1].cost", status_code=422)
    log.pricing(body.items, [price_answer("I1", 10.0, 11.0, 4.0), error], default_period=pd.Timestamp(DAY))
    log.flush()
    logged = families.load_predictions(settings, "pricing", DAY, DAY)
    assert list(logged[C.item_id]) == ["I1"] and log.counts["record_errors"] == 0


def test_support_answers_give_the_escalation_rate(settings):
    log = log_for(settings)
    asked = [SupportRequest(question="where is my order?", customer_id="C1"), SupportRequest(question="refund?")]
    answers = [
        SupportResponse(
            request_id=f"r{n}",
            answered=answered,
            message="m",
            answer="a" if answered else None,
            confidence=confidence,
            threshold=0.5,
            intent="delivery",
            intent_confidence=0.9,
            scope="all",
            sources=[],
            escalation=None,
            model_version="1",
        )
        for n, (answered, confidence) in enumerate([(True, 0.9), (False, 0.2)])
    ]
    log.support(asked, answers)
    log.flush()
    logged = families.load_predictions(settings, "support", DAY, DAY)
    assert "question" not in logged.columns and list(logged[C.escalated]) == [False, True]
    rate, rows = families.support_metrics(families.support_outcomes(settings, DAY))["escalation_rate"]
    assert (rate, rows) == (0.5, 2)

    # feedback through POST /support/feedback rates the answers: the latest rating of an answer counts
    for request_id, helpful in (("r0", True), ("r0", False), ("r1", True)):
        log.support_feedback(FeedbackRequest(request_id=request_id, helpful=helpful, question="where is a@b.com?"))
    log.flush()
    rated = lake.read_table(settings.lake_dir, schemas.predictions_table("support_feedback"), DAY, DAY)
    assert set(rated.columns) == {C.event_timestamp, C.request_id, C.feedback}  # no question, no comment
    rate, rows = families.support_metrics(families.support_outcomes(settings, DAY))["negative_feedback_rate"]
    assert (rate, rows) == (0.5, 2)


def wait_for_rows(settings: Settings, family: str, n: int, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rows = len(lake.read_table(settings.lake_dir, schemas.predictions_table(family)))
        if rows >= n:
            return rows
        time.sleep(0.05)
    return len(lake.read_table(settings.lake_dir, schemas.predictions_table(family)))


def test_the_writer_thread_flushes_on_size_and_on_time(settings):
    by_size = log_for(settings, flush_rows=3)
    by_size.recommend(RecommendRequest(customer_id="C1"), recommendation("C1", ["I1", "I2", "I3"]))
    assert wait_for_rows(settings, "recommend", 3) == 3  # no explicit flush
    by_size.close()

    by_time = log_for(settings, flush_seconds=0.2)
    by_time.recommend(RecommendRequest(customer_id="C1"), recommendation("C1", ["I1"]))
    assert wait_for_rows(settings, "recommend", 4) == 4
    by_time.close()
    assert not by_time._thread.is_alive()


def test_a_broken_lake_is_counted_and_retried_never_raised(settings, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the lake should be")
    log = PredictionLog(blocked, flush_seconds=3600, max_rows=5, clock=lambda: NOON)
    log.recommend(RecommendRequest(customer_id="C1"), recommendation("C1", ["I1", "I2", "I3"]))
    assert log.flush() == 0 and log.counts["write_errors"] == 1
    log.recommend(RecommendRequest(customer_id="C2"), recommendation("C2", ["I1", "I2", "I3"]))
    assert log.counts["dropped"] == 1  # 6 rows waiting, 5 kept: the oldest goes
    log.recommend(RecommendRequest(customer_id="C3"), object())  # a malformed answer: logged and counted
    assert log.counts["record_errors"] == 1

    log.lake_dir = settings.lake_dir  # the lake is back: what was kept lands
    assert log.flush() == 5
    logged = families.load_predictions(settings, "recommend", DAY, DAY)
    assert list(logged[C.customer_id]) == ["C1", "C1", "C2", "C2", "C2"]
