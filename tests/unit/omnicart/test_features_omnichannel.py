"""Omnichannel feature tables: windowed values, no future rows, stable types, and days that rebuild identically."""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from omnicart import features, lake, schemas, text
from omnicart.schemas import ALL_CHANNELS, C, F, windowed
from omnicart.settings import Settings

DAY = dt.date(2026, 3, 31)


def _ts(days_before: int, hour: int = 12) -> pd.Timestamp:
    return pd.Timestamp(DAY, tz="UTC") - pd.Timedelta(days=days_before) + pd.Timedelta(hours=hour)


def _events(rows: list[tuple]) -> pd.DataFrame:
    """rows of (days_before, customer, channel, event_type, item, quantity, price)."""
    frame = pd.DataFrame(
        rows, columns=["days_before", C.customer_id, C.channel, C.event_type, C.item_id, C.quantity, C.price]
    )
    frame[C.event_timestamp] = [_ts(d) for d in frame["days_before"]]
    frame[C.event_id] = [f"E{n:04d}" for n in range(len(frame))]
    return frame.drop(columns="days_before")


ITEMS = pd.DataFrame(
    {
        C.item_id: ["I1", "I2", "I3"],
        C.category: ["toys", "toys", "books"],
        C.price: [10.0, 30.0, 8.0],
        C.event_timestamp: pd.Timestamp("2026-01-01", tz="UTC"),
    }
)
EVENTS = _events(
    [
        (0, "A", "web", "view", "I1", 1, 9.0),
        (0, "A", "web", "purchase", "I1", 2, 9.0),  # today, web: 18.0
        (10, "A", "app", "purchase", "I3", 1, 8.0),  # 10 days ago, app
        (60, "A", "store", "purchase", "I2", 1, 30.0),  # 60 days ago, store
        (100, "A", "web", "purchase", "I2", 1, 30.0),  # beyond 90 days: ignored
        (3, "B", "store", "purchase", "I2", 1, 30.0),
        (2, "B", "service", "return", "I2", 1, 30.0),
        (-1, "A", "web", "purchase", "I3", 5, 8.0),  # tomorrow: must not leak in
    ]
)


def _row(frame: pd.DataFrame, customer: str, channel: str) -> pd.Series:
    hit = frame[(frame[C.customer_id] == customer) & (frame[C.channel] == channel)]
    assert len(hit) == 1, (customer, channel)
    return hit.iloc[0]


def test_customer_channel_windows_and_no_future():
    out = features.customer_channel_features(EVENTS, ITEMS, DAY, recent_n=5)
    a_all = _row(out, "A", ALL_CHANNELS)
    assert a_all[windowed(F.frequency, 7)] == 1
    assert a_all[windowed(F.frequency, 30)] == 2
    assert a_all[windowed(F.frequency, 90)] == 3  # the 100-day-old and tomorrow's purchases are out
    assert a_all[windowed(F.monetary, 7)] == pytest.approx(18.0)
    assert a_all[windowed(F.monetary, 90)] == pytest.approx(18.0 + 8.0 + 30.0)
    assert a_all[F.recency_days] == pytest.approx(0.5, abs=1e-6)  # bought at noon, snapshot at midnight
    assert a_all[windowed(F.avg_price, 30)] == pytest.approx((9.0 + 8.0) / 2)
    # price index: paid / median list price of the category (toys: 20, books: 8)
    assert a_all[windowed(F.price_index, 7)] == pytest.approx(9.0 / 20.0)
    assert a_all[windowed(F.top_category, 7)] == "toys" and a_all[windowed(F.category_share, 7)] == 1.0
    assert list(a_all[F.last_items]) == ["I1", "I3", "I2"]

    a_web = _row(out, "A", "web")
    assert a_web[windowed(F.frequency, 90)] == 1 and list(a_web[F.last_items]) == ["I1"]
    assert _row(out, "A", "store")[windowed(F.frequency, 7)] == 0
    b_all = _row(out, "B", ALL_CHANNELS)
    assert b_all[windowed(F.returns, 7)] == 1 and _row(out, "B", "service")[windowed(F.returns, 7)] == 1
    assert np.isnan(_row(out, "B", "service")[F.recency_days])  # returns only: no purchase there
    assert (out[C.event_timestamp] == features.end_of_day(DAY)).all()
    assert not ((out[C.customer_id] == "A") & (out[C.channel] == "social")).any()  # inactive pairs get no row


def test_item_window_prices_and_conversion():
    prices = pd.DataFrame(
        {
            C.event_timestamp: [_ts(1, 0), _ts(0, 0), _ts(-1, 0)],
            C.item_id: ["I1", "I1", "I1"],
            C.price: [9.5, 9.0, 1.0],  # tomorrow's price must not be used
            C.competitor_price: [10.0, 10.0, 1.0],
        }
    )
    out = features.item_window_features(EVENTS, ITEMS, prices, DAY).set_index(C.item_id)
    assert out.loc["I1", F.current_price] == 9.0
    assert out.loc["I1", F.discount] == pytest.approx(0.1)
    assert out.loc["I1", F.competitor_gap] == pytest.approx(-0.1)
    assert out.loc["I1", windowed(F.conversion, 7)] == 1.0  # one web view, one web purchase
    assert out.loc["I2", windowed(F.buyers, 7)] == 1 and out.loc["I2", windowed(F.conversion, 7)] == 0.0
    assert out.loc["I2", windowed(F.buyers, 90)] == 2
    assert out.loc["I2", F.current_price] == 30.0 and np.isnan(out.loc["I2", F.competitor_gap])  # no price row


def test_last_event_ignores_returns_in_live_items():
    out = features.customer_last_event(EVENTS, DAY, recent_n=2).set_index(C.customer_id)
    assert out.loc["A", F.last_item_id] == "I1" and out.loc["A", F.last_event_type] == "purchase"
    assert list(out.loc["A", F.live_items]) == ["I1", "I3"]
    assert out.loc["B", F.last_event_type] == "return" and list(out.loc["B", F.live_items]) == ["I2"]


def test_attribute_customers_through_the_identity_map():
    events = _events([(0, None, "store", "purchase", "I1", 1, 9.0), (0, None, "web", "view", "I1", 1, 9.0)])
    events[C.identifier] = ["tok_card", "tok_cookie_shared"]
    identity_map = pd.DataFrame(
        {
            C.id_kind: [C.customer_id, C.loyalty_card, C.web_cookie],
            C.identifier: ["A", "tok_card", "tok_cookie_shared"],
            C.resolved_id: ["P1", "P1", "P9"],
            C.shared: [False, False, True],
        }
    )
    out = features.attribute_customers(events, identity_map)
    assert out[C.customer_id].iloc[0] == "A" and pd.isna(out[C.customer_id].iloc[1])  # shared: nobody's


@pytest.fixture(scope="module")
def lake_home(tmp_path_factory) -> Settings:
    """Three simulated days ingested into a fresh lake (validated ingest and identity maps)."""
    from omnicart.ingest.daily import land_simulated_day
    from omnicart.ingest.identity import resolve_day
    from omnicart.ingest.pipeline import ingest_landed_day

    settings = Settings(home=tmp_path_factory.mktemp("home"), sim_customers=60, sim_items=12, sim_days=4)
    for n in range(3):
        day = settings.sim_start + dt.timedelta(days=n)
        land_simulated_day(settings, day)
        ingest_landed_day(settings, day)
        resolve_day(settings, day)
    return settings


def _digests(settings: Settings, tables) -> dict[str, str]:
    return {
        str(p.relative_to(settings.lake_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for t in tables
        for p in sorted((settings.lake_dir / t).rglob("*.parquet"))
    }


OMNI_TABLES = (schemas.CUSTOMER_CHANNEL_FEATURES, schemas.ITEM_WINDOW_FEATURES, schemas.CUSTOMER_LAST_EVENT)


def test_build_is_idempotent_and_a_range_equals_single_days(lake_home):
    s = lake_home
    first, last = s.sim_start, s.sim_start + dt.timedelta(days=2)
    features.build_omnichannel_days(s, first, last)
    as_range = _digests(s, OMNI_TABLES)
    assert len(as_range) == 9
    for n in (2, 0, 1):  # one day at a time, out of order
        day = first + dt.timedelta(days=n)
        features.build_omnichannel_days(s, day, day)
    assert _digests(s, OMNI_TABLES) == as_range


def test_partitions_keep_their_arrow_types(lake_home):
    s = lake_home
    features.build_omnichannel_days(s, s.sim_start, s.sim_start + dt.timedelta(days=2))
    expected = features.table_schemas()
    for table in OMNI_TABLES:
        for day in lake.partitions(s.lake_dir, table):
            schema = pq.read_schema(lake.partition_dir(s.lake_dir, table, day) / lake.PART_FILE)
            assert schema.remove_metadata() == expected[table], (table, day)


def test_text_embeddings_only_for_landed_catalog_rows(lake_home, monkeypatch):
    class FakeEncoder:
        def encode(self, texts, *_, **__):
            return np.ones((len(texts), text.DIM), dtype=np.float32)

    monkeypatch.setattr(text, "encoder", lambda device=None: FakeEncoder())
    monkeypatch.setattr(text, "onnx_encoder", FakeEncoder)
    s = lake_home
    stale = features.item_text_embeddings(
        pd.DataFrame({C.item_id: ["X"], C.title: ["x"], C.description: [None]}), s.sim_start
    )
    lake.write_partition(s.lake_dir, schemas.ITEM_TEXT_EMBEDDINGS, s.sim_start + dt.timedelta(days=1), stale)
    written = features.build_text_embedding_days(s, s.sim_start, s.sim_start + dt.timedelta(days=2))
    assert written == 12  # the catalog landed on day 0 only
    assert lake.partitions(s.lake_dir, schemas.ITEM_TEXT_EMBEDDINGS) == [s.sim_start]  # the stale day is gone
    vectors = lake.read_table(s.lake_dir, schemas.ITEM_TEXT_EMBEDDINGS)[F.text_embedding]
    assert all(len(v) == text.DIM for v in vectors)


def test_the_feature_store_holds_the_recommenders_own_text_vectors():
    """One recipe: the vector the ``item_text`` view serves is the one the recommender would encode for the item."""
    items = pd.DataFrame(
        {
            C.item_id: ["B", "A", "C"],
            C.title: ["Mug", None, "Pen"],
            C.description: ["A stoneware mug", "Only text", None],
            C.category: ["kitchen", "misc", None],
            C.brand: ["Acme", None, "Inkly"],
        }
    )
    frame = features.item_text_embeddings(items, dt.date(2026, 1, 1)).set_index(C.item_id)
    expected = text.encode(text.item_text(items))
    for n, item in enumerate(items[C.item_id]):
        np.testing.assert_allclose(frame.loc[item, F.text_embedding], expected[n], atol=1e-5)
    assert text.item_text(items.iloc[[0]]) == ["Mug. A stoneware mug. kitchen. Acme"]  # the recipe, every field
