"""The Feast repo's contract: every Field described, every view owned and tagged, one service per model version."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from omnicart import lake, schemas
from omnicart.schemas import F
from omnicart.settings import Settings

feast = pytest.importorskip("feast")


@pytest.fixture(scope="module")
def repo():
    from feature_repo import definitions

    return definitions()


def _views(repo):
    from feast import FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView

    return [o for o in repo if isinstance(o, FeatureView | OnDemandFeatureView)]


def test_every_field_is_described(repo):
    from feast import RequestSource

    for obj in repo:
        fields = list(getattr(obj, "features", []) or [])
        if isinstance(obj, RequestSource):
            fields = list(obj.schema)
        for field in fields:
            assert field.description and len(field.description) > 10, f"{obj.name}.{field.name}"


def test_every_view_has_owner_and_tags(repo):
    views = _views(repo)
    assert {v.name for v in views} >= {
        F.customer_view,
        F.item_view,
        F.customer_channel_view,
        F.item_window_view,
        F.item_text_view,
        F.customer_realtime_view,
        F.price_fit_view,
    }
    for view in views:
        assert view.owner, view.name
        assert view.tags.get("pseudonymised") in ("true", "false"), view.name
        assert view.tags.get("family") and view.tags.get("kind") in ("batch", "stream", "on_demand"), view.name
        assert view.description, view.name
    by_name = {v.name: v for v in views}
    for name in (F.customer_view, F.customer_channel_view, F.customer_realtime_view):
        assert by_name[name].tags["pseudonymised"] == "true"  # keyed by customers
    for name in (F.item_view, F.item_window_view, F.item_text_view):
        assert by_name[name].tags["pseudonymised"] == "false"


def test_services_are_model_versions_with_unique_feature_names(repo):
    from feast import FeatureService

    services = {s.name: s for s in repo if isinstance(s, FeatureService)}
    assert {"recommend_v1", "recommend_v2", "pricing_v1"} <= set(services)
    assert [p.name for p in services["recommend_v1"].feature_view_projections] == [F.customer_view, F.item_view]
    for service in services.values():
        assert service.tags.get("family") and service.tags.get("version"), service.name
        names = [f.name for p in service.feature_view_projections for f in p.features]
        assert len(names) == len(set(names)), f"{service.name}: feature names collide"


def test_the_real_time_view_is_fed_by_the_push_source(repo):
    from feast import PushSource

    by_name = {o.name: o for o in repo}
    view = by_name[F.customer_realtime_view]
    assert isinstance(view.stream_source, PushSource) and view.stream_source.name == F.customer_events_push
    assert view.batch_source.path.endswith(schemas.CUSTOMER_LAST_EVENT)
    assert {f.name for f in view.features} == {
        F.last_item_id,
        F.last_event_type,
        F.last_channel,
        F.last_price,
        F.live_items,
    }  # exactly what omnicart.realtime.push_event pushes


def test_recommend_reads_the_recent_items_events_push(repo):
    from feast import PushSource

    from serving.recommend import FEATURE_REFS

    by_name = {o.name: o for o in repo}
    view = by_name[F.customer_recent_view]
    assert f"{F.customer_recent_view}:{F.recent_items}" in FEATURE_REFS
    assert isinstance(view.stream_source, PushSource) and view.stream_source.name == F.customer_recent_push
    assert view.batch_source.path.endswith(schemas.CUSTOMER_FEATURES)  # daily: the 30-day aggregates' recent items
    # a column of that table by its own name: Feast 0.67 materialises a push-fed view without field mappings
    assert [f.name for f in view.features] == [F.recent_items]
    assert F.recent_items in {f.name for f in by_name[F.customer_view].features}


def test_view_fields_match_the_lake_tables(repo):
    from omnicart.features import table_schemas

    by_name = {o.name: o for o in repo}
    tables = table_schemas()
    for view, table in (
        (F.customer_channel_view, schemas.CUSTOMER_CHANNEL_FEATURES),
        (F.item_window_view, schemas.ITEM_WINDOW_FEATURES),
        (F.customer_realtime_view, schemas.CUSTOMER_LAST_EVENT),
        (F.item_text_view, schemas.ITEM_TEXT_EMBEDDINGS),
    ):
        columns = set(tables[table].names) - {schemas.C.customer_id, schemas.C.item_id, schemas.C.channel}
        assert {f.name for f in by_name[view].features} == columns - {schemas.C.event_timestamp}, view


def test_materialize_windows_reach_the_newest_partition(tmp_path):
    from feature_repo.apply import materialize_windows

    s = Settings(home=tmp_path)
    one = pd.DataFrame({"x": [1]})
    for day in (dt.date(2026, 1, 1), dt.date(2026, 1, 5)):
        lake.write_partition(s.lake_dir, schemas.CUSTOMER_FEATURES, day, one)
    lake.write_partition(s.lake_dir, schemas.ITEM_TEXT_EMBEDDINGS, dt.date(2026, 1, 1), one)
    windows = materialize_windows(s, dt.date(2026, 1, 3), dt.date(2026, 1, 3))
    assert windows == {
        F.customer_view: (dt.date(2026, 1, 3), dt.date(2026, 1, 5)),  # never roll the online store back
        F.customer_recent_view: (dt.date(2026, 1, 3), dt.date(2026, 1, 5)),  # its recent items, from the same table
        F.item_text_view: (dt.date(2026, 1, 1), dt.date(2026, 1, 3)),  # vectors never expire: from the first day
    }
