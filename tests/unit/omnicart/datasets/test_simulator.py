"""The shop simulator: deterministic, in the canonical schema, with learnable signal, drift and ground truth."""

from __future__ import annotations

import time
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from omnicart import lake, schemas
from omnicart.datasets.simulator import (
    COUNTER_EMAIL,
    INTENTS,
    NEW_CATEGORY,
    NEW_SEGMENT,
    PRICE_SHOCK_FACTOR,
    ShopDay,
    ShopSimulator,
    read_ground_truth,
    write_ground_truth,
)
from omnicart.schemas import C
from omnicart.settings import Settings

FRAMES = ("events", "prices", "support", "customers", "identities", "items")
COLUMNS = {
    "events": {
        C.event_id,
        C.event_timestamp,
        C.customer_id,
        C.channel,
        C.identifier,
        C.event_type,
        C.item_id,
        C.quantity,
        C.price,
    },
    "prices": {C.event_timestamp, C.item_id, C.price, C.cost, C.competitor_price, C.units_sold},
    "support": {C.ticket_id, C.event_timestamp, C.customer_id, C.channel, C.question, C.answer, C.intent, C.item_id},
    "customers": {
        C.customer_id,
        C.name,
        C.email,
        C.phone,
        C.address,
        C.loyalty_card,
        C.social_handle,
        C.device_id,
        C.web_cookie,
        C.segment,
        C.signup_date,
        C.event_timestamp,
    },
    "identities": {C.event_timestamp, C.channel, C.identifier, C.name, C.email, C.phone},
    "items": {
        C.item_id,
        C.title,
        C.description,
        C.category,
        C.brand,
        C.price,
        C.cost,
        C.image_url,
        C.event_timestamp,
    },
}
DRIFT_DAY = 5


def _settings(home, **overrides) -> Settings:
    values = {"home": home, "sim_customers": 300, "sim_items": 80, "sim_days": 14, "seed": 11}
    return Settings(**(values | overrides))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("omnicart")


@pytest.fixture(scope="module")
def sim(home) -> ShopSimulator:
    return ShopSimulator(_settings(home))


@pytest.fixture(scope="module")
def days(sim) -> list[ShopDay]:
    return list(sim.days())


@pytest.fixture(scope="module")
def events(days) -> pd.DataFrame:
    return pd.concat([d.events for d in days], ignore_index=True)


def _assert_days_equal(a: ShopDay, b: ShopDay) -> None:
    assert a.day == b.day
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name)


# --- determinism ------------------------------------------------------------------------------------------------
def test_same_settings_give_identical_data(home, sim, days):
    again = ShopSimulator(_settings(home))
    pd.testing.assert_frame_equal(again.catalog(), sim.catalog())
    pd.testing.assert_frame_equal(again.customers(), sim.customers())
    for a, b in zip(again.days(), days, strict=True):
        _assert_days_equal(a, b)


def test_a_day_does_not_depend_on_which_days_were_simulated_before(home, sim, days):
    fresh = ShopSimulator(_settings(home))
    _assert_days_equal(fresh.day(days[9].day), days[9])  # straight to day 9
    _assert_days_equal(fresh.day(days[2].day), days[2])  # then backwards
    _assert_days_equal(fresh.day(days[9].day), days[9])  # and again


def test_another_seed_gives_other_data(home, days):
    other = ShopSimulator(_settings(home, seed=12)).day(days[0].day)
    assert not other.events.equals(days[0].events)
    assert not other.customers[C.email].equals(days[0].customers[C.email])


def test_days_cover_the_configured_range_and_nothing_else(sim, days):
    s = sim.settings
    assert [d.day for d in days] == [s.sim_start + timedelta(days=i) for i in range(s.sim_days)]
    with pytest.raises(ValueError):
        sim.day(s.sim_start - timedelta(days=1))
    with pytest.raises(ValueError):
        sim.day(s.sim_end + timedelta(days=1))


# --- schema -----------------------------------------------------------------------------------------------------
def test_frames_have_the_canonical_columns_and_utc_timestamps_within_their_day(days):
    for shop_day in days:
        start = pd.Timestamp(shop_day.day, tz="UTC")
        for name in FRAMES:
            frame = getattr(shop_day, name)
            assert set(frame.columns) == COLUMNS[name], name
            assert str(frame[C.event_timestamp].dt.tz) == "UTC", name
            if name in ("events", "prices", "support") and len(frame):
                assert frame[C.event_timestamp].between(start, start + pd.Timedelta(days=1), inclusive="left").all()
                assert frame[C.event_timestamp].is_monotonic_increasing


def test_ids_are_unique_and_well_formed(sim, days, events):
    customers, catalog = sim.customers(), sim.catalog()
    assert customers[C.customer_id].is_unique and customers[C.customer_id].str.fullmatch(r"C\d{6}").all()
    assert catalog[C.item_id].is_unique and catalog[C.item_id].str.fullmatch(r"I\d{5}").all()
    assert events[C.event_id].is_unique
    assert pd.concat([d.support for d in days])[C.ticket_id].is_unique
    assert customers[C.email].is_unique and customers[C.phone].is_unique
    assert customers[C.loyalty_card].dropna().is_unique
    assert set(events[C.customer_id]) <= set(customers[C.customer_id])
    assert set(events[C.item_id]) <= set(catalog[C.item_id])
    assert set(events[C.channel]) <= set(schemas.CHANNELS)
    assert set(events[C.event_type]) == set(schemas.EVENT_TYPES)


def test_catalog_content(sim):
    catalog = sim.catalog()
    assert len(catalog) == sim.settings.sim_items
    assert 6 <= catalog[C.category].nunique() <= 8
    assert (catalog[C.price] > catalog[C.cost]).all() and (catalog[C.cost] > 0).all()
    assert catalog[C.image_url].str.startswith("https://").all()
    assert (catalog[C.description].str.len() > 30).all()
    assert catalog[C.title].nunique() > len(catalog) // 2


def test_customers_carry_pii_and_segments(sim, days):
    customers = sim.customers()
    assert set(days[0].customers[C.customer_id]) >= set(customers[C.customer_id][: sim.settings.sim_customers])
    assert customers[C.email].str.fullmatch(r"[a-z0-9._]+@[a-z.]+").all()
    assert customers[C.phone].str.startswith("+44 7").all()
    assert 3 <= customers[C.segment].nunique() <= 4
    assert all(isinstance(d, date) and d <= sim.settings.sim_start for d in days[0].customers[C.signup_date])
    later = pd.concat([d.customers for d in days[1:]])
    assert all(sd == ts.date() for sd, ts in zip(later[C.signup_date], later[C.event_timestamp], strict=True))


def test_prices_one_row_per_item_per_day_above_cost(sim, days, events):
    for shop_day in days:
        prices = shop_day.prices
        assert prices[C.item_id].is_unique and set(prices[C.item_id]) == set(sim.catalog()[C.item_id])
        assert (prices[C.price] > prices[C.cost]).all()
        assert (prices[C.units_sold] >= 0).all() and prices[C.units_sold].dtype == np.int64
        # events carry that day's price
        todays = shop_day.events.merge(prices, on=C.item_id, suffixes=("", "_shelf"))
        assert np.allclose(todays[C.price], todays[f"{C.price}_shelf"])
    # prices move over time (promotions), so elasticity is identifiable
    all_prices = pd.concat([d.prices for d in days])
    assert (all_prices.groupby(C.item_id)[C.price].nunique() > 1).mean() > 0.9


def test_event_funnel_and_volume(sim, days, events):
    counts = events[C.event_type].value_counts()
    assert counts["view"] > 2 * counts["add_to_cart"]
    assert counts["add_to_cart"] > counts["purchase"] > counts["return"] > 0
    target = sim.settings.sim_customers * sim.settings.sim_events_per_customer_day
    per_day = np.array([len(d.events) for d in days])
    assert 0.8 * target < per_day.mean() < 1.2 * target
    assert (events[C.quantity] >= 1).all()


def _returns_follow_purchases(events: pd.DataFrame) -> bool:
    key = [C.customer_id, C.item_id]
    bought = events[events[C.event_type] == "purchase"].groupby(key)[C.quantity].sum()
    returned = events[events[C.event_type] == "return"].groupby(key)[C.quantity].sum()
    return bool((returned <= bought.reindex(returned.index, fill_value=0)).all())


def test_every_return_follows_a_purchase_of_the_same_item(events):
    assert _returns_follow_purchases(events)


def test_a_day_survives_the_lake_unchanged(tmp_path, days):
    for name in FRAMES:
        frame = getattr(days[0], name)
        lake.write_partition(tmp_path, name, days[0].day, frame)
        pd.testing.assert_frame_equal(lake.read_table(tmp_path, name), frame, obj=name)


# --- signal a recommender can learn -----------------------------------------------------------------------------
def test_segments_prefer_different_categories(sim, events):
    enriched = events.merge(sim.customers()[[C.customer_id, C.segment]]).merge(sim.catalog()[[C.item_id, C.category]])
    mix = pd.crosstab(enriched[C.segment], enriched[C.category], normalize="index")
    assert mix.loc["family", "toys"] > 2 * mix.loc["premium", "toys"]
    assert mix.loc["premium", "electronics"] > 2 * mix.loc["family", "electronics"]
    assert mix.loc["hobbyist", "garden"] > 2 * mix.loc["bargain", "garden"]


def test_repeat_items_are_rebought_on_their_cycle(sim, events):
    repeats = sim.ground_truth().repeat_items
    assert len(repeats) > 0 and repeats[C.cycle_days].between(7, 28).all()
    purchases = events[events[C.event_type] == "purchase"]
    t = (purchases[C.event_timestamp].dt.date - sim.settings.sim_start).map(lambda d: d.days)
    purchases = purchases.assign(t=t.to_numpy())
    hits = purchases.merge(repeats, on=[C.customer_id, C.item_id])
    on_cycle = (hits["t"] - hits[C.offset_days]) % hits[C.cycle_days] == 0
    assert on_cycle.mean() > 0.8
    # most repeat pairs that fell due in the window were bought
    due = repeats[repeats[C.offset_days] < sim.settings.sim_days]
    bought = due.merge(hits[on_cycle][[C.customer_id, C.item_id]].drop_duplicates())
    assert len(bought) > 0.7 * len(due)


def test_co_occurrence_predicts_the_next_item_better_than_popularity(sim, events):
    """ "Viewed X, also viewed Y": item pairs learnt from early days predict later same-day companions."""
    t = (events[C.event_timestamp].dt.date - sim.settings.sim_start).map(lambda d: d.days).to_numpy()
    items = sorted(sim.catalog()[C.item_id])
    position = {item: k for k, item in enumerate(items)}
    train, test = events[t < 10], events[t >= 10]
    day_key = [train[C.customer_id], train[C.event_timestamp].dt.date]
    baskets = pd.crosstab(day_key, train[C.item_id]).reindex(columns=items, fill_value=0).clip(upper=1).to_numpy()
    co = (baskets.T @ baskets).astype(float)
    np.fill_diagonal(co, 0)
    popularity = baskets.sum(axis=0).astype(float)
    hits: dict[str, list[bool]] = {"popularity": [], "co_occurrence": []}
    for _, day in test.groupby([C.customer_id, test[C.event_timestamp].dt.date]):
        seen = [position[i] for i in dict.fromkeys(day.sort_values(C.event_timestamp)[C.item_id])]
        if len(seen) < 2:
            continue
        for name, score in (("popularity", popularity.copy()), ("co_occurrence", co[seen[0]] + 1e-3 * popularity)):
            score[seen[0]] = -np.inf
            hits[name].append(bool(set(np.argsort(-score)[:10]) & set(seen[1:])))
    assert len(hits["popularity"]) > 30
    assert np.mean(hits["co_occurrence"]) > np.mean(hits["popularity"]) + 0.2


# --- identities -------------------------------------------------------------------------------------------------
def test_identity_records_and_events_resolve_through_the_ground_truth(sim, days, events):
    truth = sim.ground_truth().identities
    assert not truth.duplicated().any()
    records = pd.concat([d.identities for d in days], ignore_index=True)
    keys = set(zip(truth[C.channel], truth[C.identifier], strict=True))
    assert set(zip(records[C.channel], records[C.identifier], strict=True)) == keys
    owners = set(zip(truth[C.channel], truth[C.identifier], truth[C.customer_id], strict=True))
    seen = set(zip(events[C.channel], events[C.identifier], events[C.customer_id], strict=True))
    assert seen <= owners
    # each channel knows only its own PII
    store = records[records[C.channel] == "store"]
    assert store[C.phone].notna().all() and store[C.name].isna().all()
    social = records[records[C.channel] == "social"]
    assert social[C.name].notna().all() and social[C.email].isna().all()
    # the app's emails are the CRM emails in another case or with stray whitespace
    app = records[records[C.channel] == "app"]
    emails = set(sim.customers()[C.email])
    assert app[C.email].str.strip().str.lower().isin(emails).all()
    assert (~app[C.email].isin(emails)).mean() > 0.5


def test_hard_identity_cases_are_present_and_recorded(sim, days):
    truth = sim.ground_truth()
    shared = truth.hard_cases["shared_device_ids"]
    assert shared
    owners = truth.identities[truth.identities[C.identifier].isin(shared)].groupby(C.identifier)[C.customer_id]
    assert (owners.nunique() == 2).all()
    records = pd.concat([d.identities for d in days])
    counter = records[records[C.email] == COUNTER_EMAIL]
    assert (counter[C.channel] == "store").all() and counter[C.identifier].nunique() >= 3
    counter_owners = truth.identities[truth.identities[C.identifier].isin(counter[C.identifier])]
    assert counter_owners[C.customer_id].nunique() == counter[C.identifier].nunique()
    assert COUNTER_EMAIL in truth.hard_cases["counter_emails"]


# --- support ----------------------------------------------------------------------------------------------------
def test_support_tickets(sim, days):
    tickets = pd.concat([d.support for d in days], ignore_index=True)
    assert len(tickets) > 50
    assert set(tickets[C.intent]) == set(INTENTS)
    assert (tickets[C.channel] == "service").all()
    products = tickets[tickets[C.intent] == "product_question"]
    assert products[C.item_id].notna().all()
    titles = sim.catalog().set_index(C.item_id)[C.title]
    assert all(titles[i] in q for i, q in zip(products[C.item_id], products[C.question], strict=True))
    assert tickets[tickets[C.intent] == "store_hours"][C.item_id].isna().all()
    assert tickets.groupby(C.intent)[C.question].nunique().min() >= 3  # paraphrases
    customers = sim.customers().set_index(C.customer_id)
    with_pii = [
        customers.at[c, C.email] in q or customers.at[c, C.phone] in q
        for c, q in zip(tickets[C.customer_id], tickets[C.question], strict=True)
    ]
    assert 0.1 < np.mean(with_pii) < 0.5


# --- pricing ground truth ---------------------------------------------------------------------------------------
def test_elasticities_are_negative_and_drive_demand(sim, days):
    demand = sim.ground_truth().demand
    assert demand[C.elasticity].between(-3.0, -0.5).all()
    assert set(demand[C.item_id]) == set(sim.catalog()[C.item_id])
    prices = pd.concat([d.prices for d in days]).merge(demand, on=C.item_id)
    # pooled within-item regression of log units on log relative price recovers a negative slope
    x = np.log(prices[C.price] / prices[C.ref_price])
    y = np.log(prices[C.units_sold] + 0.5)
    x = x - x.groupby(prices[C.item_id]).transform("mean")
    y = y - y.groupby(prices[C.item_id]).transform("mean")
    slope = float((x * y).sum() / (x * x).sum())
    assert slope < -0.5
    truth = sim.ground_truth()
    item = demand[C.item_id].iloc[0]
    day = sim.settings.sim_start
    assert truth.demand_mean(item, 10.0, 10.0, day) > truth.demand_mean(item, 12.0, 10.0, day)


# --- drift ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def baseline(home) -> ShopSimulator:
    return ShopSimulator(_settings(home, sim_days=8))


def _drifted(home, kind: str) -> ShopSimulator:
    return ShopSimulator(_settings(home, sim_days=8, drift_kind=kind, drift_day=DRIFT_DAY))


@pytest.mark.parametrize("kind", schemas.DRIFT_KINDS)
def test_drift_leaves_the_days_before_it_untouched(home, baseline, kind):
    drifted = _drifted(home, kind)
    start = baseline.settings.sim_start
    for t in (0, DRIFT_DAY - 1):
        _assert_days_equal(drifted.day(start + timedelta(days=t)), baseline.day(start + timedelta(days=t)))
    after = start + timedelta(days=DRIFT_DAY)
    assert not drifted.day(after).events.equals(baseline.day(after).events)
    truth = drifted.ground_truth()
    assert truth.drift_kind == kind and truth.drift_day == after
    assert baseline.ground_truth().drift_day is None and baseline.ground_truth().drift_kind == "none"


def test_drift_new_segment(home, baseline):
    drifted = _drifted(home, "new_segment")
    start = drifted.settings.sim_start
    customers = drifted.customers()
    students = customers[customers[C.segment] == NEW_SEGMENT]
    assert NEW_SEGMENT not in set(baseline.customers()[C.segment])
    arrival = drifted.day(start + timedelta(days=DRIFT_DAY))
    assert set(students[C.customer_id]) <= set(arrival.customers[C.customer_id])
    for t in (DRIFT_DAY, DRIFT_DAY + 1):
        events = drifted.day(start + timedelta(days=t)).events.merge(customers[[C.customer_id, C.segment]])
        active = events.drop_duplicates(C.customer_id)
        assert (active[C.segment] == NEW_SEGMENT).mean() >= 0.25
    is_student = events[C.segment] == NEW_SEGMENT
    assert (events[is_student][C.channel] == "store").mean() == 0
    assert (events[is_student][C.channel] == "social").mean() > 2 * (events[~is_student][C.channel] == "social").mean()
    cats = events.merge(drifted.catalog()[[C.item_id, C.category]])
    student_share = (cats[cats[C.segment] == NEW_SEGMENT][C.category].isin(["electronics", "books"])).mean()
    others_share = (cats[cats[C.segment] != NEW_SEGMENT][C.category].isin(["electronics", "books"])).mean()
    assert student_share > others_share + 0.2


def test_drift_price_shock(home, baseline):
    drifted = _drifted(home, "price_shock")
    start = drifted.settings.sim_start
    for t in (DRIFT_DAY, DRIFT_DAY + 2):
        day = start + timedelta(days=t)
        ratio = drifted.day(day).prices[C.price] / baseline.day(day).prices[C.price]
        assert (ratio.round(2) == PRICE_SHOCK_FACTOR).mean() > 0.6
        assert ratio.between(0.99, PRICE_SHOCK_FACTOR + 0.01).all()
        shelf = baseline.day(day).prices.set_index(C.item_id)[C.price]
        paid = drifted.day(day).events
        assert ((paid[C.price] / paid[C.item_id].map(shelf)).round(2) == PRICE_SHOCK_FACTOR).mean() > 0.5


def test_drift_new_category(home, baseline):
    drifted = _drifted(home, "new_category")
    start = drifted.settings.sim_start
    catalog = drifted.catalog()
    new_items = catalog[catalog[C.category] == NEW_CATEGORY]
    assert 10 <= len(new_items) <= 20 and NEW_CATEGORY not in set(baseline.catalog()[C.category])
    assert (new_items[C.event_timestamp] == pd.Timestamp(start + timedelta(days=DRIFT_DAY), tz="UTC")).all()
    before = drifted.day(start + timedelta(days=DRIFT_DAY - 1))
    assert not before.events[C.item_id].isin(new_items[C.item_id]).any()
    assert not before.prices[C.item_id].isin(new_items[C.item_id]).any()
    arrival = drifted.day(start + timedelta(days=DRIFT_DAY))
    assert set(arrival.items[C.item_id]) == set(new_items[C.item_id])
    assert set(new_items[C.item_id]) <= set(arrival.prices[C.item_id])
    assert arrival.events[C.item_id].isin(new_items[C.item_id]).mean() > 0.2
    assert set(new_items[C.item_id]) <= set(drifted.ground_truth().demand[C.item_id])


def test_drift_channel_outage(home, baseline):
    drifted = _drifted(home, "channel_outage")
    start = drifted.settings.sim_start
    assert (drifted.day(start + timedelta(days=DRIFT_DAY - 1)).events[C.channel] == "app").any()
    for t in range(DRIFT_DAY, 8):
        day = drifted.day(start + timedelta(days=t))
        assert not (day.events[C.channel] == "app").any() and len(day.events) > 0
        assert _returns_follow_purchases(day.events)  # no orphan returns of purchases the outage prevented


# --- ground truth files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["none", "new_segment"])
def test_ground_truth_round_trips_through_files(home, tmp_path, kind):
    drift = {} if kind == "none" else {"drift_kind": kind, "drift_day": DRIFT_DAY}
    truth = ShopSimulator(_settings(home, sim_days=8, **drift)).ground_truth()
    write_ground_truth(truth, tmp_path / "truth")
    back = read_ground_truth(tmp_path / "truth")
    pd.testing.assert_frame_equal(back.identities, truth.identities)
    pd.testing.assert_frame_equal(back.demand, truth.demand)
    pd.testing.assert_frame_equal(back.repeat_items, truth.repeat_items)
    assert (back.drift_kind, back.drift_day) == (truth.drift_kind, truth.drift_day)
    assert back.weekday_seasonality == truth.weekday_seasonality
    assert back.hard_cases == truth.hard_cases


# --- speed ------------------------------------------------------------------------------------------------------
def test_default_size_simulates_quickly(tmp_path):
    began = time.perf_counter()
    sim = ShopSimulator(Settings(home=tmp_path, sim_customers=400, sim_days=21))
    n_events = sum(len(d.events) for d in sim.days())
    assert n_events > 21 * 400 * 0.6 * 0.8
    assert time.perf_counter() - began < 5.0
