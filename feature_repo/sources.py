"""Offline sources: the lake's daily feature partitions (paths relative to the store's repo path)."""

from feast import FileSource

from omnicart import schemas
from omnicart.schemas import C

customer_stats_source = FileSource(
    name="customer_stats_source",
    path=f"../lake/{schemas.CUSTOMER_FEATURES}",
    timestamp_field=C.event_timestamp,
    description="Daily customer aggregates built from pseudonymised lake events.",
)
item_stats_source = FileSource(
    name="item_stats_source",
    path=f"../lake/{schemas.ITEM_FEATURES}",
    timestamp_field=C.event_timestamp,
    description="Daily item aggregates built from lake events and the catalog.",
)
