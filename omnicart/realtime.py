"""Real-time customer features: one shop event (``POST /events``) pushed into Feast's online store as it happens.

What an event changes: its customer's ``recent_items`` in view ``customer_recent`` (the latest distinct items viewed,
carted or bought, newest first, ``recent_items_n`` long), which ``/recommend`` reads on every request and adds to the
customer's history, so the next answer already draws candidates from the event's item (its co-bought
and similar items) and says so in its reasons. A view, an add to cart and a purchase put the item first; a return
leaves the list as it was (it shows no interest). A purchased item is not dropped from the list: it is history, and
a request that wants only never-bought items asks ``exclude_bought``. The same rule keeps
the ``live_items`` and last event of view ``customer_realtime`` (the ranker's live activity). It is the daily batch
snapshots' rule (``features.customer_stats``, ``features.customer_last_event``), so training (offline, from the
lake) and serving (online) see the same lists.

Online only (``write_to_online_store``, what the views' push sources do with ``PushMode.ONLINE`` at half the cost):
every event also reaches the lake through the channels' daily ingest, and the end-of-day snapshots built from it are
the views' offline history; Feast's file offline store (``PushMode.ONLINE_AND_OFFLINE``) would append the pushed rows
to one parquet file at the source's path, which here is the lake's partitioned table.

Privacy at the boundary: the raw channel identifier is tokenised before it is used, and is never stored, returned
or logged; an erased customer's events are dropped.

Validated at the door: a timestamp within ``MAX_EVENT_AGE`` before now and ``MAX_EVENT_LEAD`` after it, a finite
price up to ``MAX_PRICE``, a known customer (the lake's customers or identity map), a known item (the catalog).

Concurrent events: the read-modify-write of a customer's list is serialised per customer among the threads of a
process and the processes of a host (``customer_lock``), so parallel requests and replicas sharing the embedded
online store lose no event. Known limits: replicas on several hosts writing one networked online store are not
serialised (two events of a customer within one read and write, tens of milliseconds, can lose one online until
the next daily materialisation rebuilds the list from the lake); events are applied in arrival order (a late
event's item goes first); and the daily materialisation rewrites the view with the end-of-day snapshot (events
pushed between midnight and that run are replaced by the previous day's values until the next day's run loads them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
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
# Customers are serialised by stripe: a customer waits only for events of customers hashed to the same stripe.
LOCK_STRIPES = 1024
LOCK_FILE = "push.lock"  # beside the online store, in the store's folder


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
    refs = [f"{F.customer_realtime_view}:{F.live_items}", f"{F.customer_recent_view}:{F.recent_items}"]
    when = ev.event_timestamp or dt.datetime.now(dt.UTC)
    when = pd.Timestamp(when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC))
    n = settings.recent_items_n
    with customer_lock(settings, customer):
        online = online_features(store, refs, C.customer_id, [customer])[0]
        values = {
            F.last_item_id: ev.item_id,
            F.last_event_type: ev.event_type,
            F.last_channel: ev.channel,
            F.last_price: float(ev.price) if ev.price is not None else math.nan,
            F.live_items: recent_items(online.get(F.live_items), ev.event_type, ev.item_id, n),
        }
        recent = recent_items(online.get(F.recent_items), ev.event_type, ev.item_id, n)
        key = {C.customer_id: customer, C.event_timestamp: when}
        # what the push sources' online push does, without Feast listing every view and service on each event
        store.write_to_online_store(F.customer_realtime_view, pd.DataFrame([{**key, **values}]))
        store.write_to_online_store(F.customer_recent_view, pd.DataFrame([{**key, F.recent_items: recent}]))
    values[F.recent_items] = recent
    if ev.price is None:
        values[F.last_price] = None
    return PushResult(pushed=True, customer_id=customer, features=values)


def recent_items(current: Iterable[str] | None, event_type: str, item_id: str, n: int) -> list[str]:
    """A customer's recent items after one event: a view, add to cart or purchase puts ``item_id`` first (once, at
    most ``n`` items, newest first); a return leaves them as they were (the batch snapshot's rule)."""
    items = [str(i) for i in current or ()]
    if event_type == "return":
        return items[:n]
    return [item_id, *(i for i in items if i != item_id)][:n]


_stripe_locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
_lock_files: dict[str, int] = {}
_lock_files_lock = threading.Lock()


def _lock_file(settings: Settings) -> int:
    """This process's descriptor of the lock file, opened once and never closed: closing any descriptor of a file
    drops every POSIX record lock the process holds on it."""
    path = settings.feast_dir / LOCK_FILE
    with _lock_files_lock:
        fd = _lock_files.get(str(path))
        if fd is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _lock_files[str(path)] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        return fd


@contextlib.contextmanager
def customer_lock(settings: Settings, customer_id: str) -> Iterator[None]:
    """Hold the customer's stripe: a thread lock (POSIX record locks do not exclude threads of one process), then
    an exclusive record lock on the stripe's byte of the store's lock file (processes of this host)."""
    stripe = zlib.crc32(customer_id.encode()) % LOCK_STRIPES  # the same in every process, unlike hash()
    with _stripe_locks[stripe]:
        fd = _lock_file(settings)
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, stripe)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, stripe)
