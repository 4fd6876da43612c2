"""Feast over the omnichannel feature tables: point-in-time retrieval never sees a planted FUTURE value, on-demand
price fit, materialisation, and POST /events' push into the online store (real Feast, SQLite online store)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from omnicart import features, lake, schemas, text
from omnicart.schemas import ALL_CHANNELS, C, F, windowed
from omnicart.settings import Settings

pytestmark = pytest.mark.integration

PLANTED = 1e9
M30, AVG30 = windowed(F.monetary, 30), windowed(F.avg_price, 30)
S7 = windowed(F.sales, 7)


def _plant(s: Settings, table: str, src_day: dt.date, day: dt.date, keep, values: dict) -> None:
    """Copy the rows ``keep`` selects from ``src_day``'s partition into a partition of the future ``day``."""
    frame = lake.read_table(s.lake_dir, table, src_day, src_day)
    frame = frame[keep(frame)].assign(**values, **{C.event_timestamp: features.end_of_day(day)})
    schema = features.table_schemas().get(table)
    lake.write_partition(s.lake_dir, table, day, frame.reset_index(drop=True), schema=schema)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """Three ingested days, their feature partitions, and one customer's and one item's values planted 5 days later."""
    from feature_repo import definitions
    from omnicart import featurestore
    from omnicart.ingest.daily import land_simulated_day
    from omnicart.ingest.identity import resolve_day
    from omnicart.ingest.pipeline import ingest_landed_day

    s = Settings(home=tmp_path_factory.mktemp("feast-home"), sim_customers=120, sim_items=15, sim_days=4)
    days = [s.sim_start + dt.timedelta(days=n) for n in range(3)]
    for day in days:
        land_simulated_day(s, day)
        ingest_landed_day(s, day)
        resolve_day(s, day)
    features.build_feature_days(s, days[0], days[-1])
    features.build_omnichannel_days(s, days[0], days[-1])
    features.build_text_embedding_days(s, days[0], days[-1])

    last = lake.read_table(s.lake_dir, schemas.CUSTOMER_CHANNEL_FEATURES, days[-1], days[-1])
    buyers = last[(last[C.channel] == ALL_CHANNELS) & (last[windowed(F.frequency, 30)] > 0)]
    customer, item = buyers[C.customer_id].iloc[0], "I00001"
    future = days[-1] + dt.timedelta(days=5)
    is_customer = lambda f: f[C.customer_id] == customer  # noqa: E731
    _plant(s, schemas.CUSTOMER_CHANNEL_FEATURES, days[-1], future, is_customer, {M30: PLANTED, AVG30: PLANTED})
    _plant(s, schemas.CUSTOMER_FEATURES, days[-1], future, is_customer, {F.spend_30d: PLANTED})
    _plant(s, schemas.CUSTOMER_LAST_EVENT, days[-1], future, is_customer, {F.live_items: [["FUTURE"]]})
    _plant(
        s,
        schemas.ITEM_WINDOW_FEATURES,
        days[-1],
        future,
        lambda f: f[C.item_id] == item,
        {F.current_price: PLANTED, S7: PLANTED},
    )
    featurestore.apply(s, definitions())
    return s, days, future, customer, item


def _lake_value(s, table, day, key: dict, column):
    frame = lake.read_table(s.lake_dir, table, day, day)
    for k, v in key.items():
        frame = frame[frame[k] == v]
    assert len(frame) == 1
    return frame[column].iloc[0]


def _historical(s, customer, item, times, refs) -> pd.DataFrame:
    from omnicart.featurestore import feature_store

    entity_df = pd.DataFrame(
        {
            C.customer_id: customer,
            C.channel: ALL_CHANNELS,
            C.item_id: item,
            F.candidate_price: 20.0,
            C.event_timestamp: times,
        }
    )
    got = feature_store(s).get_historical_features(entity_df=entity_df, features=refs).to_df()
    return got.set_index(C.event_timestamp).sort_index()


def test_historical_features_are_point_in_time(shop):
    s, days, future, customer, item = shop
    planted_at = features.end_of_day(future)
    times = [features.end_of_day(days[1]), features.end_of_day(days[2]) + pd.Timedelta(hours=12), planted_at]
    refs = [
        f"{F.customer_channel_view}:{M30}",
        f"{F.customer_channel_view}:{AVG30}",
        f"{F.customer_view}:{F.spend_30d}",
        f"{F.item_window_view}:{F.current_price}",
        f"{F.customer_realtime_view}:{F.live_items}",
        f"{F.price_fit_view}:{F.price_fit}",
    ]
    got = _historical(s, customer, item, times, refs)
    assert list(got.index) == times
    key = {C.customer_id: customer, C.channel: ALL_CHANNELS}
    for t, day in zip(times[:2], days[1:], strict=True):  # each time sees the last day that ended before it
        row = got.loc[t]
        assert row[M30] == _lake_value(s, schemas.CUSTOMER_CHANNEL_FEATURES, day, key, M30) != PLANTED
        assert row[F.spend_30d] == _lake_value(
            s, schemas.CUSTOMER_FEATURES, day, {C.customer_id: customer}, F.spend_30d
        )
        assert row[F.current_price] == _lake_value(
            s, schemas.ITEM_WINDOW_FEATURES, day, {C.item_id: item}, F.current_price
        )
        assert (
            row[F.spend_30d] != PLANTED and row[F.current_price] != PLANTED and "FUTURE" not in list(row[F.live_items])
        )
        assert row[F.price_fit] == pytest.approx(min(20.0 / row[AVG30], row[AVG30] / 20.0))  # on demand, same row
    planted = got.loc[planted_at]  # the planted row is visible from its own time on
    assert planted[M30] == planted[F.spend_30d] == planted[F.current_price] == PLANTED
    assert list(planted[F.live_items]) == ["FUTURE"]
    assert planted[F.price_fit] == pytest.approx(20.0 / PLANTED)


def test_one_second_before_the_planted_row_sees_no_future(shop):
    s, days, future, customer, item = shop
    just_before = features.end_of_day(future) - pd.Timedelta(seconds=1)
    # 90-day TTL: still the last real day's value
    stats = _historical(s, customer, item, [just_before], [f"{F.customer_view}:{F.spend_30d}"])
    expected = _lake_value(s, schemas.CUSTOMER_FEATURES, days[2], {C.customer_id: customer}, F.spend_30d)
    assert stats[F.spend_30d].tolist() == [expected]
    # 2-day TTL: the last real day expired; Feast's file store then drops the entity row rather than return nulls
    for ref in (f"{F.customer_channel_view}:{M30}", f"{F.item_window_view}:{F.current_price}"):
        got = _historical(s, customer, item, [just_before], [ref])
        assert not (got[ref.split(":")[1]] == PLANTED).any(), ref
        assert got[ref.split(":")[1]].isna().all(), ref


def test_feature_services_retrieve_point_in_time(shop):
    from omnicart.featurestore import feature_store

    s, days, future, customer, item = shop
    store = feature_store(s)
    entity_df = pd.DataFrame(
        {
            C.customer_id: [customer, customer],
            C.item_id: item,
            C.channel: ALL_CHANNELS,
            F.candidate_price: 9.99,
            C.event_timestamp: [features.end_of_day(days[2]), features.end_of_day(future)],
        }
    )
    v1 = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("recommend_v1")).to_df()
    v1 = v1.sort_values(C.event_timestamp).reset_index(drop=True)
    assert v1[F.spend_30d].tolist()[1] == PLANTED and v1[F.spend_30d].tolist()[0] != PLANTED
    v2 = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("recommend_v2")).to_df()
    v2 = v2.sort_values(C.event_timestamp).reset_index(drop=True)
    assert len(v2.loc[0, F.text_embedding]) == text.DIM
    assert v2.loc[0, M30] != PLANTED and v2.loc[1, M30] == PLANTED


def test_pricing_demand_features_are_point_in_time(shop):
    """The pricing family's demand lags for a period are the item's windows up to the day before, never later ones."""
    from training.pricing import DEMAND_FEATURES, with_demand_features

    s, days, future, _, item = shop
    periods = [days[1], days[2], future, future + dt.timedelta(days=1)]
    frame = pd.DataFrame({C.product_id: item, C.series_id: item, C.period: pd.to_datetime(periods), C.price: 9.5})
    got = with_demand_features(s, frame)

    assert got[C.price].tolist() == [9.5] * 4 and set(DEMAND_FEATURES) <= set(got.columns)
    key = {C.item_id: item}
    for row, seen_day in ((0, days[0]), (1, days[1])):
        for name in DEMAND_FEATURES:
            assert got.loc[row, name] == pytest.approx(
                _lake_value(s, schemas.ITEM_WINDOW_FEATURES, seen_day, key, name)
            )
    assert pd.isna(got.loc[2, S7])  # the last real row is older than the view's TTL, the planted one is tomorrow's
    assert got.loc[3, S7] == PLANTED  # the day after, the planted row is the latest the store knew


def test_the_recommend_dataset_reads_the_materialised_text_vectors_point_in_time(shop):
    """Training's item text source returns the vectors the ``item_text`` view holds (the recommender's own recipe),
    NaN for an item the view does not know and for every item before its vector's day ended."""
    from training.recommend import build_dataset, feast_item_text

    s, days, *_ = shop
    dataset = build_dataset(s, days[2])
    assert dataset.item_text is not None
    held = lake.read_table(s.lake_dir, schemas.ITEM_TEXT_EMBEDDINGS).drop_duplicates(C.item_id, keep="last")
    ids = np.array([*sorted(held[C.item_id]), "NOT_IN_THE_VIEW"], dtype=object)
    got = dataset.item_text(ids)
    assert got.shape == (len(ids), text.DIM) and got.dtype == np.float32
    expected = np.stack(held.set_index(C.item_id).loc[ids[:-1], F.text_embedding].tolist())
    np.testing.assert_array_equal(got[:-1], expected)
    assert np.isnan(got[-1]).all()
    catalog = dataset.items.set_index(C.item_id).loc[ids[:-1]].reset_index()  # the model's recipe, encoded here
    np.testing.assert_allclose(got[:-1], text.encode(text.item_text(catalog)), atol=1e-5)

    first = held[C.event_timestamp].min()  # before any vector's day ended, the store knew none
    assert np.isnan(feast_item_text(s, pd.Timestamp(first) - pd.Timedelta(seconds=1))(ids)).all()


def test_materialize_then_push_an_event(shop):
    from feature_repo.apply import apply_and_materialize
    from omnicart.featurestore import feature_store, online_features
    from omnicart.realtime import push_event

    s, days, future, customer, _ = shop
    loaded = apply_and_materialize(s, days[0], days[-1])
    assert loaded[F.customer_channel_view] == [days[0].isoformat(), future.isoformat()]  # up to the newest day
    store = feature_store(s)
    crm = lake.read_table(s.landing_dir, schemas.CUSTOMERS)
    other = crm[(crm[C.customer_id] != customer) & crm[C.email].notna()].iloc[0]
    refs = [f"{F.customer_realtime_view}:{F.live_items}", f"{F.customer_realtime_view}:{F.last_channel}"]
    result = push_event(
        s,
        {"channel": "service", "event_type": "view", "item_id": "I00003", "identifier": other[C.email], "price": 5.0},
        store,
    )
    assert result.pushed and result.customer_id == other[C.customer_id]
    row = online_features(store, refs, C.customer_id, [other[C.customer_id]])[0]
    assert row[F.live_items][0] == "I00003" and row[F.last_channel] == "service"
    online = (s.feast_dir / "online.db").read_bytes()
    assert other[C.email].encode() not in online and other[C.email].lower().encode() not in online
    fit = store.get_online_features(
        features=[f"{F.price_fit_view}:{F.price_fit}"],
        entity_rows=[{C.customer_id: customer, C.channel: ALL_CHANNELS, F.candidate_price: 5.0}],
    ).to_dict()
    assert fit[F.price_fit][0] == pytest.approx(5.0 / PLANTED)  # online holds the newest partition, computed live
