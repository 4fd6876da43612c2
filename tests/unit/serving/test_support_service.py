"""The support service without Ray or a real encoder: validation errors name the field, batches keep order,
escalations and feedback are stored as scrubbed JSON lines under the home directory."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from omnicart.schemas import C
from serving.support import (
    HANDOVER,
    MAX_BATCH,
    MAX_QUESTION_CHARS,
    FeedbackRequest,
    SupportBatchRequest,
    SupportRequest,
    SupportService,
    escalations_path,
    feedback_path,
)

KEY = "test-pseudonym-key"


class StubModel:
    """Answers questions that mention 'hours'; hands over the rest. Records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[list[str], list, int]] = []

    def answer_batch(self, questions, product_ids, k):
        self.asked.append((list(questions), list(product_ids), k))
        out = []
        for q, p in zip(questions, product_ids, strict=True):
            known = "hours" in q
            out.append(
                {
                    "answered": known,
                    C.answer: "9 to 5" if known else None,
                    "confidence": 0.95 if known else 0.2,
                    "threshold": 0.6,
                    C.intent: "store_hours" if known else "order_status",
                    "intent_confidence": 0.9,
                    "scope": "product" if p else "all",
                    "sources": [
                        {
                            C.doc_id: f"d{i}",
                            C.kb_source: "ticket",
                            "score": 1.0 - i / 10,
                            "text": "t",
                            "product_ids": [],
                        }
                        for i in range(k)
                    ],
                    "reason": None if known else "confidence 0.20 is below the threshold 0.60",
                }
            )
        return out


@pytest.fixture
def service(tmp_path):
    return SupportService(StubModel, tmp_path, KEY, model_version="3")


@pytest.mark.parametrize("question", ["", "   ", "x" * (MAX_QUESTION_CHARS + 1)])
def test_empty_or_overlong_question_is_a_validation_error_naming_the_field(question):
    with pytest.raises(ValidationError) as info:
        SupportRequest(question=question)
    assert [e["loc"] for e in info.value.errors()] == [("question",)]


def test_batch_limits_and_unknown_fields_are_validation_errors():
    with pytest.raises(ValidationError) as info:
        SupportBatchRequest(requests=[])
    assert info.value.errors()[0]["loc"] == ("requests",)
    with pytest.raises(ValidationError):
        SupportBatchRequest(requests=[{"question": "hi"}] * (MAX_BATCH + 1))
    with pytest.raises(ValidationError) as info:
        SupportRequest(question="hi", prodcut_id="P1")
    assert info.value.errors()[0]["loc"] == ("prodcut_id",)
    with pytest.raises(ValidationError) as info:
        SupportRequest(question="hi", channel="fax")
    assert info.value.errors()[0]["loc"] == ("channel",)


def test_question_at_the_documented_maximum_is_accepted():
    assert len(SupportRequest(question="x" * MAX_QUESTION_CHARS).question) == MAX_QUESTION_CHARS


def test_batch_answers_in_order_and_scrubs_before_the_model_sees_the_question(service):
    requests = [
        SupportRequest(question="What are your opening hours?", k=2),
        SupportRequest(question="Where is my parcel? Mail me at ann@example.com", product_id="P9"),
    ]
    responses = service.answer_batch(requests)
    assert [r.answered for r in responses] == [True, False]
    assert responses[0].message == "9 to 5" and len(responses[0].sources) == 2
    assert responses[1].message == HANDOVER and responses[1].answer is None
    assert responses[1].escalation.route == "order_status" and responses[1].scope == "product"
    assert len(responses[1].sources) == 3
    asked, products, _ = service.model.asked[0]
    assert "ann@example.com" not in asked[1] and "tok_" in asked[1]
    assert products == [None, "P9"]
    assert len({r.request_id for r in responses}) == 2


def test_escalation_is_recorded_with_its_reason_and_route(service, tmp_path):
    response = service.answer(SupportRequest(question="Call me on +44 20 7946 0958", customer_id="c7", channel="web"))
    assert not response.answered
    [record] = [json.loads(line) for line in escalations_path(tmp_path).read_text().splitlines()]
    assert record["request_id"] == response.request_id
    assert record[C.reason] == response.escalation.reason and record["route"] == "order_status"
    assert record[C.customer_id] == "c7" and record[C.channel] == "web" and record["model_version"] == "3"
    assert "7946" not in record[C.question]
    assert service.counts["escalated"] == 1


def test_feedback_is_stored_for_evaluation_and_retraining(service, tmp_path):
    answered = service.answer(SupportRequest(question="opening hours on Sunday?"))
    stored = service.feedback(
        FeedbackRequest(
            request_id=answered.request_id,
            helpful=False,
            question="opening hours on Sunday?",
            doc_id=answered.sources[0].doc_id,
            comment="wrong, reply to bob@example.org",
        )
    )
    service.feedback(FeedbackRequest(request_id=answered.request_id, helpful=True))
    records = [json.loads(line) for line in feedback_path(tmp_path).read_text().splitlines()]
    assert stored.stored and [r["helpful"] for r in records] == [False, True]
    assert records[0]["feedback_id"] == stored.feedback_id and records[0][C.doc_id] == "d0"
    assert records[0][C.question] == "opening hours on Sunday?"
    assert "bob@example.org" not in records[0]["comment"]
    assert service.counts["not_helpful"] == 1 and service.counts["helpful"] == 1
    with pytest.raises(ValidationError) as info:
        FeedbackRequest(request_id="", helpful=True)
    assert info.value.errors()[0]["loc"] == ("request_id",)


def test_a_service_without_a_pseudonymisation_key_refuses_to_start(tmp_path):
    with pytest.raises(ValueError, match="pseudonymisation key"):
        SupportService(StubModel, tmp_path, "")
