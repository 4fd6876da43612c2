"""Pricing data: the dominicks_beer loader (original files, `limit`ed), the out-of-time split, evaluation beside
the baselines, and (slow) the Ray Train job."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pricing_data import fitted, simulated

from benchmarks.runner import datasets_dir
from omnicart.datasets import dominicks
from omnicart.pricing.baselines import LogLog
from omnicart.pricing.pyfunc import PricingPredictor
from omnicart.schemas import C
from training.pricing import evaluate, from_frame

DOMINICKS = datasets_dir() / dominicks.NAME
needs_dominicks = pytest.mark.skipif(
    not dominicks.available(DOMINICKS), reason=f"dominicks_beer not found under {DOMINICKS} (../shared/datasets)"
)


@needs_dominicks
def test_dominicks_loader_reads_the_original_files_into_canonical_columns() -> None:
    frame = dominicks.load(DOMINICKS, limit=2000)
    assert len(frame) == 2000
    assert {C.series_id, C.product_id, C.store_id, C.period, C.price, C.units, C.category, C.pack_oz} <= set(frame)
    first = frame.iloc[0]  # STORE 8, UPC 1820000008, WEEK 91, PRICE 1.59, MOVE 5
    assert (first[C.series_id], first[C.product_id], first[C.store_id]) == ("8:1820000008", "1820000008", "8")
    assert first[C.period] == pd.Timestamp("1991-06-06")  # week 91 = 1989-09-14 + 90 weeks
    assert (first[C.price], first[C.units]) == (1.59, 5)
    assert first[C.category] == "BUDWEISER" and first[C.pack_oz] == 32.0
    assert frame["store_income"].notna().all()
    assert (frame[C.period].dt.dayofweek == 3).all()  # Dominick's weeks start on Thursdays


@needs_dominicks
def test_dominicks_protocol_filter_and_split() -> None:
    frame = dominicks.load(DOMINICKS, limit=20000)
    kept = dominicks.protocol_filter(frame)
    assert (kept[C.price] > 0.2).all() and (kept[C.units] > 0).all()
    ds = from_frame(kept, name=dominicks.NAME)
    weeks = np.sort(kept[C.period].unique())
    assert ds.split == pd.Timestamp(weeks[int(0.8 * len(weeks))])
    assert (ds.train[C.period] < ds.split).all() and (ds.test[C.period] >= ds.split).all()
    assert set(ds.test[C.series_id]) <= set(ds.train[C.series_id])


def test_split_keeps_test_to_series_seen_in_train() -> None:
    periods = pd.date_range("2026-01-05", periods=10, freq="7D")
    rows = [("a", "p", t, 2.0, 5) for t in periods] + [("b", "p", periods[-1], 2.0, 3)]
    frame = pd.DataFrame(rows, columns=[C.series_id, C.product_id, C.period, C.price, C.units])
    ds = from_frame(frame)
    assert ds.split == periods[8]
    assert len(ds.train) == 8 and list(ds.test[C.series_id]) == ["a", "a"]  # "b" starts in the test window
    with pytest.raises(ValueError, match="duplicate"):
        from_frame(pd.concat([frame, frame.head(1)]))
    with pytest.raises(ValueError, match="negative"):
        from_frame(frame.assign(**{C.units: -1}))


def test_loglog_baseline_recovers_a_known_elasticity() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    series = rng.integers(0, 30, n).astype(str)
    price = np.exp(rng.normal(1.0, 0.2, n))
    level = pd.Series(rng.normal(3, 1, 30)).to_numpy()[series.astype(int)]
    units = np.exp(level - 2.0 * np.log(price) + rng.normal(0, 0.1, n))
    frame = pd.DataFrame({C.series_id: series, C.product_id: "p", C.price: price, C.units: units})
    assert LogLog.fit(frame).elasticity_["p"] == pytest.approx(-2.0, abs=0.05)


def test_evaluate_reports_model_and_baselines_on_the_same_rows() -> None:
    frame, _, _ = simulated()
    ds = from_frame(frame, name="sim")
    result = evaluate(PricingPredictor.from_model(fitted()), ds)
    assert set(result) == {"model", "series_mean", "log_log", "data"}
    assert result["model"]["rmse"] < result["series_mean"]["rmse"]  # lags and prices beat a constant
    assert result["model"]["negative_elasticity_share"] >= 0.95
    assert result["data"]["test_rows"] == len(ds.test)


@pytest.mark.slow
def test_train_runs_as_a_ray_train_job(tmp_path) -> None:
    import ray

    from omnicart.settings import Settings
    from training.pricing import train

    frame, _, _ = simulated(items=12, days=60)
    ds = from_frame(frame, name="tiny")
    try:
        model = train(Settings(home=tmp_path), ds, n_estimators=30, max_depth=4)
    finally:
        ray.shutdown()
    assert (model.model_.model_dir_ / "booster.json").is_file()
    assert model.model_.model_dir_.is_relative_to(tmp_path)
    result = evaluate(model, ds)
    assert np.isfinite(result["model"]["rmse"])
