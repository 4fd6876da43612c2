"""Bring-your-own-data importer: a shop's own CSV through a YAML mapping, and the public datasets' original files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pydantic
import pytest

from omnicart import lake, schemas
from omnicart.ingest.importer import MappingError, import_file, load_mapping
from omnicart.ingest.readers import MalformedFileError
from omnicart.schemas import C
from omnicart.settings import Settings

ROOT = Path(__file__).resolve().parents[4]
MAPPINGS = ROOT / "infra" / "mappings"
DATASETS = ROOT.parent / "shared" / "datasets"

SHOP_CSV = """Order No;SKU;When;Qty;Unit price;Kind;Email
A-1;sku-1 ;01/07/2025 09:30;2;$1,234.50;S;Ann@Example.com
A-2;sku-2;01/07/2025 10:00;1;$5.00;R;bob@example.com
A-3;TEST-9;01/07/2025 10:05;1;$5.00;S;
A-4;sku-1;31/02/2025 10:00;1;$5.00;S;
A-5;sku-3;01/07/2025 11:00;1;call us;S;
"""
SHOP_MAPPING = """
name: my_shop
sources:
  - name: orders
    path: orders.csv
    format: csv
    delimiter: ";"
    table: events
    columns:
      event_id: {from: Order No}
      order_id: {from: Order No}
      event_timestamp: {from: When, parse: datetime, format: "%d/%m/%Y %H:%M", timezone: Europe/Paris}
      channel: {value: store}
      event_type: {from: Kind, map: {S: purchase, R: return}}
      item_id: {from: SKU, transform: [strip, upper]}
      quantity: {from: Qty, cast: int}
      price: {from: Unit price, parse: money}
      email: {from: Email}
    filters:
      - name: test_orders
        when: {field: item_id, startswith: TEST}
"""


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", pseudonym_key="test-key")


def test_a_shops_own_csv_through_a_mapping(settings, tmp_path):
    (tmp_path / "orders.csv").write_text(SHOP_CSV)
    mapping = tmp_path / "my_shop.yaml"
    mapping.write_text(SHOP_MAPPING)
    report = import_file(settings, mapping, data_root=tmp_path)
    s = report.sources["orders"]
    assert (s.rows_in, s.kept, s.quarantined) == (5, 2, 3)
    assert report.quarantined == {"filtered": 1, "bad_timestamp": 1, "bad_type": 1}
    events = lake.read_table(settings.lake_dir, schemas.EVENTS).sort_values(C.event_id)
    assert events[C.event_type].tolist() == ["purchase", "return"]
    assert events[C.item_id].tolist() == ["SKU-1", "SKU-2"]
    assert events[C.price].tolist() == [1234.5, 5.0]
    assert events[C.event_timestamp].iloc[0] == pd.Timestamp("2025-07-01 07:30", tz="UTC")  # Paris summer time
    # An email is not an events column: it never reaches the lake, in clear or otherwise.
    text = "".join(p.read_bytes().decode("latin-1") for p in settings.lake_dir.rglob("*.parquet"))
    assert "example.com" not in text.lower()
    lines = lake.read_table(settings.lake_dir, schemas.QUARANTINE).set_index(C.source_line)[C.reason].to_dict()
    assert lines == {4: "filtered", 5: "bad_timestamp", 6: "bad_type"}
    july_1st = dt.date(2025, 7, 1)
    assert report.spans[schemas.EVENTS] == (july_1st, july_1st)  # what the Airflow task's asset events name
    assert report.to_dict()["spans"][schemas.EVENTS] == ["2025-07-01", "2025-07-01"]


def test_mapping_errors_are_clear(settings, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources:\n  - {name: s, path: f.csv, table: events, columns: {item_id: {frm: SKU}}}\n")
    with pytest.raises(pydantic.ValidationError, match="frm"):
        load_mapping(bad)
    with pytest.raises(MappingError, match="cannot read the mapping"):
        load_mapping(tmp_path / "missing.yaml")
    mapping = tmp_path / "my_shop.yaml"
    mapping.write_text(SHOP_MAPPING)
    with pytest.raises(MappingError, match="no source named 'refunds'"):
        import_file(settings, mapping, source="refunds", data_root=tmp_path)
    assert not settings.lake_dir.exists()


def test_a_file_lacking_a_mapped_column_is_malformed(settings, tmp_path):
    (tmp_path / "orders.csv").write_text("Order No;SKU\nA-1;sku-1\n")
    mapping = tmp_path / "my_shop.yaml"
    mapping.write_text(SHOP_MAPPING)
    with pytest.raises(MalformedFileError, match=r"orders.csv: missing column\(s\)"):
        import_file(settings, mapping, data_root=tmp_path)
    assert not settings.lake_dir.exists()


def _need(folder: str) -> Path:
    path = DATASETS / folder
    if not path.is_dir():
        pytest.skip(f"dataset {folder} not found at {path} (it lives in ../shared/datasets)")
    return path


def test_online_retail_ii_original_file_first_lines(settings):
    _need("online_retail_ii")
    report = import_file(settings, MAPPINGS / "online_retail_ii.yaml", limit=5000)
    s = report.sources["invoice_lines"]
    assert s.rows_in == 5000 and s.kept + s.quarantined == 5000 and s.kept > 4500
    assert set(report.quarantined) <= {"duplicate", "filtered", "out_of_range", "bad_timestamp"}
    events = lake.read_table(settings.lake_dir, schemas.EVENTS)
    first = events.sort_values(C.event_timestamp).iloc[0]
    assert first[C.event_timestamp] == pd.Timestamp("2009-12-01 07:45", tz="UTC")  # GMT in December
    assert first[C.customer_id] == "13085" and first[C.order_id] == "489434"
    assert set(events[C.event_type]) <= {"purchase", "return"}
    assert (events.loc[events[C.order_id].str.startswith("C"), C.event_type] == "return").all()
    assert events[C.item_id].str.fullmatch(r"\d{5}[A-Z]{0,2}").all() and (events[C.quantity] > 0).all()
    items = lake.read_table(settings.lake_dir, schemas.ITEMS)
    assert set(events[C.item_id]) <= set(items[C.item_id]) and items[C.title].notna().mean() > 0.95


def test_amazon_gift_cards_catalog_then_reviews(settings):
    _need("amazon_gift_cards")
    mapping = MAPPINGS / "amazon_gift_cards.yaml"
    catalog = import_file(settings, mapping, source="catalog")
    assert catalog.sources["catalog"].kept == 1547
    items = lake.read_table(settings.lake_dir, schemas.ITEMS)
    assert items[C.price].notna().sum() > 300 and (items[C.price].dropna() > 0).all()
    reviews = import_file(settings, mapping, source="reviews", limit=300)
    s = reviews.sources["reviews"]
    assert s.rows_in == 300 and s.kept + s.quarantined == 300
    assert "unknown_reference" not in s.by_reason
    customers = lake.read_table(settings.lake_dir, schemas.CUSTOMERS)
    assert customers[C.name].str.startswith("tok_").all()
