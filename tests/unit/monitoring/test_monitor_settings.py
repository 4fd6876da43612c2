"""Monitoring's thresholds and per-column tests come from Settings (env or YAML), and changing one changes a verdict."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from monitoring.checks import check_family
from monitoring.config import MonitoringConfig
from monitoring.families import COMPETITOR_GAP, PREDICTED_UNITS
from omnicart.schemas import C
from omnicart.settings import Settings

DAY = dt.date(2026, 1, 13)


def prices(n: int, seed: int, shock: float = 1.0) -> pd.DataFrame:
    """A pricing-family frame (one row per item and day); ``shock`` scales shelf prices against competitors'."""
    rng = np.random.default_rng(seed)
    competitor = rng.lognormal(3.0, 0.5, n).round(2)
    price = (competitor * np.exp(rng.normal(0, 0.05, n)) * shock).round(2)
    return pd.DataFrame(
        {
            C.price: price,
            C.competitor_price: competitor,
            COMPETITOR_GAP: np.log(price / competitor),
            C.category: rng.choice(["kitchen", "garden", "toys", "books"], n),
        }
    )


def check(settings: Settings, current: pd.DataFrame, **kwargs):
    return check_family(
        settings, "pricing", DAY, reference=prices(840, 1), current=current, report=False, workspace=False, **kwargs
    )


def test_defaults_of_settings_and_config_agree(tmp_path):
    assert MonitoringConfig.from_settings(Settings(home=tmp_path)) == MonitoringConfig()


def test_a_per_column_rule_in_settings_changes_the_verdict(tmp_path):
    shocked = prices(120, 2, shock=1.6)
    assert check(Settings(home=tmp_path), shocked).severity == "critical"

    lenient = Settings(home=tmp_path, drift_column_rules={"pricing.competitor_gap": {"threshold": 50.0}})
    relaxed = check(lenient, shocked)
    assert COMPETITOR_GAP not in relaxed.data.drifted_columns
    assert relaxed.data.thresholds[COMPETITOR_GAP] == 50.0
    # the built-in rule for recommend.price survives a rule given for another column
    assert MonitoringConfig.from_settings(lenient).column_rule("recommend", C.price).threshold == 0.25


def test_drift_significance_and_critical_share_come_from_settings(tmp_path):
    shocked = prices(120, 2, shock=1.05)  # the competitor gap moves by 0.9 (normed Wasserstein), p ~ 1e-12
    default = check(Settings(home=tmp_path), shocked)
    assert list(default.data.drifted_columns) == [COMPETITOR_GAP] and default.severity == "warning"
    assert check(Settings(home=tmp_path, drift_critical_share=0.25), shocked).severity == "critical"
    assert check(Settings(home=tmp_path, drift_critical_score=0.5), shocked).severity == "critical"
    assert check(Settings(home=tmp_path, drift_threshold=1.0), shocked).severity == "ok"
    assert check(Settings(home=tmp_path, drift_significance=1e-15), shocked).severity == "ok"


def test_outcome_limits_from_the_environment(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    units = rng.poisson(10, 100)
    outcomes = pd.DataFrame({C.item_id: range(100), PREDICTED_UNITS: 10.0, C.units_sold: units})
    outcomes["abs_error"] = (outcomes[PREDICTED_UNITS] - outcomes[C.units_sold]).abs()
    assert check(Settings(home=tmp_path), prices(120, 2), outcomes=outcomes).severity == "ok"  # wape ~0.25 <= 0.6

    monkeypatch.setenv("OMNICART_OUTCOME_RULES", '{"pricing": {"wape": {"max": 0.1}}}')
    failing = check(Settings(home=tmp_path), prices(120, 2), outcomes=outcomes)
    assert failing.severity == "critical" and failing.reasons[0].startswith("outcome wape")


def test_settings_reject_a_malformed_rule(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        MonitoringConfig.from_settings(Settings(home=tmp_path, drift_column_rules={"price": {"treshold": 0.3}}))
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, drift_significance=2.0)


def test_alert_cadence_from_settings(tmp_path):
    config = MonitoringConfig.from_settings(
        Settings(home=tmp_path, alert_reminder_days=7, alert_attach_max_bytes=0, retrain_on_reminder=False)
    )
    assert (config.alert_reminder_days, config.alert_attach_max_bytes, config.retrain_on_reminder) == (7, 0, False)
