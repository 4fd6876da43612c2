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

    # support
    question: Final = "question"
    answer: Final = "answer"
    intent: Final = "intent"

    # simulator ground truth (demand curves, repeat purchases)
    elasticity: Final = "elasticity"
    ref_price: Final = "ref_price"
    base_demand: Final = "base_demand"
    competitor_elasticity: Final = "competitor_elasticity"
    cycle_days: Final = "cycle_days"
    offset_days: Final = "offset_days"


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
