"""monitor_family on a small simulated lake: frames per family, the reference window (champion or fallback), and
clear NoData errors; and the monitor_models DAG's wiring (checks, notices, retrain assets)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from monitoring import families
from monitoring.run import NoData, monitor_family, reference_window
from omnicart.ingest.daily import land_and_ingest
from omnicart.schemas import DRIFT_COLUMNS, C
from omnicart.settings import Settings

DAYS = 9


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Settings:
    settings = Settings(
        home=tmp_path_factory.mktemp("home"),
        sim_customers=200,
        sim_items=40,
        sim_days=DAYS,
        drift_kind="price_shock",
        drift_day=DAYS - 1,
        pseudonym_key="test-key",
    )
    land_and_ingest(settings, settings.sim_start, settings.sim_end)
    return settings


def test_family_frames_have_the_family_columns(shop):
    day = shop.sim_start
    events = families.events_frame(shop, day, day)
    assert list(events.columns) == list(DRIFT_COLUMNS) and len(events) > 50
    assert events[C.segment].notna().all() and events[C.category].notna().all()
    prices = families.prices_frame(shop, day, day)
    assert list(prices.columns) == list(families.get("pricing").columns)
    assert len(prices) == 40  # one row per item
    support = families.support_frame(shop, shop.sim_start, shop.sim_end)
    assert list(support.columns) == [C.intent, families.QUESTION_CHARS] and (support[families.QUESTION_CHARS] > 0).all()


def test_reference_is_the_champion_window_capped_before_the_day():
    day = dt.date(2026, 2, 1)
    params = {"as_of": "2026-01-20", "train_start": "2025-12-01"}
    settings = Settings(home=Path("/nonexistent"))
    start, end, source = reference_window(settings, "recommend", day, params=params, version="3")
    assert (start, end) == (dt.date(2025, 12, 23), dt.date(2026, 1, 19))  # the 28 most recent days before as_of
    assert source == "champion v3 training window"
    # A champion trained after the checked day (backfill): its window is cut at the day before.
    start, end, _ = reference_window(settings, "recommend", dt.date(2026, 1, 10), params=params, version="3")
    assert end == dt.date(2026, 1, 9)
    start, end, source = reference_window(settings, "pricing", day)
    assert (start, end) == (dt.date(2026, 1, 25), dt.date(2026, 1, 31)) and "no champion" in source


def test_monitor_family_flags_the_price_shock_day(shop):
    clean = monitor_family(shop, "pricing", shop.sim_end - dt.timedelta(days=1))
    shocked = monitor_family(shop, "pricing", shop.sim_end)
    assert not clean.failing
    assert shocked.failing and families.COMPETITOR_GAP in shocked.data.drifted_columns
    assert shocked.reference_window == (shop.sim_end - dt.timedelta(days=7), shop.sim_end - dt.timedelta(days=1))
    assert Path(shocked.reports["data"]).name == f"data-drift-{shop.sim_end}.html"
    assert shocked.workspace["data"] and shocked.prediction is None and shocked.outcomes == ()


def test_no_data_is_a_clear_error(shop):
    with pytest.raises(NoData, match="no reference data"):
        monitor_family(shop, "recommend", shop.sim_start)
    with pytest.raises(NoData, match="no data on"):
        monitor_family(shop, "recommend", shop.sim_end + dt.timedelta(days=3))


def test_monitor_models_dag_wiring(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    from edge.orchestration import dags_folder

    dag = DagBag(str(dags_folder())).dags["monitor_models"]
    assert dag.max_active_runs == 1
    for family in ("recommend", "pricing", "support"):
        assert dag.get_task(f"notify_{family}").upstream_task_ids == {f"check_{family}"}
        retrain = dag.get_task(f"retrain_{family}")
        assert retrain.upstream_task_ids == {f"notify_{family}"}
        assert [a.uri for a in retrain.outlets] == [f"omnicart://retrain/{family}"]


def test_every_model_family_has_a_monitoring_entry() -> None:
    """monitor_models has a check task per name in schemas.FAMILIES; each must know its columns."""
    from monitoring import families
    from omnicart.schemas import FAMILIES

    assert set(families.names()) == set(FAMILIES)
