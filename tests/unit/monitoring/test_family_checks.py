"""Family checks: data drift on the family's columns with per-column rules, prediction drift, outcome limits, the
severity they add up to, and the reports (HTML files, Evidently workspace projects and runs)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring import families
from monitoring.checks import FamilyCheck, check_family
from monitoring.config import ColumnRule, MonitoringConfig, OutcomeRule
from monitoring.families import COMPETITOR_GAP, HIT, PREDICTED_UNITS
from monitoring.workspace import open_workspace, project_name
from omnicart.schemas import C
from omnicart.settings import Settings

DAY = dt.date(2026, 1, 13)
CATEGORIES = ("kitchen", "garden", "toys", "books")


def prices(n: int, seed: int, shock: float = 1.0) -> pd.DataFrame:
    """A pricing-family frame: one row per item and day."""
    rng = np.random.default_rng(seed)
    competitor = rng.lognormal(3.0, 0.5, n).round(2)
    price = (competitor * np.exp(rng.normal(0, 0.05, n)) * shock).round(2)
    return pd.DataFrame(
        {
            C.price: price,
            C.competitor_price: competitor,
            COMPETITOR_GAP: np.log(price / competitor),
            C.category: rng.choice(CATEGORIES, n),
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def run(settings: Settings, current: pd.DataFrame, **kwargs) -> FamilyCheck:
    kwargs.setdefault("workspace", False)
    kwargs.setdefault("report", False)
    return check_family(settings, "pricing", DAY, reference=prices(840, 1), current=current, **kwargs)


def test_clean_day_is_ok(settings):
    check = run(settings, prices(120, 2))
    assert check.severity == "ok" and not check.failing and check.reasons == ()
    assert set(check.data.column_scores) == {C.price, C.competitor_price, COMPETITOR_GAP, C.category}
    assert check.data.methods[C.category] == "jensenshannon" and check.data.methods[C.price] == "wasserstein"


def test_price_shock_is_critical_on_the_competitor_gap(settings):
    check = run(settings, prices(120, 2, shock=1.6))
    assert check.severity == "critical"  # distance far past drift_critical_score
    assert COMPETITOR_GAP in check.data.drifted_columns
    assert check.data.drifted_columns[COMPETITOR_GAP] > 1.0
    assert "competitor_gap" in check.reasons[0]


def test_column_rules_come_from_config(settings):
    shocked = prices(120, 2, shock=1.6)
    lenient = MonitoringConfig(drift_column_rules={"pricing.competitor_gap": ColumnRule(threshold=50.0)})
    check = run(settings, shocked, config=lenient)
    assert COMPETITOR_GAP not in check.data.drifted_columns
    assert check.data.thresholds[COMPETITOR_GAP] == 50.0 and check.data.thresholds[C.price] == 0.15
    # A family-less rule applies to every family's column of that name; the family one wins over it.
    rules = {C.price: ColumnRule(threshold=9.0), "pricing.price": ColumnRule(threshold=0.2)}
    assert MonitoringConfig(drift_column_rules=rules).column_rule("pricing", C.price).threshold == 0.2
    assert MonitoringConfig(drift_column_rules=rules).column_rule("recommend", C.price).threshold == 9.0


def test_prediction_drift_from_a_timestamped_frame(settings):
    rng = np.random.default_rng(3)
    stamps = pd.to_datetime([DAY - dt.timedelta(days=d) for d in range(8)]).tz_localize("UTC")
    frames = []
    for stamp in stamps:
        units = rng.poisson(20 if stamp.date() < DAY else 8, 120).astype(float)
        frames.append(
            pd.DataFrame({C.event_timestamp: stamp, C.price: rng.lognormal(3, 0.5, 120), PREDICTED_UNITS: units})
        )
    check = run(settings, prices(120, 2), predictions=pd.concat(frames, ignore_index=True))
    assert check.prediction is not None
    assert list(check.prediction.drifted_columns) == [PREDICTED_UNITS]
    assert (check.prediction.reference_rows, check.prediction.current_rows) == (840, 120)
    assert check.severity == "warning" and check.reasons[0].startswith("prediction drift")


def test_outcome_below_half_the_champion_is_critical(settings):
    hits = pd.DataFrame({C.customer_id: [f"C{i}" for i in range(100)], HIT: [1.0] * 5 + [0.0] * 95})
    check = check_family(
        settings,
        "recommend",
        DAY,
        reference=pd.DataFrame({C.price: np.arange(200.0)}),
        current=pd.DataFrame({C.price: np.arange(200.0)}),
        outcomes=hits,
        baselines={"model.hit_rate_at_10": 0.2},
        report=False,
        workspace=False,
    )
    [outcome] = check.outcomes
    assert (outcome.metric, outcome.value, outcome.rows, outcome.ok, outcome.judged) == (
        "hit_rate",
        0.05,
        100,
        False,
        True,
    )
    assert "0.1 (50% below the champion's 0.2)" in outcome.limit
    assert check.severity == "critical" and "hit_rate" in check.reasons[0]


def test_too_few_outcome_rows_are_reported_not_judged():
    config = MonitoringConfig(outcome_rules={"pricing": {"wape": OutcomeRule(max=0.1, min_rows=50)}})
    few = pd.DataFrame({C.item_id: ["a", "b"], PREDICTED_UNITS: [10.0, 10.0], C.units_sold: [1, 1]})
    few[families.ABS_ERROR] = (few[PREDICTED_UNITS] - few[C.units_sold]).abs()
    from monitoring.checks import judge_outcomes

    [outcome] = judge_outcomes(config, "pricing", families.pricing_metrics(few), {})
    assert outcome.value == 9.0 and not outcome.judged and outcome.ok


def test_outcome_frames():
    recs = pd.DataFrame({C.customer_id: ["a", "a", "b", "c"], C.item_id: ["x", "y", "x", "z"]})
    buys = pd.DataFrame({C.customer_id: ["a", "b", "b", "d"], C.item_id: ["y", "q", "r", "x"]})
    frame = families.hit_frame(recs, buys)
    assert dict(zip(frame[C.customer_id], frame[HIT], strict=True)) == {"a": 1.0, "b": 0.0}  # d had no recs
    forecasts = pd.DataFrame({C.item_id: ["i1", "i1", "i2"], PREDICTED_UNITS: [1.0, 4.0, 10.0]})
    actual = pd.DataFrame({C.item_id: ["i1", "i2"], C.units_sold: [5, 5]})
    assert families.pricing_metrics(families.forecast_frame(forecasts, actual)) == {"wape": (0.6, 2)}
    answers = pd.DataFrame({families.ESCALATED: [True, False, False, False], families.FEEDBACK: [-1, 1, None, -1]})
    metrics = families.support_metrics(families.feedback_frame(answers))
    assert metrics["escalation_rate"] == (0.25, 4)
    assert metrics["negative_feedback_rate"] == (pytest.approx(2 / 3), 3)


def test_to_dict_round_trips_through_json(settings):
    check = run(settings, prices(120, 2, shock=1.6), report=True)
    again = FamilyCheck.from_dict(json.loads(json.dumps(check.to_dict())))
    assert again == check
    assert Path(check.reports["data"]).is_file()


def test_workspace_has_one_project_per_family_and_one_run_per_day(settings):
    for n, shock in enumerate([1.0, 1.0, 1.6]):
        day = DAY + dt.timedelta(days=n)
        check_family(
            settings, "pricing", day, reference=prices(840, 1), current=prices(120, 10 + n, shock), report=False
        )
    support = pd.DataFrame({C.intent: ["a", "b", "c"] * 40, families.QUESTION_CHARS: np.arange(120)})
    check = check_family(settings, "support", DAY, reference=support, current=support.head(30), report=False)
    # A re-run of a day replaces its run instead of adding a second point.
    again = check_family(settings, "support", DAY, reference=support, current=support.head(30), report=False)

    ws = open_workspace(settings)
    projects = {p.name: p for p in ws.list_projects()}
    assert set(projects) == {project_name("pricing"), project_name("support")}
    assert len(ws.list_runs(projects[project_name("pricing")].id)) == 3
    assert [str(r) for r in ws.list_runs(projects[project_name("support")].id)] == [again.workspace["data"]]
    assert again.workspace["data"] != check.workspace["data"]

    pricing = projects[project_name("pricing")]
    runs = [ws.get_run(pricing.id, r) for r in ws.list_runs(pricing.id)]
    assert sorted(r.timestamp.date() for r in runs) == [DAY + dt.timedelta(days=n) for n in range(3)]
    assert all("family:pricing" in r.tags and "data" in r.tags for r in runs)
    panels = [p.title for p in ws.get_dashboard(pricing.id).panels]
    assert panels[:2] == ["Share of drifted columns", "Drift distance per column"]


def test_unknown_family_is_a_clear_error(settings):
    with pytest.raises(LookupError, match="no monitored family 'ranking'"):
        check_family(settings, "ranking", DAY, reference=prices(10, 1), current=prices(10, 2), workspace=False)


def test_config_from_settings_refines_the_default_rules():
    from types import SimpleNamespace

    given = SimpleNamespace(
        drift_threshold=0.2,
        drift_column_rules={"pricing.price": {"threshold": 0.3}},
        outcome_rules={"pricing": {"wape": {"max": 0.4}}},
    )
    config = MonitoringConfig.from_settings(given)
    assert config.drift_threshold == 0.2 and config.alert_reminder_days == 3
    assert config.column_rule("pricing", C.price).threshold == 0.3
    assert config.column_rule("recommend", C.price).threshold == 0.25  # the default rule stays
    assert config.outcome_rule("pricing", "wape").max == 0.4
    assert config.outcome_rule("recommend", "hit_rate").baseline_metric == "model.hit_rate_at_10"
