"""Wiring of ingest_omnichannel, import_data and materialize_features: tasks, order, Assets, params, day window."""

from __future__ import annotations

import datetime as dt
import importlib.util
from types import SimpleNamespace

import pytest

from edge.orchestration import dags_folder
from omnicart import assets, schemas
from omnicart.ingest.channels import LANDING_CHANNELS


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(dags_folder()))
    assert bag.import_errors == {}
    return bag


def _uris(objs) -> set[str]:
    return {o.uri for o in objs}


def test_ingest_has_one_task_per_channel_in_catalog_first_order(dagbag):
    dag = dagbag.dags["ingest_omnichannel"]
    channel_tasks = [f"ingest_{c}" for c in LANDING_CHANNELS]
    assert {t.task_id for t in dag.tasks} == {"land", *channel_tasks, "resolve_identities", "report_channels"}
    assert channel_tasks[0] == "ingest_catalog"
    previous = "land"
    for task_id in channel_tasks:  # a chain: they share the day's quarantine partition
        assert previous in dag.get_task(task_id).upstream_task_ids
        previous = task_id
    assert previous in dag.get_task("resolve_identities").upstream_task_ids
    assert dag.get_task("report_channels").upstream_task_ids == {"resolve_identities"}  # the day's identity map
    for channel, table in LANDING_CHANNELS.items():
        outlets = _uris(dag.get_task(f"ingest_{channel}").outlets)
        assert outlets == {assets.lake_uri(table), assets.lake_uri(schemas.QUARANTINE)}
    assert _uris(dag.get_task("resolve_identities").outlets) == {assets.lake_uri(schemas.IDENTITY_MAP)}
    produced = set().union(*(_uris(t.outlets) for t in dag.tasks))
    assert produced == {assets.lake_uri(t) for t in assets.INGESTED_TABLES}  # an Asset per lake table


def test_materialize_waits_for_what_ingest_updates_or_an_import(dagbag):
    ingest, materialize = dagbag.dags["ingest_omnichannel"], dagbag.dags["materialize_features"]
    wanted = {assets.lake_uri(t) for t in assets.FEATURE_INPUTS}
    either = materialize.timetable.asset_condition  # AssetAny(AssetAll(every input), the import asset)
    assert type(either).__name__ == "AssetAny"
    daily, imported = either.objects
    assert type(daily).__name__ == "AssetAll" and _uris(daily.objects) == wanted
    assert imported.uri == assets.IMPORT_URI
    produced = set().union(*(_uris(t.outlets) for t in ingest.tasks))
    assert wanted <= produced
    assert "apply_and_materialize" in {t.task_id for t in materialize.tasks}
    upstream = materialize.get_task("apply_and_materialize").upstream_task_ids
    assert upstream == {"window", "customer_item_stats", "omnichannel_features", "text_embeddings"}


def test_import_is_one_manual_task_whose_alias_feeds_materialize(dagbag):
    dag, materialize = dagbag.dags["import_data"], dagbag.dags["materialize_features"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # triggered by hand or the API only
    assert [t.task_id for t in dag.tasks] == ["import_mapping"]
    (alias,) = dag.get_task("import_mapping").outlets  # the tables written are known at run time only
    assert type(alias).__name__ == "AssetAlias" and alias.name == assets.IMPORT_ALIAS
    assert assets.IMPORT_URI in {a.uri for a in materialize.timetable.asset_condition.objects if hasattr(a, "uri")}
    mapping = dag.params["mapping"]
    assert (dags_folder().parent / mapping).is_file() and mapping.startswith("infra/mappings/")
    assert dag.params["source"] is None and dag.params["source_path"] is None and dag.params["limit"] is None


def test_params_are_described(dagbag):
    for dag_id in ("ingest_omnichannel", "materialize_features", "import_data"):
        params = dagbag.dags[dag_id].params
        assert params, dag_id
        for name in params:
            assert params.get_param(name).description, f"{dag_id}.{name}"
    assert dagbag.dags["ingest_omnichannel"].params["simulate"] is True


@pytest.fixture(scope="module")
def materialize_module():
    spec = importlib.util.spec_from_file_location("_materialize_dag", dags_folder() / "materialize_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(day: str | None):
    return SimpleNamespace(extra={assets.DAY_KEY: day} if day else {})


def test_window_from_params_events_or_run_date(materialize_module):
    window = materialize_module._window
    run_date = dt.datetime(2026, 1, 6, tzinfo=dt.UTC)
    assert window({"first_day": "2026-01-02", "last_day": None}, None, run_date) == {
        "first": "2026-01-02",
        "last": "2026-01-02",
    }
    triggered = {"a": [_event("2026-01-03"), _event("2026-01-01")], "b": [_event(None), _event("2026-01-02")]}
    assert window({}, triggered, run_date) == {"first": "2026-01-01", "last": "2026-01-03"}  # a backfill's days
    imported = SimpleNamespace(extra={assets.DAY_KEY: "2025-12-01", assets.LAST_DAY_KEY: "2025-12-20"})
    assert window({}, {"import": [imported]}, run_date) == {"first": "2025-12-01", "last": "2025-12-20"}
    assert window({"first_day": None, "last_day": None}, {}, run_date) == {"first": "2026-01-05", "last": "2026-01-05"}
    with pytest.raises(ValueError, match="after"):
        window({"first_day": "2026-01-04", "last_day": "2026-01-02"}, None, run_date)
