"""Serving prices from the kept state with lookups made once: the same contexts as computing them per request."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pricing_data import fitted, simulated

from omnicart.pricing.model import DemandModel
from omnicart.schemas import C


def _next_rows(model: DemandModel, series: list[str]) -> pd.DataFrame:
    last = model.state_.drop_duplicates(C.series_id, keep="last")
    rows = last[last[C.series_id].isin(series)].drop(columns=[C.units])
    return rows.assign(**{C.period: rows[C.period] + pd.Timedelta(days=1)})


def test_kept_state_lookups_give_the_per_request_context():
    model = fitted()
    series = model.state_[C.series_id].drop_duplicates().tolist()
    for chosen in (series[:1], series[3:9], series[::-1]):
        rows = _next_rows(model, chosen)
        cached, plain = model.context(rows), model.context(rows, history=model.state_.copy())
        assert np.array_equal(cached.offset, plain.offset)
        assert np.abs(cached.offset).max() > 0  # the bias is real on this data, not a row of zeros
        assert np.array_equal(cached.features.X, plain.features.X, equal_nan=True)


def test_a_refit_drops_the_lookups_of_the_old_state():
    frame, _, _ = simulated()
    model = DemandModel(n_estimators=20, max_depth=3, max_train_rows=None, nthread=1, seed=0).fit(frame)
    rows = _next_rows(model, model.state_[C.series_id].drop_duplicates().tolist()[:4])
    before = model.context(rows).offset
    shifted = frame.assign(**{C.units: frame[C.units] * 3.0})  # demand tripled: the recent bias moves
    model.fit(shifted)
    after, plain = model.context(rows).offset, model.context(rows, history=model.state_.copy()).offset
    assert np.array_equal(after, plain) and not np.array_equal(after, before)
