"""POST /events' library side: the event model, customer resolution, privacy, and what is pushed (fake store)."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pydantic
import pytest

from omnicart import lake, schemas
from omnicart.privacy.pseudonymise import token
from omnicart.privacy.suppression import log_path
from omnicart.realtime import PushResult, ShopEvent, push_event
from omnicart.schemas import C, F
from omnicart.settings import Settings

EMAIL = "ann.smith@example.com"
HOUR_AGO = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(tzinfo=None, microsecond=0)  # naive: UTC


class FakeStore:
    """Records pushes; answers online reads from what was pushed."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, pd.DataFrame]] = []
        self.online: dict[str, list[str]] = {}

    def get_online_features(self, features, entity_rows):
        ids = [row[C.customer_id] for row in entity_rows]
        return _Response({C.customer_id: ids, F.live_items: [self.online.get(i) for i in ids]})

    def push(self, source, df, to=None):
        self.pushed.append((source, df))
        for row in df.to_dict("records"):
            self.online[row[C.customer_id]] = row[F.live_items]


class _Response:
    def __init__(self, data):
        self.data = data

    def to_dict(self):
        return self.data


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(home=tmp_path, recent_items_n=3)
    key = s.secret("pseudonym_key")
    identity_map = pd.DataFrame(
        {
            C.id_kind: [C.customer_id, C.email, C.web_cookie, C.customer_id],
            C.identifier: ["C000042", token(key, C.email, EMAIL), token(key, C.web_cookie, "wc.shared"), "C9"],
            C.resolved_id: ["P1", "P1", "P2", "P3"],
            C.shared: [False, False, True, False],
            "first_seen": pd.Timestamp("2026-01-01", tz="UTC"),
        }
    )
    lake.write_partition(s.lake_dir, schemas.IDENTITY_MAP, dt.date(2026, 1, 1), identity_map)
    items = [f"I{i}" for i in range(1, 10)]  # the catalog, over two days' partitions
    lake.write_partition(s.lake_dir, schemas.ITEMS, dt.date(2026, 1, 1), pd.DataFrame({C.item_id: items[:5]}))
    lake.write_partition(s.lake_dir, schemas.ITEMS, dt.date(2026, 1, 2), pd.DataFrame({C.item_id: items[5:]}))
    return s


def test_event_needs_someone_and_names_bad_fields():
    with pytest.raises(pydantic.ValidationError, match="customer_id or identifier"):
        ShopEvent.model_validate({"channel": "web", "event_type": "view", "item_id": "I1"})
    with pytest.raises(pydantic.ValidationError) as err:
        ShopEvent.model_validate({"channel": "tv", "event_type": "view", "item_id": "I1", "customer_id": "C1"})
    assert [e["loc"] for e in err.value.errors()] == [("channel",)]
    event = ShopEvent.model_validate({"channel": "service", "event_type": "view", "item_id": "I1", "identifier": EMAIL})
    assert EMAIL not in repr(event) and EMAIL not in event.model_dump_json()


def test_push_by_customer_id_keeps_live_items_newest_first(settings):
    store = FakeStore()
    for item in ("I1", "I2", "I1", "I3", "I4"):
        result = push_event(
            settings, {"channel": "web", "event_type": "view", "item_id": item, "customer_id": "C9"}, store
        )
    assert result.pushed and result.customer_id == "C9"
    assert result.features[F.live_items] == ["I4", "I3", "I1"]  # distinct, newest first, recent_items_n long
    source, frame = store.pushed[-1]
    assert source == F.customer_events_push
    assert set(frame.columns) == {C.customer_id, C.event_timestamp, F.last_item_id, F.last_event_type,
                                  F.last_channel, F.last_price, F.live_items}  # fmt: skip
    returned = push_event(
        settings, {"channel": "store", "event_type": "return", "item_id": "I9", "customer_id": "C9"}, store
    )
    assert returned.features[F.live_items] == ["I4", "I3", "I1"]  # a return shows no interest
    assert returned.features[F.last_event_type] == "return" and returned.features[F.last_item_id] == "I9"


def test_push_by_raw_identifier_resolves_and_never_stores_it(settings):
    store = FakeStore()
    event = {
        "channel": "service",
        "event_type": "add_to_cart",
        "item_id": "I7",
        "identifier": "  Ann.Smith@Example.com ",
        "price": 12.5,
        "event_timestamp": HOUR_AGO.isoformat(),
    }
    result = push_event(settings, event, store)
    assert result == PushResult(pushed=True, customer_id="C000042", features=result.features)
    frame = store.pushed[0][1]
    assert frame[C.event_timestamp].iloc[0] == pd.Timestamp(HOUR_AGO, tz="UTC")
    text = frame.to_json() + result.model_dump_json()
    assert EMAIL not in text.lower() and "ann.smith" not in text.lower()


def test_unknown_shared_and_erased_customers_are_not_pushed(settings):
    store = FakeStore()
    unknown = push_event(
        settings, {"channel": "web", "event_type": "view", "item_id": "I1", "identifier": "wc.x"}, store
    )
    shared = push_event(
        settings, {"channel": "web", "event_type": "view", "item_id": "I1", "identifier": "wc.shared"}, store
    )
    assert unknown.reason == shared.reason == "unknown_customer"
    key = settings.secret("pseudonym_key")
    log_path(settings).parent.mkdir(parents=True, exist_ok=True)
    log_path(settings).write_text(json.dumps({"suppress": [token(key, C.customer_id, "C000042")]}) + "\n")
    erased = push_event(
        settings, {"channel": "service", "event_type": "view", "item_id": "I1", "identifier": EMAIL}, store
    )
    assert erased == PushResult(pushed=False, reason="erased", field="identifier")
    assert store.pushed == []


EVENT = {"channel": "web", "event_type": "purchase", "item_id": "I1", "customer_id": "C000042"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_timestamp": "0001-01-01T00:00:00"}, "event_timestamp"),
        ({"event_timestamp": "9999-12-31T23:59:59"}, "event_timestamp"),
        ({"event_timestamp": "0001-01-01T00:00:00+01:00"}, "event_timestamp"),
        ({"event_timestamp": "9999-12-31T23:59:59-01:00"}, "event_timestamp"),
        ({"event_timestamp": (dt.datetime.now(dt.UTC) - dt.timedelta(days=400)).isoformat()}, "event_timestamp"),
        ({"event_timestamp": (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()}, "event_timestamp"),
        ({"price": float("inf")}, "price"),
        ({"price": float("nan")}, "price"),
        ({"price": "Infinity"}, "price"),
        ({"price": -1.0}, "price"),
        ({"price": 1e300}, "price"),
        ({"quantity": 10**9}, "quantity"),
    ],
)
def test_events_out_of_range_are_rejected_by_field(settings, fields: dict, field: str) -> None:
    store = FakeStore()
    with pytest.raises(pydantic.ValidationError) as err:
        push_event(settings, {**EVENT, **fields}, store)
    assert [e["loc"] for e in err.value.errors()] == [(field,)]
    assert store.pushed == []


def test_events_at_the_edges_of_the_window_are_pushed(settings) -> None:
    store = FakeStore()
    now = dt.datetime.now(dt.UTC)
    for when in (now - dt.timedelta(days=364), now + dt.timedelta(hours=23)):
        result = push_event(settings, {**EVENT, "event_timestamp": when.isoformat(), "price": 0.0}, store)
        assert result.pushed and result.features[F.last_price] == 0.0
    assert len(store.pushed) == 2


def test_unknown_customer_ids_and_items_are_not_pushed_and_named(settings) -> None:
    store = FakeStore()
    stranger = push_event(settings, {**EVENT, "customer_id": "C404"}, store)
    assert stranger == PushResult(pushed=False, reason="unknown_customer", field="customer_id")
    nothing = push_event(settings, {**EVENT, "item_id": "NOPE"}, store)
    assert nothing == PushResult(pushed=False, reason="unknown_item", field="item_id")
    by_email = {**EVENT, "channel": "service", "customer_id": None, "identifier": EMAIL, "item_id": "NOPE"}
    resolved = push_event(settings, by_email, store)
    assert resolved.reason == "unknown_item" and resolved.field == "item_id"
    assert push_event(settings, {**EVENT, "item_id": "I9"}, store).pushed  # from the second day's partition
    assert len(store.pushed) == 1


def test_known_ids_are_read_once_and_a_new_partition_is_seen(settings, monkeypatch) -> None:
    from omnicart import realtime

    reads = []
    real_read = lake.read_table
    monkeypatch.setattr(realtime.lake, "read_table", lambda *a, **k: reads.append(a[1]) or real_read(*a, **k))
    store = FakeStore()
    for _ in range(5):
        assert push_event(settings, EVENT, store).pushed
    assert reads.count(schemas.ITEMS) == 1
    lake.write_partition(settings.lake_dir, schemas.ITEMS, dt.date(2026, 1, 3), pd.DataFrame({C.item_id: ["I10"]}))
    assert push_event(settings, {**EVENT, "item_id": "I10"}, store).reason == "unknown_item"  # trusted for a while
    monkeypatch.setattr(realtime, "KNOWN_TTL_S", 0.0)
    assert push_event(settings, {**EVENT, "item_id": "I10"}, store).pushed
    assert reads.count(schemas.ITEMS) == 2


def test_a_platform_without_an_identity_map_knows_its_crm_customers(tmp_path) -> None:
    """shop_daily lands customers but never resolves identities: their ids are known from the lake's customers."""
    s = Settings(home=tmp_path, recent_items_n=3)
    lake.write_partition(s.lake_dir, schemas.ITEMS, dt.date(2026, 1, 1), pd.DataFrame({C.item_id: ["I1"]}))
    lake.write_partition(s.lake_dir, schemas.CUSTOMERS, dt.date(2026, 1, 1), pd.DataFrame({C.customer_id: ["C7"]}))
    store = FakeStore()
    assert push_event(s, {**EVENT, "customer_id": "C7"}, store).pushed
    stranger = push_event(s, {**EVENT, "customer_id": "C8"}, store)
    assert stranger == PushResult(pushed=False, reason="unknown_customer", field="customer_id")
    assert len(store.pushed) == 1
