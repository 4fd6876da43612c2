"""Sources: the lake's daily feature partitions (paths relative to the store's repo path), the push source that
``POST /events`` feeds, and the request values on-demand views take."""

from feast import Field, FileSource, PushSource, RequestSource
from feast.types import Float64

from feature_repo.meta import OWNER
from omnicart import schemas
from omnicart.schemas import C, F


def _lake(table: str, description: str) -> FileSource:
    return FileSource(
        name=f"{table}_source",
        path=f"../lake/{table}",
        timestamp_field=C.event_timestamp,
        description=description,
        owner=OWNER,
    )


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
customer_channel_source = _lake(
    schemas.CUSTOMER_CHANNEL_FEATURES,
    "Daily customer x channel aggregates over 7/30/90 days, from pseudonymised lake events.",
)
item_window_source = _lake(
    schemas.ITEM_WINDOW_FEATURES,
    "Daily item popularity, conversion and price position over 7/30/90 days, from lake events and prices.",
)
item_text_source = _lake(
    schemas.ITEM_TEXT_EMBEDDINGS,
    "MiniLM embeddings of the item text (omnicart.text.item_text), written on the day a catalog row lands.",
)
customer_last_event_source = _lake(
    schemas.CUSTOMER_LAST_EVENT,
    "Each customer's last event and live items at the end of each day: the history of the pushed features.",
)
customer_events_push = PushSource(
    name=F.customer_events_push,
    batch_source=customer_last_event_source,
    description="Real-time customer features pushed by POST /events (omnicart.realtime.push_event).",
    owner=OWNER,
)
customer_recent_push = PushSource(
    name=F.customer_recent_push,
    batch_source=customer_stats_source,
    description="Each customer's recent items pushed by POST /events (omnicart.realtime.push_event); its history is "
    "the daily customer aggregates' recent_items.",
    owner=OWNER,
)
price_request = RequestSource(
    name="price_request",
    schema=[Field(name=F.candidate_price, dtype=Float64, description="A price to judge, given with the request.")],
    description="Values only the request knows, e.g. the price of a candidate item or offer.",
    owner=OWNER,
)

ALL = [
    customer_stats_source,
    item_stats_source,
    customer_channel_source,
    item_window_source,
    item_text_source,
    customer_last_event_source,
    customer_events_push,
    customer_recent_push,
    price_request,
]
