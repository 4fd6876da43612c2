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
            C.id_kind: [C.customer_id, C.email, C.web_cookie],
            C.identifier: ["C000042", token(key, C.email, EMAIL), token(key, C.web_cookie, "wc.shared")],
            C.resolved_id: ["P1", "P1", "P2"],
            C.shared: [False, False, True],
            "first_seen": pd.Timestamp("2026-01-01", tz="UTC"),
        }
    )
    lake.write_partition(s.lake_dir, schemas.IDENTITY_MAP, dt.date(2026, 1, 1), identity_map)
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
        "event_timestamp": "2026-01-02T10:00:00",
    }
    result = push_event(settings, event, store)
    assert result == PushResult(pushed=True, customer_id="C000042", features=result.features)
    frame = store.pushed[0][1]
    assert frame[C.event_timestamp].iloc[0] == pd.Timestamp("2026-01-02T10:00:00", tz="UTC")
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
    assert erased == PushResult(pushed=False, reason="erased")
    assert store.pushed == []
