"""The family registry: for each model family, which columns its drift checks compare, where they come from, and
how its outcomes are scored once they arrive.

A family is data, not code paths: ``check_family`` treats every entry alike. A new family (or a richer pricing
entry once training/pricing.py settles its features) is one ``register(Family(...))`` call.

Logged predictions live in the lake table ``schemas.predictions_table(family)``, appended by serving
(serving/prediction_log.py) with an ``event_timestamp`` (the day the answer is about) and the family's
``prediction_columns``; without them prediction drift and outcome quality are skipped, and only data drift is checked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from omnicart import lake, schemas
from omnicart.schemas import C
from omnicart.settings import Settings

# Columns monitoring derives (not lake columns); the logged ones are spelled in schemas.C.
COMPETITOR_GAP = "competitor_gap"  # log(price / competitor price); the same name as omnicart.pricing.features
QUESTION_CHARS = "question_chars"  # length of a support question
SCORE = C.score  # recommend: the model's score of a recommended item
PREDICTED_UNITS = C.predicted_units  # pricing: units the demand model expected at the day's shelf price
CONFIDENCE = C.confidence  # support: the answerer's confidence
ESCALATED = C.escalated  # support: handed to a person (bool)
FEEDBACK = C.feedback  # support: customer feedback, -1 / 0 / +1 (missing: none given)
HIT = "hit"  # recommend outcome: a recommended item was bought (0/1)
ABS_ERROR = "abs_error"  # pricing outcome: |predicted - actual units|
NEGATIVE = "negative_feedback"  # support outcome: feedback was negative (0/1; missing when none given)

FrameLoader = Callable[[Settings, dt.date, dt.date], pd.DataFrame]
OutcomeLoader = Callable[[Settings, dt.date], pd.DataFrame | None]
OutcomeMetrics = Callable[[pd.DataFrame], dict[str, tuple[float, int]]]


@dataclass(frozen=True)
class Family:
    """What to check for one model family."""

    name: str
    columns: tuple[str, ...]  # feature columns for data drift
    categorical: tuple[str, ...]  # those compared as categories
    load: FrameLoader  # the monitored frame of the days [start, end]
    prediction_columns: tuple[str, ...] = ()
    prediction_categorical: tuple[str, ...] = ()
    load_outcomes: OutcomeLoader | None = None  # the day's joined outcome rows, or None when none arrived
    outcome_metrics: OutcomeMetrics | None = None  # outcome rows -> metric -> (value, rows judged)
    outcome_columns: tuple[str, ...] = ()  # numeric per-row outcome columns logged to the workspace
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family; returns it."""
    _REGISTRY[family.name] = family
    return family


def get(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LookupError(f"no monitored family {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def load_predictions(settings: Settings, family: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Logged predictions of [start, end] with each item's category; empty when serving logged none."""
    logged = lake.read_table(settings.lake_dir, schemas.predictions_table(family), start, end)
    if logged.empty or C.item_id not in logged.columns or C.category in logged.columns:
        return logged
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=end, columns=[C.item_id, C.category])
    return logged.merge(items.drop_duplicates(C.item_id, keep="last"), on=C.item_id, how="left")


# --- recommend: the enriched daily events (what shop_daily's skeleton checks) -------------------------------------
def events_frame(settings: Settings, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Events of [start, end] with the item's category and the customer's segment: the columns drift is checked on."""
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, start, end)
    if events.empty:
        return pd.DataFrame(columns=list(schemas.DRIFT_COLUMNS))
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=end)[[C.item_id, C.category]]
    customers = lake.read_table(settings.lake_dir, schemas.CUSTOMERS, end=end)[[C.customer_id, C.segment]]
    frame = events.merge(items.drop_duplicates(C.item_id, keep="last"), on=C.item_id, how="left")
    frame = frame.merge(customers.drop_duplicates(C.customer_id, keep="last"), on=C.customer_id, how="left")
    return frame[list(schemas.DRIFT_COLUMNS)]


def recommend_outcomes(settings: Settings, day: dt.date) -> pd.DataFrame | None:
    """Yesterday's recommendations against today's purchases: one row per customer who was recommended and bought."""
    recs = load_predictions(settings, "recommend", day - dt.timedelta(days=1), day - dt.timedelta(days=1))
    if recs.empty:
        return None
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, day, day)
    buys = events[events[C.event_type] == "purchase"][[C.customer_id, C.item_id]].drop_duplicates()
    return hit_frame(recs, buys)


def hit_frame(recommendations: pd.DataFrame, purchases: pd.DataFrame) -> pd.DataFrame:
    """Per customer who had recommendations and bought something: whether any recommended item was bought."""
    buyers = purchases[purchases[C.customer_id].isin(recommendations[C.customer_id])]
    recommended = set(zip(recommendations[C.customer_id], recommendations[C.item_id], strict=True))
    bought = [(c, i) in recommended for c, i in zip(buyers[C.customer_id], buyers[C.item_id], strict=True)]
    hits = pd.Series(bought, index=buyers.index, dtype=float).groupby(buyers[C.customer_id]).max()
    return pd.DataFrame({C.customer_id: hits.index, HIT: hits.to_numpy()})


def recommend_metrics(outcomes: pd.DataFrame) -> dict[str, tuple[float, int]]:
    n = len(outcomes)
    return {"hit_rate": (float(outcomes[HIT].mean()) if n else float("nan"), n)}


# --- pricing: the daily price table of the catalog ----------------------------------------------------------------
def prices_frame(settings: Settings, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Per item and day: shelf price, competitor price, their log gap, and the item's category."""
    columns = [C.price, C.competitor_price, COMPETITOR_GAP, C.category]
    prices = lake.read_table(settings.lake_dir, schemas.PRICES, start, end)
    if prices.empty:
        return pd.DataFrame(columns=columns)
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=end)[[C.item_id, C.category]]
    frame = prices.merge(items.drop_duplicates(C.item_id, keep="last"), on=C.item_id, how="left")
    with np.errstate(divide="ignore", invalid="ignore"):
        frame[COMPETITOR_GAP] = np.log(frame[C.price] / frame[C.competitor_price])
    return frame[columns]


def pricing_outcomes(settings: Settings, day: dt.date) -> pd.DataFrame | None:
    """The demand forecasts served for ``day`` against the units the day actually sold, per item."""
    forecasts = load_predictions(settings, "pricing", day, day)
    if forecasts.empty:
        return None
    actual = lake.read_table(settings.lake_dir, schemas.PRICES, day, day)[[C.item_id, C.units_sold]]
    return forecast_frame(forecasts, actual)


def forecast_frame(forecasts: pd.DataFrame, actual: pd.DataFrame) -> pd.DataFrame:
    """Per item: the last forecast of the day, the units sold, and the absolute error."""
    # a forecast the model could not make (the guarded fallback answered) is not scored
    last = forecasts.dropna(subset=[PREDICTED_UNITS]).drop_duplicates(C.item_id, keep="last")[
        [C.item_id, PREDICTED_UNITS]
    ]
    frame = last.merge(actual, on=C.item_id, how="inner")
    frame[ABS_ERROR] = (frame[PREDICTED_UNITS] - frame[C.units_sold]).abs()
    return frame


def pricing_metrics(outcomes: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """WAPE: total absolute error over total units sold (robust to the many small counts MAPE chokes on)."""
    n, sold = len(outcomes), float(outcomes[C.units_sold].sum()) if len(outcomes) else 0.0
    return {"wape": (float(outcomes[ABS_ERROR].sum()) / sold if sold else float("nan"), n)}


# --- support: the day's tickets -----------------------------------------------------------------------------------
def support_frame(settings: Settings, start: dt.date, end: dt.date) -> pd.DataFrame:
    tickets = lake.read_table(settings.lake_dir, schemas.SUPPORT, start, end)
    if tickets.empty:
        return pd.DataFrame(columns=[C.intent, QUESTION_CHARS])
    return pd.DataFrame(
        {C.intent: tickets[C.intent].to_numpy(), QUESTION_CHARS: tickets[C.question].fillna("").str.len().to_numpy()}
    )


def support_outcomes(settings: Settings, day: dt.date) -> pd.DataFrame | None:
    """The day's answered tickets: escalated or not, and the customer's feedback on the answer where given that day
    (``POST /support/feedback``, logged as ``predictions_support_feedback``; the latest rating of an answer counts)."""
    answers = load_predictions(settings, "support", day, day)
    if answers.empty:
        return None
    rated = lake.read_table(settings.lake_dir, schemas.predictions_table("support_feedback"), day, day)
    if not rated.empty and C.request_id in answers.columns:
        latest = rated.sort_values(C.event_timestamp).drop_duplicates(C.request_id, keep="last")
        answers = answers.drop(columns=[FEEDBACK], errors="ignore").merge(
            latest[[C.request_id, FEEDBACK]], on=C.request_id, how="left"
        )
    return feedback_frame(answers)


def feedback_frame(answers: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame({ESCALATED: answers[ESCALATED].astype(float).to_numpy()})
    feedback = answers[FEEDBACK] if FEEDBACK in answers.columns else pd.Series(np.nan, index=answers.index)
    frame[NEGATIVE] = np.where(feedback.isna(), np.nan, (feedback < 0).astype(float))
    return frame


def support_metrics(outcomes: pd.DataFrame) -> dict[str, tuple[float, int]]:
    rated = outcomes[NEGATIVE].dropna()
    return {
        "escalation_rate": (float(outcomes[ESCALATED].mean()) if len(outcomes) else float("nan"), len(outcomes)),
        "negative_feedback_rate": (float(rated.mean()) if len(rated) else float("nan"), len(rated)),
    }


register(
    Family(
        name="recommend",
        columns=tuple(schemas.DRIFT_COLUMNS),
        categorical=(C.channel, C.event_type, C.category, C.segment),
        load=events_frame,
        prediction_columns=(SCORE, C.category),
        prediction_categorical=(C.category,),
        load_outcomes=recommend_outcomes,
        outcome_metrics=recommend_metrics,
        outcome_columns=(HIT,),
        description="Recommendations: who shops how (channels, funnel, prices, categories, segments).",
    )
)
register(
    Family(
        name="pricing",
        columns=(C.price, C.competitor_price, COMPETITOR_GAP, C.category),
        categorical=(C.category,),
        load=prices_frame,
        prediction_columns=(C.price, PREDICTED_UNITS),
        load_outcomes=pricing_outcomes,
        outcome_metrics=pricing_metrics,
        outcome_columns=(ABS_ERROR, C.units_sold),
        description="Pricing: shelf and competitor prices per item and day; forecast error once units are known.",
    )
)
register(
    Family(
        name="support",
        columns=(C.intent, QUESTION_CHARS),
        categorical=(C.intent,),
        load=support_frame,
        prediction_columns=(CONFIDENCE, C.intent, ESCALATED),
        prediction_categorical=(C.intent, ESCALATED),
        load_outcomes=support_outcomes,
        outcome_metrics=support_metrics,
        outcome_columns=(ESCALATED, NEGATIVE),
        description="Support: what customers ask about; escalations and feedback once answers are served.",
    )
)
