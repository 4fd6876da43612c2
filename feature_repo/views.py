"""Feature views: what the models read, offline point-in-time and online."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float64, Int64, String

from feature_repo import entities, sources
from omnicart.schemas import C, F

OWNER = "ml-team@localhost"

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
    tags={"family": "recommend", "pseudonymised": "true"},
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
    tags={"family": "recommend", "pseudonymised": "false"},
)
