"""POST /events' library side: the event model, customer resolution, privacy, and what is pushed (a fake store that
records pushes; the last tests push into a real Feast SQLite store and read the values back as /recommend does)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import pathlib
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pydantic
import pytest

from omnicart import lake, schemas
from omnicart.privacy.pseudonymise import token
from omnicart.privacy.suppression import log_path
from omnicart.realtime import PushResult, ShopEvent, customer_lock, push_event, recent_items
from omnicart.schemas import C, F
from omnicart.settings import Settings

EMAIL = "ann.smith@example.com"
HOUR_AGO = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(tzinfo=None, microsecond=0)  # naive: UTC


class FakeStore:
    """Records pushes; answers online reads from what was pushed."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, pd.DataFrame]] = []
        self.online: dict[str, dict] = {}

    def get_online_features(self, features, entity_rows):
        ids = [row[C.customer_id] for row in entity_rows]
        names = [ref.split(":", 1)[1] for ref in features]
        return _Response({C.customer_id: ids, **{n: [self.online.get(i, {}).get(n) for i in ids] for n in names}})

    def write_to_online_store(self, view, df):
        self.pushed.append((view, df))
        for row in df.to_dict("records"):
            self.online.setdefault(row[C.customer_id], {}).update(row)


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


def test_push_by_customer_id_keeps_recent_items_newest_first(settings):
    store = FakeStore()
    for item in ("I1", "I2", "I1", "I3", "I4"):
        result = push_event(
            settings, {"channel": "web", "event_type": "view", "item_id": item, "customer_id": "C9"}, store
        )
    assert result.pushed and result.customer_id == "C9"
    assert result.features[F.recent_items] == ["I4", "I3", "I1"]  # distinct, newest first, recent_items_n long
    assert result.features[F.live_items] == ["I4", "I3", "I1"]  # the ranker's live activity, by the same rule
    (realtime, frame), (recent, listed) = store.pushed[-2:]
    assert (realtime, recent) == (F.customer_realtime_view, F.customer_recent_view)
    assert set(frame.columns) == {C.customer_id, C.event_timestamp, F.last_item_id, F.last_event_type,
                                  F.last_channel, F.last_price, F.live_items}  # fmt: skip
    assert set(listed.columns) == {C.customer_id, C.event_timestamp, F.recent_items}
    returned = push_event(
        settings, {"channel": "store", "event_type": "return", "item_id": "I9", "customer_id": "C9"}, store
    )
    assert returned.features[F.recent_items] == ["I4", "I3", "I1"]  # a return shows no interest
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
    assert len(store.pushed) == 2 * 2  # two events, each to both views


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
    assert len(store.pushed) == 2  # one event, to both views


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
    assert len(store.pushed) == 2


@pytest.mark.parametrize(
    ("current", "event_type", "item", "expected"),
    [
        (None, "view", "I1", ["I1"]),  # no row online yet
        ([], "add_to_cart", "I1", ["I1"]),
        (["I2", "I3"], "view", "I1", ["I1", "I2", "I3"]),  # newest first
        (["I2", "I1", "I3"], "purchase", "I1", ["I1", "I2", "I3"]),  # once: moved to the front
        (["I1", "I2", "I3"], "view", "I4", ["I4", "I1", "I2"]),  # at most n: the oldest drops out
        (["I1", "I2"], "return", "I2", ["I1", "I2"]),  # a return shows no interest
        (["I1", "I2", "I3", "I4"], "return", "I9", ["I1", "I2", "I3"]),  # and the list keeps its bound
    ],
)
def test_recent_items_rule(current, event_type, item, expected) -> None:
    assert recent_items(current, event_type, item, 3) == expected


def test_recent_items_follow_the_batch_snapshots_rule() -> None:
    """Pushed one by one, a day's events leave the list ``features.customer_last_event`` computes from the lake."""
    from omnicart.features import customer_last_event

    day = dt.date(2026, 3, 2)
    kinds = ["view", "add_to_cart", "purchase", "return", "view", "view", "purchase", "return"]
    items = ["I1", "I2", "I2", "I3", "I4", "I1", "I5", "I5"]
    events = pd.DataFrame(
        {
            C.event_id: [f"e{n}" for n in range(len(items))],
            C.customer_id: "C1",
            C.event_type: kinds,
            C.item_id: items,
            C.channel: "web",
            C.price: 1.0,
            C.event_timestamp: pd.date_range("2026-03-02 08:00", periods=len(items), freq="min", tz="UTC"),
        }
    )
    pushed: list[str] = []
    for kind, item in zip(kinds, items, strict=True):
        pushed = recent_items(pushed, kind, item, 3)
    snapshot = customer_last_event(events, day, 3)
    assert pushed == list(snapshot[F.live_items].iloc[0]) == ["I5", "I1", "I4"]


class SlowStore(FakeStore):
    """A fake store whose read and write are far apart, as a loaded online store's can be: without a lock, two
    concurrent events of one customer would read the same list and the second write would drop the first item."""

    def get_online_features(self, features, entity_rows):
        answer = super().get_online_features(features, entity_rows)
        time.sleep(0.01)
        return answer


def test_concurrent_events_of_one_customer_lose_nothing(settings) -> None:
    store = SlowStore()
    settings = settings.model_copy(update={"recent_items_n": 10})
    items = [f"I{i}" for i in range(1, 10)]
    view = lambda item: push_event(settings, {**EVENT, "event_type": "view", "item_id": item}, store)  # noqa: E731
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        results = list(pool.map(view, items))
    assert all(r.pushed for r in results)
    assert sorted(store.online["C000042"][F.recent_items]) == sorted(items)  # every event is in the list
    assert sorted(store.online["C000042"][F.live_items]) == sorted(items)


def _hold_and_append(home: str, path: str, customer: str, item: str) -> None:
    """In another process: under the customer's lock, read a shared list, wait, and write it back with ``item``."""
    s = Settings(home=pathlib.Path(home))
    with customer_lock(s, customer):
        current = json.loads(pathlib.Path(path).read_text())
        time.sleep(0.05)
        pathlib.Path(path).write_text(json.dumps([item, *current]))


def test_the_customer_lock_serialises_processes(tmp_path) -> None:
    """Serve replicas are processes: the lock holds across them (a POSIX record lock on the store's lock file)."""
    shared = tmp_path / "list.json"
    shared.write_text("[]")
    context = multiprocessing.get_context("fork")  # the test module is loaded already
    workers = [
        context.Process(target=_hold_and_append, args=(str(tmp_path / "home"), str(shared), "C1", f"I{n}"))
        for n in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * 4
    assert sorted(json.loads(shared.read_text())) == ["I0", "I1", "I2", "I3"]


def test_customers_on_other_stripes_do_not_wait(settings) -> None:
    from omnicart import realtime

    others = [c for c in (f"C{n}" for n in range(100)) if zlib.crc32(c.encode()) % realtime.LOCK_STRIPES
              != zlib.crc32(b"C1") % realtime.LOCK_STRIPES]  # fmt: skip
    with customer_lock(settings, "C1"):
        done = ThreadPoolExecutor(max_workers=1).submit(lambda: _locked_briefly(settings, others[0]))
        assert done.result(timeout=5) is True


def _locked_briefly(settings: Settings, customer: str) -> bool:
    with customer_lock(settings, customer):
        return True


# --- a real Feast store: what /events pushes is what /recommend reads ----------------------------------------------
@pytest.fixture
def feast_home(settings):
    from feature_repo import definitions
    from omnicart import featurestore

    featurestore.apply(settings, definitions())
    return settings, featurestore.feature_store(settings)


def test_pushed_events_reach_the_list_recommend_reads(feast_home) -> None:
    from omnicart.featurestore import online_features
    from serving.recommend import FEATURE_REFS

    settings, store = feast_home
    before = online_features(store, FEATURE_REFS, C.customer_id, ["C000042"])[0]
    assert before[F.recent_items] is None  # nothing materialised or pushed yet
    for kind, item in (("view", "I1"), ("add_to_cart", "I2"), ("purchase", "I1"), ("return", "I2"), ("view", "I3")):
        assert push_event(settings, {**EVENT, "event_type": kind, "item_id": item}, store).pushed
    row = online_features(store, FEATURE_REFS, C.customer_id, ["C000042"])[0]
    assert row[F.recent_items] == ["I3", "I1", "I2"]  # newest first, the return changed nothing, n = 3
    realtime_row = online_features(
        store, [f"{F.customer_realtime_view}:{n}" for n in (F.last_item_id, F.live_items)], C.customer_id,
        ["C000042"],
    )[0]  # fmt: skip
    assert realtime_row == {C.customer_id: "C000042", F.last_item_id: "I3", F.live_items: ["I3", "I1", "I2"]}
    other = online_features(store, FEATURE_REFS, C.customer_id, ["C9"])[0]
    assert other[F.recent_items] is None  # another customer's list is untouched


def test_concurrent_events_reach_the_real_store_without_loss(feast_home) -> None:
    from omnicart.featurestore import online_features
    from serving.recommend import FEATURE_REFS

    settings, store = feast_home
    settings = settings.model_copy(update={"recent_items_n": 10})
    items = [f"I{i}" for i in range(1, 9)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: push_event(settings, {**EVENT, "event_type": "view", "item_id": i}, store), items))
    row = online_features(store, FEATURE_REFS, C.customer_id, ["C000042"])[0]
    assert sorted(row[F.recent_items]) == sorted(items)


def test_an_event_goes_on_top_of_the_materialised_daily_list(settings) -> None:
    """The daily run loads the lake's 30-day recent items; an event then puts its item in front of them."""
    from feature_repo.apply import apply_and_materialize
    from omnicart.features import end_of_day
    from omnicart.featurestore import feature_store, online_features
    from serving.recommend import FEATURE_REFS

    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()
    daily = pd.DataFrame(
        {
            C.customer_id: ["C000042"],
            C.segment: ["family"],
            F.n_purchases_30d: [2],
            F.n_views_30d: [5],
            F.spend_30d: [30.0],
            F.recent_items: [["I5", "I6", "I7"]],
            C.event_timestamp: [end_of_day(day)],
        }
    )
    lake.write_partition(settings.lake_dir, schemas.CUSTOMER_FEATURES, day, daily)
    loaded = apply_and_materialize(settings, day, day)
    assert F.customer_recent_view in loaded
    store = feature_store(settings)
    assert online_features(store, FEATURE_REFS, C.customer_id, ["C000042"])[0][F.recent_items] == ["I5", "I6", "I7"]
    assert push_event(settings, {**EVENT, "event_type": "view", "item_id": "I6"}, store).pushed
    row = online_features(store, FEATURE_REFS, C.customer_id, ["C000042"])[0]
    assert row[F.recent_items] == ["I6", "I5", "I7"] and row[C.segment] == "family"
