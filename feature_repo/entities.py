"""Entities: who and what features describe."""

from feast import Entity, ValueType

from omnicart.schemas import C

customer = Entity(
    name="customer",
    join_keys=[C.customer_id],
    value_type=ValueType.STRING,
    description="A shop customer, one id across every channel (CRM id, or the resolved identity).",
)
item = Entity(
    name="item",
    join_keys=[C.item_id],
    value_type=ValueType.STRING,
    description="A catalog product.",
)
channel = Entity(
    name="channel",
    join_keys=[C.channel],
    value_type=ValueType.STRING,
    description='A shop channel (web, app, store, social, service), or "all" for every channel together.',
)
