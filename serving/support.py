"""The support endpoint's logic, free of Ray: request and response models and the service that answers or escalates.

The Serve deployment only wires HTTP to ``SupportService`` (``answer`` for one question, ``answer_batch`` behind
``@serve.batch``, ``feedback``), so unit tests reach all of this. Questions are PII-scrubbed before they reach the
model or any file; escalations and feedback are appended as JSON lines under ``<home>/support/``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from omnicart.privacy.pseudonymise import scrub_text
from omnicart.schemas import CHANNELS, C
from omnicart.support import logs
from omnicart.support.logs import escalations_path, feedback_path

log = logging.getLogger("omnicart.serving.support")

MAX_QUESTION_CHARS = 1000  # longer messages are not questions for retrieval; they go to a person via the usual form
MAX_BATCH = 64
MAX_SOURCES = 10
HANDOVER = "Thanks for your question. I'm handing it over to a colleague in customer service, who will reply shortly."

Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUESTION_CHARS)]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class SupportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: Question = Field(description=f"The customer's question: 1 to {MAX_QUESTION_CHARS} characters.")
    product_id: Identifier | None = Field(None, description="The product asked about; answers are scoped to it.")
    customer_id: Identifier | None = Field(None, description="The customer's platform id, kept with an escalation.")
    channel: str | None = Field(
        None, description=f"One of {', '.join(CHANNELS)}.", pattern="^(" + "|".join(CHANNELS) + ")$"
    )
    k: int = Field(3, ge=1, le=MAX_SOURCES, description="How many sources to return.")


class SupportBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[SupportRequest] = Field(min_length=1, max_length=MAX_BATCH)


class Source(BaseModel):
    doc_id: str
    kb_source: str = Field(description="ticket, faq, product_qa or catalog.")
    score: float
    text: str = Field(description="The start of the knowledge-base entry.")
    product_ids: list[str] = Field(default_factory=list)


class Escalation(BaseModel):
    escalation_id: str
    reason: str = Field(description="Why a person takes this question, in plain words.")
    route: str = Field(description="The queue: the predicted intent, or 'general'.")


class SupportResponse(BaseModel):
    request_id: str
    answered: bool
    message: str = Field(description="What to show the customer: the answer, or the handover note.")
    answer: str | None
    confidence: float = Field(description="Calibrated probability that the answer is right.")
    threshold: float = Field(description="Below this confidence the question goes to a person.")
    intent: str | None
    intent_confidence: float | None
    scope: str = Field(description="'product' when answers were restricted to the product asked about, else 'all'.")
    sources: list[Source]
    escalation: Escalation | None
    model_version: str | None
    variant: str | None = Field(
        None, description="During an online experiment: 'champion' or 'challenger', the model version that answered."
    )


class SupportBatchResponse(BaseModel):
    responses: list[SupportResponse]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Identifier = Field(description="The request_id of the answer this feedback is about.")
    helpful: bool
    question: Question | None = Field(None, description="The question, for retraining (scrubbed before storing).")
    doc_id: Identifier | None = Field(None, description="The source that was shown, for retraining.")
    comment: Annotated[str, StringConstraints(max_length=MAX_QUESTION_CHARS)] | None = None


class FeedbackResponse(BaseModel):
    feedback_id: str
    stored: bool


class SupportService:
    """Scrubs the question, asks the model, answers above its calibrated threshold, else hands over and records why.

    ``load_model`` returns an object with ``answer_batch(questions, product_ids, k) -> list[dict]`` (the
    ``SupportModel`` predictor). Writes are appended under a lock, so concurrent requests keep whole lines."""

    def __init__(
        self,
        load_model: Callable[[], Any],
        home: Path,
        pseudonym_key: str,
        model_version: str | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        if not pseudonym_key:
            raise ValueError("a pseudonymisation key is required: questions are scrubbed before anything is stored")
        self.model = load_model()
        self.home = Path(home)
        self.key = pseudonym_key
        self.model_version = model_version
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def answer(self, request: SupportRequest) -> SupportResponse:
        return self.answer_batch([request])[0]

    def answer_batch(self, requests: Sequence[SupportRequest]) -> list[SupportResponse]:
        """One response per request, in order; the questions are encoded together."""
        if not requests:
            return []
        questions = [scrub_text(r.question, self.key) for r in requests]
        k = max(r.k for r in requests)
        decisions = self.model.answer_batch(questions, [r.product_id for r in requests], k)
        return [self._respond(r, q, d) for r, q, d in zip(requests, questions, decisions, strict=True)]

    def _respond(self, request: SupportRequest, question: str, decision: dict[str, Any]) -> SupportResponse:
        request_id = uuid.uuid4().hex
        sources = [Source(**s) for s in decision.get("sources", [])[: request.k]]
        answered = bool(decision.get("answered"))
        escalation = None
        if not answered:
            route = decision.get(C.intent) or "general"
            reason = decision.get("reason") or "the model is not confident enough to answer"
            escalation = Escalation(escalation_id=uuid.uuid4().hex, reason=reason, route=route)
            self._record_escalation(request, request_id, question, decision, escalation)
        self.counts["answered" if answered else "escalated"] += 1
        return SupportResponse(
            request_id=request_id,
            answered=answered,
            message=decision[C.answer] if answered else HANDOVER,
            answer=decision[C.answer] if answered else None,
            confidence=float(decision.get("confidence", 0.0)),
            threshold=float(decision.get("threshold", 1.0)),
            intent=decision.get(C.intent),
            intent_confidence=decision.get("intent_confidence"),
            scope="product" if decision.get("scope") == "product" else "all",
            sources=sources,
            escalation=escalation,
            model_version=self.model_version,
        )

    def _record_escalation(
        self, request: SupportRequest, request_id: str, question: str, decision: dict, escalation: Escalation
    ) -> None:
        record = {
            "escalation_id": escalation.escalation_id,
            "request_id": request_id,
            "at": self.clock().isoformat(),
            C.question: question,  # scrubbed
            C.product_id: request.product_id,
            C.customer_id: request.customer_id,
            C.channel: request.channel,
            "route": escalation.route,
            C.intent: decision.get(C.intent),
            "intent_confidence": decision.get("intent_confidence"),
            "confidence": decision.get("confidence"),
            "threshold": decision.get("threshold"),
            C.reason: escalation.reason,
            "sources": [s[C.doc_id] for s in decision.get("sources", [])],
            "model_version": self.model_version,
        }
        self._append(escalations_path(self.home), record)

    def feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """Store whether an answer helped (JSON lines), with the scrubbed question, for evaluation and retraining."""
        feedback_id = uuid.uuid4().hex
        record = {
            "feedback_id": feedback_id,
            "request_id": request.request_id,
            "at": self.clock().isoformat(),
            "helpful": request.helpful,
            C.question: scrub_text(request.question, self.key) if request.question else None,
            C.doc_id: request.doc_id,
            "comment": scrub_text(request.comment, self.key) if request.comment else None,
            "model_version": self.model_version,
        }
        self._append(feedback_path(self.home), record)
        self.counts["helpful" if request.helpful else "not_helpful"] += 1
        return FeedbackResponse(feedback_id=feedback_id, stored=True)

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            logs.append(path, line)
