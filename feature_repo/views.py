"""Feature views: what the models read, offline point-in-time and online.

Batch views read the lake's daily snapshots (``omnicart/features.py``); ``customer_realtime`` and ``customer_recent``
are also fed by pushes from ``POST /events``; ``price_fit`` is computed on demand from a request value. Daily
snapshots get a TTL of two days: a row older than that is stale (a missed day is tolerated, a customer gone quiet
drops out).
"""

from datetime import timedelta

import pandas as pd
from feast import FeatureView, Field
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import Array, Float32, Float64, Int64, String

from feature_repo import entities, sources
from feature_repo.meta import OWNER, view_tags
from omnicart.schemas import ALL_CHANNELS, FEATURE_WINDOWS, C, F, windowed
from omnicart.text import DIM

SNAPSHOT_TTL = timedelta(days=2)
_ON = f"on the row's channel ('{ALL_CHANNELS}': every channel together)"

customer_stats = FeatureView(
    name=F.customer_view,
    entities=[entities.customer],
    ttl=timedelta(days=90),
    schema=[
        Field(name=C.segment, dtype=String, description="Marketing segment of the customer."),
        Field(name=F.n_purchases_30d, dtype=Int64, description="Purchases over the last 30 days, all channels."),
        Field(name=F.n_views_30d, dtype=Int64, description="Product views over the last 30 days, all channels."),
        Field(name=F.spend_30d, dtype=Float64, description="Money spent over the last 30 days."),
        Field(
            name=F.recent_items, dtype=Array(String), description="Last items viewed, carted or bought, newest first."
        ),
    ],
    source=sources.customer_stats_source,
    online=True,
    owner=OWNER,
    description="Customer activity over 30 days, one row per customer and day.",
    tags=view_tags(family="recommend", kind="batch", pseudonymised=True),
)

item_stats = FeatureView(
    name=F.item_view,
    entities=[entities.item],
    ttl=timedelta(days=30),
    schema=[
        Field(name=C.category, dtype=String, description="Catalog category."),
        Field(name=C.price, dtype=Float64, description="List price."),
        Field(name=F.popularity_7d, dtype=Int64, description="Distinct buyers over the last 7 days."),
        Field(name=F.purchases_7d, dtype=Int64, description="Purchases over the last 7 days."),
    ],
    source=sources.item_stats_source,
    online=True,
    owner=OWNER,
    description="Item popularity and price, one row per item and day.",
    tags=view_tags(family="recommend", kind="batch", pseudonymised=False),
)


def _customer_window_fields(w: int) -> list[Field]:
    return [
        Field(name=windowed(F.frequency, w), dtype=Int64, description=f"Purchases over the last {w} days {_ON}."),
        Field(
            name=windowed(F.monetary, w),
            dtype=Float64,
            description=f"Money spent (price x quantity) over the last {w} days {_ON}.",
        ),
        Field(name=windowed(F.returns, w), dtype=Int64, description=f"Returns over the last {w} days {_ON}."),
        Field(
            name=windowed(F.top_category, w),
            dtype=String,
            description=f"Category the customer showed most interest in (view 1, cart 2, purchase 3) over {w} days; "
            "null without interest.",
        ),
        Field(
            name=windowed(F.category_share, w),
            dtype=Float64,
            description=f"Share of the {w}-day interest that went to the top category (category affinity, 0..1).",
        ),
        Field(
            name=windowed(F.price_index, w),
            dtype=Float64,
            description=f"Mean price paid / median list price of the item's category over {w} days: below 1 buys "
            "cheap (price-sensitive); null without purchases.",
        ),
        Field(
            name=windowed(F.avg_price, w),
            dtype=Float64,
            description=f"Mean unit price paid over {w} days; null without purchases.",
        ),
    ]


customer_channel = FeatureView(
    name=F.customer_channel_view,
    entities=[entities.customer, entities.channel],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(
            name=F.recency_days,
            dtype=Float64,
            description=f"Days from the last purchase {_ON} to the snapshot; null without one in 90 days.",
        ),
        *[f for w in FEATURE_WINDOWS for f in _customer_window_fields(w)],
        Field(
            name=F.last_items,
            dtype=Array(String),
            description=f"Last distinct items viewed, carted or bought {_ON} in 90 days, newest first.",
        ),
    ],
    source=sources.customer_channel_source,
    online=True,
    owner=OWNER,
    description="RFM, returns, category affinity, price sensitivity and last items per customer and channel over "
    "7/30/90 days; one row per active customer, channel and day.",
    tags=view_tags(family="recommend", kind="batch", pseudonymised=True, windows="7,30,90"),
)


def _item_window_fields(w: int) -> list[Field]:
    return [
        Field(name=windowed(F.buyers, w), dtype=Int64, description=f"Distinct buyers over the last {w} days."),
        Field(name=windowed(F.views, w), dtype=Int64, description=f"Product views over the last {w} days."),
        Field(name=windowed(F.sales, w), dtype=Int64, description=f"Purchases over the last {w} days, every channel."),
        Field(
            name=windowed(F.conversion, w),
            dtype=Float64,
            description=f"Purchases on channels that log views / views over {w} days; 0 without views.",
        ),
    ]


item_window = FeatureView(
    name=F.item_window_view,
    entities=[entities.item],
    ttl=SNAPSHOT_TTL,
    schema=[
        *[f for w in FEATURE_WINDOWS for f in _item_window_fields(w)],
        Field(name=F.current_price, dtype=Float64, description="The day's selling price (list price if none)."),
        Field(name=F.discount, dtype=Float64, description="1 - current price / list price (negative: a markup)."),
        Field(name=C.competitor_price, dtype=Float64, description="The competitor's price of the day; null if none."),
        Field(
            name=F.competitor_gap,
            dtype=Float64,
            description="current price / competitor price - 1 (above 0: dearer than the competitor).",
        ),
    ],
    source=sources.item_window_source,
    online=True,
    owner=OWNER,
    description="Item popularity, conversion and price position over 7/30/90 days, one row per item and day.",
    tags=view_tags(family="recommend,pricing", kind="batch", pseudonymised=False, windows="7,30,90"),
)

item_text = FeatureView(
    name=F.item_text_view,
    entities=[entities.item],
    ttl=timedelta(0),  # never expires: a vector stays valid until the item's text changes
    schema=[
        Field(
            name=F.text_embedding,
            dtype=Array(Float32),
            description=f"all-MiniLM-L6-v2 embedding ({DIM} floats, L2-normalised; zeros without text) of the "
            "item's text as the recommender writes it (omnicart.text.item_text): title, description, category and "
            "brand where present, joined by '. '.",
        ),
    ],
    source=sources.item_text_source,
    online=True,
    owner=OWNER,
    description="Text embedding of each catalog item, refreshed on the day its catalog row lands.",
    tags=view_tags(family="recommend", kind="batch", pseudonymised=False, model="all-MiniLM-L6-v2"),
)

customer_realtime = FeatureView(
    name=F.customer_realtime_view,
    entities=[entities.customer],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name=F.last_item_id, dtype=String, description="Item of the customer's latest event, any channel."),
        Field(name=F.last_event_type, dtype=String, description="Type of the latest event (view, cart, ...)."),
        Field(name=F.last_channel, dtype=String, description="Channel of the latest event."),
        Field(name=F.last_price, dtype=Float64, description="Item price at the latest event."),
        Field(
            name=F.live_items,
            dtype=Array(String),
            description="Latest distinct items viewed, carted or bought, newest first, updated by every push.",
        ),
    ],
    source=sources.customer_events_push,
    online=True,
    owner=OWNER,
    description="The customer's latest activity: pushed by POST /events as it happens; its offline history is the "
    "end-of-day snapshot of the same values from the lake.",
    tags=view_tags(family="recommend", kind="stream", pseudonymised=True),
)

# Its own view, not customer_realtime's live_items under another name: Feast 0.67 materialises a push-fed view with
# the push source's field mapping (which a PushSource cannot carry), so a renamed lake column would not load.
customer_recent = FeatureView(
    name=F.customer_recent_view,
    entities=[entities.customer],
    ttl=timedelta(days=90),
    schema=[
        Field(
            name=F.recent_items,
            dtype=Array(String),
            description="Last items viewed, carted or bought, newest first, at most recent_items_n: the daily "
            "snapshot's, updated by every push.",
        ),
    ],
    source=sources.customer_recent_push,
    online=True,
    owner=OWNER,
    description="The items /recommend adds to the customer's history: loaded daily from the 30-day customer "
    "aggregates and pushed by POST /events as they happen.",
    tags=view_tags(family="recommend", kind="stream", pseudonymised=True),
)


class _DescribedOnDemandFeatureView(OnDemandFeatureView):
    """Feast 0.67 checks declared fields against the inferred ones including their descriptions, which inference
    never has, so a described field fails ``apply``; compare name and type instead."""

    def _feature_exists_in_inferred(self, specified_feature: Field, inferred_features: list[Field]) -> bool:
        return any(f.name == specified_feature.name and f.dtype == specified_feature.dtype for f in inferred_features)


@on_demand_feature_view(
    sources=[customer_channel[[windowed(F.avg_price, 30)]], sources.price_request],
    schema=[
        Field(
            name=F.price_ratio,
            dtype=Float64,
            description="Candidate price / the customer's 30-day average price paid on the channel; null without one.",
        ),
        Field(
            name=F.price_fit,
            dtype=Float64,
            description="min(ratio, 1/ratio): 1 when the candidate price matches what the customer usually pays, "
            "towards 0 the further it is off; null without purchases.",
        ),
    ],
    mode="pandas",
    description="How well a candidate price fits the customer's usual spend (needs candidate_price in the request).",
    owner=OWNER,
    tags=view_tags(family="recommend,pricing", kind="on_demand", pseudonymised=True),
)
def price_fit(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast rebuilds the function from its source text: it must import what it uses.
    import pandas as pd

    from omnicart.schemas import F, windowed

    average = pd.to_numeric(inputs[windowed(F.avg_price, 30)], errors="coerce").astype("float64")
    candidate = pd.to_numeric(inputs[F.candidate_price], errors="coerce").astype("float64")
    ratio = candidate / average.where(average > 0)
    out = pd.DataFrame(index=inputs.index)
    out[F.price_ratio] = ratio
    out[F.price_fit] = ratio.where(ratio <= 1, 1 / ratio).where(ratio > 0)
    return out


price_fit.__class__ = _DescribedOnDemandFeatureView

ALL = [
    customer_stats,
    item_stats,
    customer_channel,
    item_window,
    item_text,
    customer_realtime,
    customer_recent,
    price_fit,
]
