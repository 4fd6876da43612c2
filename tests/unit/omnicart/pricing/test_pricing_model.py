"""The demand model: never more demand at a higher own price, elasticities that track the truth, no look-ahead,
plain-file persistence, and the censored-demand correction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pricing_data import fitted, simulated

from omnicart.pricing import features as fx
from omnicart.pricing.model import DemandModel
from omnicart.schemas import C


def test_higher_own_price_never_raises_predicted_demand() -> None:
    model = fitted()
    frame, _, _ = simulated()
    feats = model.features(frame)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(frame), 400, replace=False)  # many products, days and contexts
    sample = feats.take(rows)
    base = np.exp(sample.log_price)
    grid = np.exp(np.linspace(np.log(0.4), np.log(2.5), 25))  # far outside the prices seen, on purpose
    units = np.column_stack([model.expected_units(sample, base * g) for g in grid])
    steps = np.diff(units, axis=1)
    assert (steps <= 1e-9 * np.maximum(units[:, :-1], 1.0)).all(), "demand rose with price somewhere"
    assert (units[:, 0] > units[:, -1]).mean() > 0.95  # and it does fall, for nearly every context


def test_elasticities_are_negative_banded_and_track_the_truth() -> None:
    model = fitted()
    _, truth, _ = simulated()
    table = model.elasticities_.set_index(C.product_id)
    true = truth.demand.set_index(C.item_id)[C.elasticity].reindex(table.index)
    assert (table[C.elasticity] < 0).mean() >= 0.95
    assert ((table["low"] <= table[C.elasticity]) & (table[C.elasticity] <= table["high"])).all()
    assert np.corrcoef(table[C.elasticity], true)[0, 1] > 0.7
    assert (table[C.elasticity] - true).abs().median() < 0.5


def test_row_elasticities_are_the_same_in_any_chunk_size() -> None:
    """The arc elasticities go a chunk of rows at a time (bounded memory); each row's slope does not depend on it."""
    model = fitted()
    frame, _, _ = simulated()
    feats = model.features(frame).take(np.arange(0, len(frame), 7))
    whole = model.row_elasticities(feats, chunk=len(feats))
    assert len(whole) == len(feats) > 100 and np.isfinite(whole).all() and (whole < 0).mean() > 0.9
    np.testing.assert_allclose(model.row_elasticities(feats, chunk=37), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.row_elasticities(feats.take(np.arange(5))), whole[:5], rtol=1e-5, atol=1e-6)
    assert model.row_elasticities(feats.take(np.arange(0)), chunk=37).shape == (0,)
    picked = np.array([90, 3, 41, 3, 0, 77])  # rows taken a chunk at a time, in the order given
    np.testing.assert_allclose(model.row_elasticities(feats, chunk=4, rows=picked), whole[picked], rtol=1e-5, atol=1e-6)
    assert model.row_elasticities(feats, rows=np.array([], dtype=np.int64)).shape == (0,)


def test_features_look_only_at_earlier_periods() -> None:
    frame, _, _ = simulated()
    model = fitted()
    before = model.features(frame)
    last = frame[C.period].max()
    changed = frame.copy()
    changed.loc[changed[C.period] == last, C.units] *= 100  # the future (and the row itself) changes
    after = model.features(changed)
    keep = np.flatnonzero((frame[C.period] < last).to_numpy())
    np.testing.assert_array_equal(before.X[keep], after.X[keep])
    own = np.flatnonzero((frame[C.period] == last).to_numpy())
    np.testing.assert_array_equal(before.X[own], after.X[own])  # a row's own units never feed its features


def test_price_features_are_recomputed_at_candidate_prices() -> None:
    frame, _, _ = simulated()
    spec = fitted().spec_
    feats = fx.build(frame.head(200), spec)
    doubled = feats.at_prices(np.exp(feats.log_price) * 2)
    for name in fx.PRICE_FEATURES:
        if name in spec.names:
            j = spec.names.index(name)
            ok = np.isfinite(feats.X[:, j])
            np.testing.assert_allclose(doubled[ok, j] - feats.X[ok, j], np.log(2), atol=1e-5)
    context = [j for j, n in enumerate(spec.names) if n not in fx.PRICE_FEATURES]
    np.testing.assert_array_equal(doubled[:, context], feats.X[:, context])


def test_save_and_load_plain_files(tmp_path) -> None:
    model = fitted()
    frame, _, _ = simulated()
    model.save(tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["booster.json", "elasticities.json", "model.json", "state.parquet"]
    json.loads((tmp_path / "m" / "booster.json").read_text())  # XGBoost's JSON, not a pickle
    loaded = DemandModel.load(tmp_path / "m")
    tail = frame.tail(300)
    np.testing.assert_allclose(loaded.predict(tail), model.predict(tail), rtol=1e-6)
    assert loaded.get_params() == model.get_params()
    assert loaded.elasticity_of("I00001") == pytest.approx(model.elasticity_of("I00001"))


def test_sold_out_history_raises_the_forecast() -> None:
    """Sales that hit the stock are censored demand: the pricing context must expect more than it saw."""
    model = fitted()
    state = model.state_.copy()
    product = state[C.product_id].iloc[0]
    row = pd.DataFrame(
        {
            C.series_id: [product],
            C.product_id: [product],
            C.period: [model.next_period()],
            C.price: [float(state[C.price].iloc[-1])],
        }
    )
    plain = model.context(row, state)
    sold_out = state.copy()
    mine = sold_out[C.series_id] == product
    sold_out[C.inventory] = np.nan
    sold_out.loc[mine, C.inventory] = sold_out.loc[mine, C.units]  # every recent period sold out
    censored = model.context(row, sold_out)
    price = np.asarray([float(state[C.price].iloc[-1])])
    assert censored.expected_units([price])[0][0] > plain.expected_units([price])[0][0]


def test_drivers_explain_the_prediction() -> None:
    model = fitted()
    frame, _, _ = simulated()
    feats = model.features(frame.tail(5))
    drivers = model.drivers(feats, np.exp(feats.log_price), top=3)
    assert len(drivers) == 5
    for found in drivers:
        assert len(found) == 3
        assert all(isinstance(d["feature"], str) and np.isfinite(d["effect"]) for d in found)
        effects = [abs(d["effect"]) for d in found]
        assert effects == sorted(effects, reverse=True)


def test_fit_rejects_a_table_without_the_canonical_columns() -> None:
    frame, _, _ = simulated()
    with pytest.raises(ValueError, match="units"):
        DemandModel(n_estimators=5).fit(frame.drop(columns=[C.units]))
