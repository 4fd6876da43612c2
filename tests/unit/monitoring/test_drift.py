"""Drift check: clean days of a stationary process pass; each injected drift kind is flagged on its column."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import DriftResult, check_drift
from omnicart.schemas import CHANNELS, DRIFT_COLUMNS, EVENT_TYPES, C

CATEGORIES = tuple(f"cat_{i:02d}" for i in range(12))
SEGMENTS = ("new", "regular", "vip", "dormant")
CATEGORICAL = (C.channel, C.event_type, C.category, C.segment)
THRESHOLD = 0.1


def events(n: int, seed: int) -> pd.DataFrame:
    """n enriched events of one stationary shop: skewed event types, log-normal prices, small quantities."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            C.channel: rng.choice(CHANNELS, n),
            C.event_type: rng.choice(EVENT_TYPES, n, p=[0.7, 0.15, 0.12, 0.03]),
            C.price: rng.lognormal(3.5, 0.6, n).round(2),
            C.quantity: rng.choice([1, 2, 3, 4, 5], n, p=[0.6, 0.2, 0.1, 0.06, 0.04]),
            C.category: rng.choice(CATEGORIES, n),
            C.segment: rng.choice(SEGMENTS, n, p=[0.3, 0.4, 0.1, 0.2]),
        }
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return events(7 * 300, seed=1)  # a week of ~300 events a day


def run(reference: pd.DataFrame, current: pd.DataFrame, tmp_path: Path, **kwargs) -> DriftResult:
    return check_drift(
        reference,
        current,
        DRIFT_COLUMNS,
        threshold=THRESHOLD,
        report_path=tmp_path / "reports" / "drift.html",
        categorical=CATEGORICAL,
        **kwargs,
    )


@pytest.mark.parametrize(("n", "seed"), [(200, 11), (300, 12), (300, 13), (1000, 14), (3000, 15)])
def test_clean_day_is_not_drifted(reference, tmp_path, n, seed):
    result = run(reference, events(n, seed), tmp_path, day=date(2026, 1, 15))
    assert not result.drifted, result.column_scores
    assert result.drifted_columns == {}
    assert set(result.column_scores) == set(DRIFT_COLUMNS)
    assert (result.reference_rows, result.current_rows, result.day) == (len(reference), n, date(2026, 1, 15))


def _new_value(df: pd.DataFrame, column: str, value: str, share: float, seed: int) -> pd.DataFrame:
    df = df.copy()
    df.loc[np.random.default_rng(seed).random(len(df)) < share, column] = value
    return df


@pytest.mark.parametrize(
    ("column", "make"),
    [
        pytest.param(C.category, lambda d: _new_value(d, C.category, "cat_new", 0.25, 0), id="new_category_25pct"),
        pytest.param(C.segment, lambda d: _new_value(d, C.segment, "student", 0.15, 0), id="new_segment_15pct"),
        pytest.param(C.price, lambda d: d.assign(**{C.price: d[C.price] * 1.6}), id="price_shock_x1.6"),
        pytest.param(C.channel, lambda d: d[d[C.channel] != "social"], id="channel_outage"),
    ],
)
def test_injected_drift_is_flagged_on_its_column(reference, tmp_path, column, make):
    result = run(reference, make(events(300, seed=21)), tmp_path)
    assert result.drifted
    assert list(result.drifted_columns) == [column]
    assert result.drifted_columns[column] >= THRESHOLD
    assert result.drifted_columns[column] == result.column_scores[column]


def test_methods_follow_column_kind(reference, tmp_path):
    result = run(reference, events(300, seed=3), tmp_path)
    assert result.methods[C.price] == result.methods[C.quantity] == "wasserstein"
    assert {result.methods[c] for c in CATEGORICAL} == {"jensenshannon"}


def test_numeric_codes_named_categorical_are_compared_as_categories(reference, tmp_path):
    codes = {name: i for i, name in enumerate(CHANNELS)}
    ref, cur = (d.assign(**{C.channel: d[C.channel].map(codes)}) for d in (reference, events(300, seed=4)))
    result = run(ref, cur, tmp_path)
    assert result.methods[C.channel] == "jensenshannon"
    assert not result.drifted


def test_tiny_shift_in_a_large_sample_is_not_flagged(tmp_path):
    """A p-value test alone flags a 1% price change in 100k rows; the distance gate does not."""
    reference, current = events(100_000, seed=5), events(100_000, seed=6)
    current[C.price] *= 1.01
    result = check_drift(reference, current, [C.price], threshold=THRESHOLD, report_path=tmp_path / "r.html")
    assert result.p_values[C.price] < 0.001
    assert not result.drifted


def test_report_html_is_written(reference, tmp_path):
    path = tmp_path / "deep" / "dir" / "2026-01-15.html"
    result = check_drift(reference, events(300, seed=7), DRIFT_COLUMNS, threshold=THRESHOLD, report_path=path)
    assert result.report_html == path
    html = path.read_text(encoding="utf-8")
    assert len(html) > 50_000
    assert "<html" in html.lower()
    for column in DRIFT_COLUMNS:
        assert column in html


def test_empty_current_data_is_a_clear_error(reference, tmp_path):
    with pytest.raises(ValueError, match="current data is empty"):
        run(reference, events(300, seed=8).iloc[0:0], tmp_path)


def test_missing_column_is_a_clear_error(reference, tmp_path):
    with pytest.raises(ValueError, match=C.segment):
        run(reference, events(300, seed=9).drop(columns=[C.segment]), tmp_path)
