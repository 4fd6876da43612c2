"""Canonical tables and column names: the only place they are spelled.

Every other module refers to ``schemas.EVENTS``, ``schemas.C.customer_id`` and so on, so a rename happens here once.
"""

from __future__ import annotations

from typing import Final

# --- tables of the lake (date-partitioned Parquet under <home>/lake/<table>/dt=YYYY-MM-DD/) ---
ITEMS: Final = "items"
CUSTOMERS: Final = "customers"
EVENTS: Final = "events"
PRICES: Final = "prices"
SUPPORT: Final = "support_tickets"
IDENTITIES: Final = "identities"
# --- tables derived for features ---
CUSTOMER_FEATURES: Final = "customer_features"
ITEM_FEATURES: Final = "item_features"
# --- tables written by ingest (see omnicart/ingest/) ---
QUARANTINE: Final = "quarantine"  # rows that failed validation, with reason, source file and line
IDENTITY_MAP: Final = "identity_map"  # daily snapshot: identifier token -> resolved customer id
# --- omnichannel feature tables (omnicart/features.py; Feast sources in feature_repo/sources.py) ---
CUSTOMER_CHANNEL_FEATURES: Final = "customer_channel_features"  # one row per customer x channel (and "all") and day
ITEM_WINDOW_FEATURES: Final = "item_window_features"  # one row per catalog item and day
ITEM_TEXT_EMBEDDINGS: Final = "item_text_embeddings"  # one row per item on the day its catalog row landed
CUSTOMER_LAST_EVENT: Final = "customer_last_event"  # batch history of the real-time (pushed) customer features
ALL_CHANNELS: Final = "all"  # the channel value of a customer's cross-channel feature row
FEATURE_WINDOWS: Final = (7, 30, 90)  # days of the windowed customer and item features
# --- tables serving appends to (serving/prediction_log.py), one per model family; monitoring reads them ---
PREDICTIONS_PREFIX: Final = "predictions_"
# --- model families: each is ``training/<name>.py`` implementing ``training.family.Family``; the DAGs, monitoring
# and the CLI read this tuple, so adding a family is that module plus one name here ---
FAMILIES: Final = ("recommend", "pricing", "support")
# Registered beside the families: federated pricing (training/federated.py, the train_federated DAG) has its own
# registered model and champion, but no family contract (it is trained over data owners, not from the lake).
FEDERATED_PRICING: Final = "pricing-federated"
REGISTERED_MODELS: Final = (*FAMILIES, FEDERATED_PRICING)


def predictions_table(family: str) -> str:
    """The lake table of ``family``'s logged answers, e.g. ``predictions_pricing`` (one partition per day)."""
    return f"{PREDICTIONS_PREFIX}{family}"


class C:
    """Column names shared by the canonical tables."""

    # keys and time
    event_id: Final = "event_id"
    event_timestamp: Final = "event_timestamp"
    dt: Final = "dt"  # partition key, ISO date string
    customer_id: Final = "customer_id"
    item_id: Final = "item_id"
    ticket_id: Final = "ticket_id"

    # catalog
    title: Final = "title"
    description: Final = "description"
    category: Final = "category"
    brand: Final = "brand"
    price: Final = "price"
    cost: Final = "cost"
    image_url: Final = "image_url"

    # customers: personal data (pseudonymised at ingest) and per-channel identifiers
    name: Final = "name"
    email: Final = "email"
    phone: Final = "phone"
    address: Final = "address"
    loyalty_card: Final = "loyalty_card"
    social_handle: Final = "social_handle"
    device_id: Final = "device_id"
    web_cookie: Final = "web_cookie"
    segment: Final = "segment"
    signup_date: Final = "signup_date"

    # events
    channel: Final = "channel"
    identifier: Final = "identifier"  # the id under which the channel saw the customer
    event_type: Final = "event_type"
    quantity: Final = "quantity"

    # prices
    competitor_price: Final = "competitor_price"
    units_sold: Final = "units_sold"

    # pricing: the canonical demand file of `omnicart bench pricing --input` (PROTOCOLS.md) and the pricing family
    series_id: Final = "series_id"  # one demand series, e.g. (store, product)
    product_id: Final = "product_id"
    store_id: Final = "store_id"
    period: Final = "period"  # the pricing period (a date: day or week start)
    units: Final = "units"  # units sold in the period
    promo: Final = "promo"  # 1 when the product was on promotion / display
    inventory: Final = "inventory"  # units available in the period; sales that reach it are censored demand
    pack_oz: Final = "pack_oz"  # pack size in ounces (dominicks_beer)

    # support
    question: Final = "question"
    answer: Final = "answer"
    intent: Final = "intent"
    doc_id: Final = "doc_id"  # one entry of the support knowledge base (a unique answer or catalog text)
    kb_source: Final = "kb_source"  # where a knowledge-base entry came from: ticket, faq, product_qa, catalog

    # simulator ground truth (demand curves, repeat purchases)
    elasticity: Final = "elasticity"
    ref_price: Final = "ref_price"
    base_demand: Final = "base_demand"
    competitor_elasticity: Final = "competitor_elasticity"
    cycle_days: Final = "cycle_days"
    offset_days: Final = "offset_days"

    # ingest: quarantine rows and the identity map
    source_file: Final = "source_file"
    source_line: Final = "source_line"  # 1-based line (CSV, JSON lines) or row (Parquet) in the source file
    source_table: Final = "source_table"  # the lake table the row was meant for
    reason: Final = "reason"
    detail: Final = "detail"
    record: Final = "record"  # the quarantined row, pseudonymised, as JSON
    id_kind: Final = "id_kind"  # which identifier column a token came from (email, device_id, ...)
    resolved_id: Final = "resolved_id"  # the stable customer id identity resolution assigns
    shared: Final = "shared"  # an identifier the over-merge guards kept out of every cluster

    # public datasets and recommendation inputs
    order_id: Final = "order_id"  # one basket / invoice
    rating: Final = "rating"
    image_embedding: Final = "image_embedding"  # optional item column: a fixed-length vector per item

    # logged predictions (predictions_<family> tables): what was answered, by which model, when
    served_at: Final = "served_at"  # wall-clock time of the answer (event_timestamp is the time it is about)
    request_id: Final = "request_id"
    model_version: Final = "model_version"
    rank: Final = "rank"  # recommend: 1-based position of the item in the answer
    score: Final = "score"  # recommend: the model's score of a recommended item
    source: Final = "source"  # recommend: "personal", "context" or "popular"
    current_price: Final = "current_price"  # pricing: the shelf price the request was priced from
    predicted_units: Final = "predicted_units"  # pricing: units the demand model expects at the current price
    suggested_units: Final = "suggested_units"  # pricing: units it expects at the served (suggested) price
    fallback: Final = "fallback"  # why a fallback answered instead of the model, if one did
    confidence: Final = "confidence"  # support: the answerer's calibrated confidence
    escalated: Final = "escalated"  # support: handed to a person (bool)
    feedback: Final = "feedback"  # support: customer feedback, -1 / 0 / +1 (missing: none given)
    variant: Final = "variant"  # online experiments: "champion" or "challenger", the alias that answered
    propensity: Final = "propensity"  # recommend: the probability the exploration policy showed this item here
    latency_ms: Final = "latency_ms"  # the handler's time to answer


# The canonical interaction file of `omnicart bench recommend --input` (PROTOCOLS.md) names these columns.
INPUT_USER: Final = "user_id"
INPUT_TIMESTAMP: Final = "timestamp"


# Personal data columns: never written to the lake in clear text.
PII_COLUMNS: Final = (C.name, C.email, C.phone, C.address, C.loyalty_card, C.social_handle, C.device_id, C.web_cookie)

CHANNELS: Final = ("web", "app", "store", "social", "service")
# Which customer identifier each channel sees (the events' `identifier` column holds a value of that kind).
CHANNEL_IDENTIFIER: Final = {
    "web": C.web_cookie,
    "app": C.device_id,
    "store": C.loyalty_card,
    "social": C.social_handle,
    "service": C.email,
}
EVENT_TYPES: Final = ("view", "add_to_cart", "purchase", "return")
DRIFT_KINDS: Final = ("new_segment", "price_shock", "new_category", "channel_outage")

# Columns of the enriched daily events the drift check compares (see monitoring/).
DRIFT_COLUMNS: Final = (C.channel, C.event_type, C.price, C.quantity, C.category, C.segment)


class F:
    """Feature names served from Feast (views are defined in feature_repo/)."""

    customer_view: Final = "customer_stats"
    item_view: Final = "item_stats"
    n_purchases_30d: Final = "n_purchases_30d"
    n_views_30d: Final = "n_views_30d"
    spend_30d: Final = "spend_30d"
    recent_items: Final = "recent_items"
    popularity_7d: Final = "popularity_7d"
    purchases_7d: Final = "purchases_7d"

    # omnichannel views (feature_repo/views.py); windowed names are ``windowed(base, days)``, e.g. "frequency_30d"
    customer_channel_view: Final = "customer_channel"
    customer_realtime_view: Final = "customer_realtime"
    item_window_view: Final = "item_window"
    item_text_view: Final = "item_text"
    price_fit_view: Final = "price_fit"
    customer_events_push: Final = "customer_events_push"  # the push source POST /events feeds
    customer_recent_view: Final = "customer_recent"  # the recent items /recommend reads, kept current by POST /events
    customer_recent_push: Final = "customer_recent_push"  # its push source
    # customer x channel (windowed unless noted)
    recency_days: Final = "recency_days"  # not windowed: days since the last purchase within the longest window
    frequency: Final = "frequency"
    monetary: Final = "monetary"
    returns: Final = "returns"
    top_category: Final = "top_category"
    category_share: Final = "category_share"
    price_index: Final = "price_index"
    avg_price: Final = "avg_price"
    last_items: Final = "last_items"  # not windowed
    # item (windowed unless noted)
    buyers: Final = "buyers"
    views: Final = "views"
    sales: Final = "sales"
    conversion: Final = "conversion"
    current_price: Final = "current_price"  # not windowed, nor the three below
    discount: Final = "discount"
    competitor_gap: Final = "competitor_gap"
    text_embedding: Final = "text_embedding"
    # real-time customer features (pushed by POST /events, batch history from the lake)
    last_item_id: Final = "last_item_id"
    last_event_type: Final = "last_event_type"
    last_channel: Final = "last_channel"
    last_price: Final = "last_price"
    live_items: Final = "live_items"
    # on demand: a request value against stored features
    candidate_price: Final = "candidate_price"
    price_ratio: Final = "price_ratio"
    price_fit: Final = "price_fit"


def windowed(name: str, days: int) -> str:
    """The name of a windowed feature, e.g. ``windowed(F.frequency, 30) == "frequency_30d"``."""
    return f"{name}_{days}d"
