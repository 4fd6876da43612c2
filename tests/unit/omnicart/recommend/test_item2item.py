"""EASE against its closed form, and its lambda tuned on the last month only (the metrics: test_metrics.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from omnicart.recommend import item2item
from omnicart.schemas import C


def test_ease_matches_the_closed_form_and_has_a_zero_diagonal():
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32)
    lam = 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(3))
    expected = np.eye(3) - p / np.diag(p)
    b = item2item.ease(x, lam)
    assert np.allclose(np.diag(b), 0.0)
    assert np.allclose(b, expected, atol=1e-5)


def test_ease_lambda_is_tuned_on_the_last_month_only():
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        base = pd.Timestamp("2024-01-01", tz="UTC")
        for d in rng.choice(80, size=6, replace=False):
            rows.append((u, f"i{rng.integers(0, 12)}", base + pd.Timedelta(days=int(d))))
    events = pd.DataFrame(rows, columns=[C.customer_id, C.item_id, C.event_timestamp])
    now = pd.Timestamp("2024-03-21", tz="UTC")
    best, tried = item2item.tune_ease_lambda(events, now, (1.0, 10.0, 100.0))
    assert set(tried) == {1.0, 10.0, 100.0}
    assert best in tried and tried[best] == max(tried.values())
    # events after `now` cannot change the choice
    later = events.assign(**{C.event_timestamp: events[C.event_timestamp] + pd.Timedelta(days=400)})
    assert item2item.tune_ease_lambda(pd.concat([events, later]), now, (1.0, 10.0, 100.0)) == (best, tried)
