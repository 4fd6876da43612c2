"""The customer and item feature windows the recommend family reads are point-in-time."""

import datetime as dt

import pandas as pd

from omnicart.features import customer_stats, end_of_day, item_stats
from omnicart.schemas import C, F


def test_feature_windows_are_point_in_time():
    day = dt.date(2026, 1, 10)
    t = pd.Timestamp(day, tz="UTC")
    events = pd.DataFrame(
        {
            C.customer_id: ["u1", "u1", "u1", "u1"],
            C.item_id: ["a", "b", "c", "z"],
            C.event_type: ["purchase", "view", "purchase", "purchase"],
            C.event_timestamp: [t, t - pd.Timedelta(days=2), t - pd.Timedelta(days=40), t + pd.Timedelta(days=1)],
            C.price: [2.0, 3.0, 5.0, 100.0],
            C.quantity: [3, 1, 1, 1],
        }
    )
    customers = pd.DataFrame({C.customer_id: ["u1", "u2"], C.segment: ["family", "bargain"]})
    stats = customer_stats(events, customers, day, recent_n=5).set_index(C.customer_id)
    assert stats.loc["u1", F.n_purchases_30d] == 1  # 40 days ago is outside; tomorrow is the future
    assert stats.loc["u1", F.spend_30d] == 6.0
    assert stats.loc["u1", F.recent_items] == ["a", "b"]
    assert stats.loc["u2", F.n_purchases_30d] == 0 and stats.loc["u2", F.recent_items] == []
    assert (stats[C.event_timestamp] == end_of_day(day)).all()
    items = pd.DataFrame({C.item_id: ["a", "z"], C.category: ["x", "y"], C.price: [2.0, 100.0]})
    pop = item_stats(events, items, day).set_index(C.item_id)
    assert pop.loc["a", F.popularity_7d] == 1 and pop.loc["z", F.popularity_7d] == 0
