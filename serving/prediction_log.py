"""Serving's prediction log: each answer of /recommend, /price, /price/batch and /support/answer becomes rows of the
lake table ``predictions_<family>`` (one partition per day), where monitoring finds them for prediction drift and
outcome quality (monitoring/families.py).

Cheap and harmless on the request path: a ``recommend``/``pricing``/``support`` call only turns the answer into plain
rows and appends them to an in-memory buffer. A background thread writes the buffer as a new chunk of each day's
partition (``lake.append_partition``) every ``flush_seconds``, or as soon as ``flush_rows`` rows wait. Nothing here
raises into a handler: a failed write is logged and counted and its rows wait for the next try, up to ``max_rows``
buffered rows, beyond which the oldest are dropped and counted (``counts``, shown by ``GET /health``).

Which day a row belongs to is its ``event_timestamp``: the time the answer is about. For recommendations and support
answers that is when they were served; for a price it is the period priced (a forecast for a day is judged against
that day's sales). ``served_at`` always holds the wall-clock time.

Privacy: a recommend row carries the customer id only when the answer was personal, i.e. the id is a known platform
id (pseudonymous by construction); whatever else a client sent as an id is not written. Support rows never carry
the question.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from omnicart import lake
from omnicart.schemas import C, predictions_table

log = logging.getLogger("omnicart.serving.prediction_log")

Row = dict[str, Any]


class PredictionLog:
    """Buffers answer rows per family and day, and appends them to the lake from a background thread."""

    def __init__(
        self,
        lake_dir: Any,
        *,
        flush_rows: int = 1_000,
        flush_seconds: float = 5.0,
        max_rows: int = 100_000,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.lake_dir = lake_dir
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.counts: Counter[str] = Counter()  # logged, written, write_errors, dropped, record_errors
        self._buffer: list[tuple[str, dt.date, Row]] = []
        self._lock = threading.Lock()  # guards the buffer
        self._flushing = threading.Lock()  # one writer at a time (the thread, or close)
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> PredictionLog:
        return cls(
            settings.lake_dir,
            flush_rows=settings.prediction_log_flush_rows,
            flush_seconds=settings.prediction_log_flush_seconds,
            max_rows=settings.prediction_log_max_rows,
        )

    # --- one call per endpoint -------------------------------------------------------------------------------
    def recommend(self, request: Any, response: Any, latency_ms: float | None = None) -> None:
        """One row per recommended item: rank, score, the answer's source, model version, experiment variant and
        the item's propensity (exploration), and the handler's latency."""
        self._record("recommend", lambda: _recommend_rows(request, response, self.clock(), latency_ms))

    def pricing(
        self,
        requests: Sequence[Any],
        responses: Sequence[Any],
        default_period: Any = None,
        latency_ms: float | None = None,
    ) -> None:
        """One row per priced item; ``default_period`` is the period a request without one was priced for."""
        self._record("pricing", lambda: _pricing_rows(requests, responses, default_period, self.clock(), latency_ms))

    def support(self, requests: Sequence[Any], responses: Sequence[Any]) -> None:
        """One row per answered (or escalated) question: intent, confidence, whether a person took it."""
        self._record("support", lambda: _support_rows(requests, responses, self.clock()))

    def support_feedback(self, request: Any) -> None:
        """One row per feedback: the answer it rates (``request_id``) and +1 (helped) or -1 (did not)."""
        self._record("support_feedback", lambda: _feedback_rows(request, self.clock()))

    # --- buffer and writer -------------------------------------------------------------------------------------
    def _record(self, family: str, rows: Callable[[], list[Row]]) -> None:
        try:
            made = rows()
            self.add(family, made)
        except Exception:  # a logging bug must never fail the answer it logs
            self.counts["record_errors"] += 1
            log.exception("could not log %s predictions", family)

    def add(self, family: str, rows: Sequence[Row]) -> None:
        """Buffer ``rows`` (each with an ``event_timestamp``) of ``family``; starts the writer thread on first use."""
        if not rows:
            return
        entries = [(family, pd.Timestamp(r[C.event_timestamp]).date(), r) for r in rows]
        with self._lock:
            self._buffer.extend(entries)
            self.counts["logged"] += len(entries)
            self._trim()
            waiting = len(self._buffer)
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
                self._thread.start()
        if waiting >= self.flush_rows:
            self._wake.set()

    def _trim(self) -> None:
        excess = len(self._buffer) - self.max_rows
        if excess > 0:
            del self._buffer[:excess]
            self.counts["dropped"] += excess
            log.warning("prediction log buffer full: dropped the %d oldest rows", excess)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write every buffered row now (a chunk per family and day); returns the rows written. Never raises."""
        with self._flushing:
            with self._lock:
                pending, self._buffer = self._buffer, []
            groups: dict[tuple[str, dt.date], list[Row]] = {}
            for family, day, row in pending:
                groups.setdefault((family, day), []).append(row)
            written, failed = 0, []
            for (family, day), rows in groups.items():
                try:
                    lake.append_partition(self.lake_dir, predictions_table(family), day, pd.DataFrame(rows))
                    written += len(rows)
                except Exception:
                    self.counts["write_errors"] += 1
                    log.exception(
                        "could not write %d %s predictions of %s; kept for the next flush", len(rows), family, day
                    )
                    failed += [(family, day, r) for r in rows]
            with self._lock:
                self._buffer[:0] = failed  # the oldest first, so a full buffer drops them first
                self._trim()
            self.counts["written"] += written
            return written

    def close(self) -> None:
        """Stop the writer thread and write what is left (Serve calls the deployment's ``__del__`` on shutdown)."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_seconds + 5)
        self.flush()


# --- rows: plain values, no model objects ------------------------------------------------------------------------
def _recommend_rows(request: Any, response: Any, now: dt.datetime, latency_ms: float | None = None) -> list[Row]:
    personal = response.source == "personal"
    request_id = uuid.uuid4().hex
    return [
        {
            C.event_timestamp: now,
            C.served_at: now,
            C.request_id: request_id,
            C.customer_id: response.customer_id if personal else None,
            C.item_id: item.item_id,
            C.rank: rank,
            C.score: float(item.score),
            C.source: response.source,
            C.model_version: response.model_version,
            C.variant: getattr(response, "variant", None),
            C.propensity: getattr(item, "propensity", None),
            C.fallback: response.fallback,
            C.latency_ms: latency_ms,
        }
        for rank, item in enumerate(response.items, start=1)
    ]


def _pricing_rows(
    requests: Sequence[Any],
    responses: Sequence[Any],
    default_period: Any,
    now: dt.datetime,
    latency_ms: float | None = None,
) -> list[Row]:
    rows = []
    for request, answer in zip(requests, responses, strict=True):
        if getattr(answer, "error", None) is not None:  # a batch item that could not be priced: nothing served
            continue
        period = _period_start(request.period if request.period is not None else default_period)
        rows.append(
            {
                C.event_timestamp: period or now,
                C.served_at: now,
                C.item_id: answer.product_id,
                C.store_id: answer.store_id,
                C.current_price: answer.current_price,
                C.price: answer.suggested_price,
                C.predicted_units: answer.current.units,
                C.suggested_units: answer.suggested.units,
                C.competitor_price: request.competitor_price,
                C.fallback: answer.fallback,
                C.model_version: answer.model_version,
                C.variant: getattr(answer, "variant", None),
                C.latency_ms: latency_ms,
            }
        )
    return rows


def _support_rows(requests: Sequence[Any], responses: Sequence[Any], now: dt.datetime) -> list[Row]:
    return [
        {
            C.event_timestamp: now,
            C.served_at: now,
            C.request_id: answer.request_id,
            C.customer_id: request.customer_id,
            C.channel: request.channel,
            C.item_id: request.product_id,
            C.intent: answer.intent,
            C.confidence: answer.confidence,
            C.escalated: not answer.answered,
            C.model_version: answer.model_version,
            C.variant: getattr(answer, "variant", None),
        }
        for request, answer in zip(requests, responses, strict=True)
    ]


def _feedback_rows(request: Any, now: dt.datetime) -> list[Row]:
    # the question and comment stay out: feedback rows only say which answer helped
    return [{C.event_timestamp: now, C.request_id: request.request_id, C.feedback: 1 if request.helpful else -1}]


def _period_start(period: Any) -> pd.Timestamp | None:
    """Midnight UTC of a date-like period; None for other periods (week numbers), which fall back to serve time."""
    if period is None or not hasattr(period, "year"):
        return None
    stamp = pd.Timestamp(period)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.normalize()
