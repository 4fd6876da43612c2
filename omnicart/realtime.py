"""Real-time customer features: one shop event (``POST /events``) pushed into Feast's online store as it happens.

Privacy at the boundary: the raw channel identifier is tokenised before it is used, and is never stored, returned
or logged; an erased customer's events are dropped. The pushed values are the same as the daily batch snapshot
``features.customer_last_event`` computes from the lake, so training (offline history) and serving (online) agree.

Validated at the door: a timestamp within ``MAX_EVENT_AGE`` before now and ``MAX_EVENT_LEAD`` after it, a finite
price up to ``MAX_PRICE``, a known customer (the lake's customers or identity map), a known item (the catalog).

Known limits: events are applied in arrival order (a late event overwrites a newer one), and the daily
materialisation rewrites the view with the end-of-day snapshot (events pushed between midnight and that run are
replaced by the previous day's values until they are pushed again or the next day's run loads them).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from omnicart import lake, schemas
from omnicart.pricing.optimiser import MAX_PRICE
from omnicart.privacy.suppression import suppressed
from omnicart.schemas import C, F
from omnicart.settings import Settings

log = logging.getLogger(__name__)

# The window an event's timestamp must fall in, around the time it arrives. Older events are history: the daily
# batch loads them from the lake, and pushed they would overwrite newer online values (and the online store's
# timestamps would not fit pandas' datetime64[ns] for the oldest). A day ahead allows for clock skew and the shops'
# time zones; further ahead the event has not happened.
MAX_EVENT_AGE = dt.timedelta(days=365)
MAX_EVENT_LEAD = dt.timedelta(days=1)
# How long the known customers and items are trusted before the lake is looked at again (a new partition is picked
# up within this time; each check lists the table's partitions).
KNOWN_TTL_S = 30.0


class ShopEvent(BaseModel):
    """One customer event from any channel, as ``POST /events`` receives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str | None = Field(None, max_length=128, description="The shop's id of the event, if it has one.")
    event_timestamp: dt.datetime | None = Field(
        None, description="When it happened (ISO 8601; naive means UTC). Default: when it was received."
    )
    customer_id: str | None = Field(
        None, min_length=1, max_length=64, description="The CRM customer id, when the channel knows it."
    )
    channel: Literal[schemas.CHANNELS] = Field(description="Where it happened.")  # type: ignore[valid-type]
    identifier: SecretStr | None = Field(
        None,
        max_length=256,
        description="The id the channel saw the customer under (web cookie, device id, loyalty card, social handle, "
        "email for service): raw personal data, tokenised on arrival and never stored. Needed without customer_id.",
    )
    event_type: Literal[schemas.EVENT_TYPES] = Field(description="What happened.")  # type: ignore[valid-type]
    item_id: str = Field(min_length=1, max_length=64, description="The catalog item.")
    quantity: int = Field(1, ge=1, le=10_000, description="Units (carts, purchases, returns).")
    price: float | None = Field(
        None, ge=0, le=MAX_PRICE, allow_inf_nan=False, description="Unit price at the event (the pricing bound)."
    )

    @field_validator("event_timestamp")
    @classmethod
    def _recent(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        now = dt.datetime.now(dt.UTC)
        try:  # an offset at the ends of the calendar (0001-01-01T00:00+01:00) overflows on conversion
            when = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        except OverflowError:
            when = None
        if when is None or not now - MAX_EVENT_AGE <= when <= now + MAX_EVENT_LEAD:
            raise ValueError(
                f"must be within {MAX_EVENT_AGE.days} days before now and {MAX_EVENT_LEAD.days} day after it"
            )
        return value

    @model_validator(mode="after")
    def _someone(self) -> ShopEvent:
        if self.customer_id is None and self.identifier is None:
            raise ValueError("give customer_id or identifier: whose event is it?")
        return self


class PushResult(BaseModel):
    """What ``push_event`` did: the customer it resolved to and the values now online (no personal data)."""

    pushed: bool
    customer_id: str | None = None
    reason: Literal["unknown_customer", "unknown_item", "erased"] | None = None
    field: str | None = Field(None, description="When not pushed: the input that was not recognised.")
    features: dict[str, Any] = Field(default_factory=dict)


_cache: dict[tuple[str, str], tuple[float, Any, Any]] = {}  # (lake, table) -> (checked at, stamp, value)
_cache_lock = threading.Lock()


def _cached(settings: Settings, table: str, stamp: Callable[[], Any], load: Callable[[], Any]) -> Any:
    """``load()`` once per change of ``stamp()`` (the table's partitions), looked at again after ``KNOWN_TTL_S``."""
    key, now = (str(settings.lake_dir), table), time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and now - hit[0] < KNOWN_TTL_S:
        return hit[2]
    current = stamp()
    value = hit[2] if hit is not None and hit[1] == current else load()
    with _cache_lock:
        _cache[key] = (now, current, value)
    return value


def _stamp(settings: Settings, table: str) -> tuple:
    """The table's partition days and its newest partition's files with their modification times."""
    days = lake.partitions(settings.lake_dir, table)
    files = lake.partition_files(settings.lake_dir, table, days[-1]) if days else []
    return tuple(days), tuple((str(f), f.stat().st_mtime_ns) for f in files)


def _identity_map(settings: Settings) -> Any:
    """The latest identity map (a DataFrame, or None), cached."""
    from omnicart.ingest.identity import latest_identity_map

    return _cached(
        settings,
        schemas.IDENTITY_MAP,
        lambda: _stamp(settings, schemas.IDENTITY_MAP),
        lambda: latest_identity_map(settings),
    )


def _known_customer(settings: Settings, customer_id: str) -> bool:
    """Whether the lake's customers (every platform lands them; only the omnichannel ingest resolves an identity
    map) or the latest identity map know this CRM id; both cached."""

    def load() -> frozenset[str]:
        crm = lake.read_table(settings.lake_dir, schemas.CUSTOMERS, columns=[C.customer_id])
        return frozenset(crm[C.customer_id].dropna().astype(str))

    if customer_id in _cached(settings, schemas.CUSTOMERS, lambda: _stamp(settings, schemas.CUSTOMERS), load):
        return True
    m = _identity_map(settings)
    return m is not None and bool(((m[C.id_kind] == C.customer_id) & (m[C.identifier] == customer_id)).any())


def _known_items(settings: Settings) -> frozenset[str]:
    """The catalog's item ids (every partition of the lake's items), cached."""

    def load() -> frozenset[str]:
        items = lake.read_table(settings.lake_dir, schemas.ITEMS, columns=[C.item_id])
        return frozenset(items[C.item_id].dropna().astype(str))

    return _cached(settings, schemas.ITEMS, lambda: _stamp(settings, schemas.ITEMS), load)


def _resolve(settings: Settings, kind: str, identifier_token: str) -> str | None:
    """The CRM id of the identity an identifier token belongs to (latest identity map), or None."""
    m = _identity_map(settings)
    if m is None or m.empty:
        return None
    unshared = m[~m[C.shared].astype(bool)]
    hit = unshared.loc[(unshared[C.id_kind] == kind) & (unshared[C.identifier] == identifier_token), C.resolved_id]
    if hit.empty:
        return None
    crm = unshared.loc[(unshared[C.resolved_id] == hit.iloc[0]) & (unshared[C.id_kind] == C.customer_id)]
    return str(crm[C.identifier].iloc[0]) if len(crm) == 1 else None


def push_event(settings: Settings, event: dict[str, Any] | ShopEvent, store: Any = None) -> PushResult:
    """Validate one event (``pydantic.ValidationError`` names the bad field), resolve its customer, and push the
    customer's real-time features (view ``customer_realtime``) to the online store. ``store``: a FeatureStore to
    reuse (serving keeps one); built from ``settings`` when omitted.

    Not pushed (``reason`` and ``field`` say why): a customer neither the lake's customers nor the identity map
    knows, an erased customer, an item not in the catalog."""
    from omnicart.featurestore import feature_store, online_features
    from omnicart.privacy.pseudonymise import token

    ev = event if isinstance(event, ShopEvent) else ShopEvent.model_validate(event)
    key = settings.secret("pseudonym_key")
    kind = schemas.CHANNEL_IDENTIFIER[ev.channel]
    id_token = token(key, kind, ev.identifier.get_secret_value()) if ev.identifier is not None else None
    customer = ev.customer_id or (_resolve(settings, kind, id_token) if id_token else None)
    field = "customer_id" if ev.customer_id is not None else "identifier"
    if customer is None:
        log.info("event on %s for an unknown customer: not pushed", ev.channel)
        return PushResult(pushed=False, reason="unknown_customer", field=field)
    if {customer, token(key, C.customer_id, customer), id_token} & suppressed(settings):
        log.info("event of an erased customer: dropped")
        return PushResult(pushed=False, reason="erased", field=field)
    if ev.customer_id is not None and not _known_customer(settings, customer):
        log.info("event on %s for a customer id the lake does not know: not pushed", ev.channel)
        return PushResult(pushed=False, reason="unknown_customer", field="customer_id")
    if ev.item_id not in _known_items(settings):
        log.info("event on %s for an item not in the catalog: not pushed", ev.channel)
        return PushResult(pushed=False, reason="unknown_item", field="item_id")

    import pandas as pd

    store = store if store is not None else feature_store(settings)
    ref = f"{F.customer_realtime_view}:{F.live_items}"
    live = list(online_features(store, [ref], C.customer_id, [customer])[0].get(F.live_items) or [])
    if ev.event_type != "return":  # as in the batch snapshot: returns show no interest
        live = [ev.item_id, *(i for i in live if i != ev.item_id)][: settings.recent_items_n]
    when = ev.event_timestamp or dt.datetime.now(dt.UTC)
    when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    values = {
        F.last_item_id: ev.item_id,
        F.last_event_type: ev.event_type,
        F.last_channel: ev.channel,
        F.last_price: float(ev.price) if ev.price is not None else math.nan,
        F.live_items: live,
    }
    row = pd.DataFrame([{C.customer_id: customer, C.event_timestamp: pd.Timestamp(when), **values}])
    store.push(F.customer_events_push, row)  # Feast's default: the online store only (the lake is the history)
    if ev.price is None:
        values[F.last_price] = None
    return PushResult(pushed=True, customer_id=customer, features=values)
