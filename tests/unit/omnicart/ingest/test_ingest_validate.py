"""Validation and quarantine: each reason on real files, rows in = kept + quarantined, and the lake untouched by a
malformed file."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from omnicart import lake, schemas
from omnicart.ingest import pipeline, readers
from omnicart.ingest.readers import MalformedFileError
from omnicart.ingest.validate import QuarantineSummary, validate
from omnicart.schemas import C
from omnicart.settings import Settings

HEADER = "event_id,event_timestamp,customer_id,channel,identifier,event_type,item_id,quantity,price\n"
ROWS = [
    "E1,2026-01-01T10:00:00Z,C1,web,wc.1,view,I1,1,9.99",  # good
    "E2,2026-01-01T10:05:00Z,C1,web,wc.1,purchase,I1,two,9.99",  # bad type
    "E3,2026-01-01T10:06:00Z,C2,app,dev-2,purchase,I2,1,-4",  # out of range
    "E4,yesterday,C2,app,dev-2,view,I2,1,5",  # bad timestamp
    "E5,2026-01-01T11:00:00Z,C3,web,wc.3,view,I404,1,5",  # unknown item
    "E1,2026-01-01T10:00:00Z,C1,web,wc.1,view,I1,1,9.99",  # duplicate of E1
    ",2026-01-01T12:00:00Z,C3,web,wc.3,view,I1,1,5",  # missing required event_id
    "E8,2026-01-01T12:00:00Z,C3,fax,wc.3,view,I1,1,5",  # channel not allowed
    "E9,2025-12-31T23:59:00Z,C3,web,wc.3,view,I1,1,5",  # outside the day
    "E10,2026-01-01T13:00:00Z,C4,web,wc.4,add_to_cart,I2,3,5",  # good
]
EXPECTED = {
    "bad_type": 1,
    "out_of_range": 1,
    "bad_timestamp": 2,
    "unknown_reference": 1,
    "duplicate": 1,
    "missing_required": 1,
    "not_allowed": 1,
}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", pseudonym_key="test-key")


def _catalog(tmp_path):
    path = tmp_path / "catalog.parquet"
    pd.DataFrame(
        {
            C.item_id: ["I1", "I2"],
            C.title: ["Mug", "Kettle"],
            C.price: [9.99, 30.0],
            C.event_timestamp: pd.to_datetime(["2026-01-01"] * 2, utc=True),
        }
    ).to_parquet(path)
    return path


def test_every_reason_is_caught_with_its_line_and_rows_are_accounted_for(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(HEADER + "\n".join(ROWS) + "\n")
    src = readers.read_channel(path, "clickstream")
    day = pd.Timestamp("2026-01-01", tz="UTC")
    result = validate(
        src, readers.CLICKSTREAM, references={C.item_id: {"I1", "I2"}}, window=(day, day + pd.Timedelta(days=1))
    )
    s = result.summary
    assert s.rows_in == len(ROWS) == s.kept + s.quarantined
    assert dict(s.by_reason) == EXPECTED
    assert result.kept[C.event_id].tolist() == ["E1", "E10"]
    assert result.kept[C.quantity].dtype == "int64" and str(result.kept[C.event_timestamp].dt.tz) == "UTC"
    q = result.quarantined.set_index(C.source_line)
    assert q.loc[3, C.reason] == "bad_type" and "'two'" in q.loc[3, C.detail]
    assert q.loc[7, C.reason] == "duplicate" and q.loc[5, C.reason] == q.loc[10, C.reason] == "bad_timestamp"
    assert (q[C.source_file] == str(path)).all()
    assert json.loads(q.loc[6, C.record])[C.item_id] == "I404"


def test_summary_refuses_rows_that_are_not_accounted_for():
    with pytest.raises(AssertionError):
        QuarantineSummary(rows_in=3, kept=1, quarantined=1, by_reason={"bad_type": 1})
    total = QuarantineSummary(3, 2, 1, {"bad_type": 1}) + QuarantineSummary(2, 1, 1, {"duplicate": 1})
    assert (total.rows_in, total.kept, total.quarantined) == (5, 3, 2)


def test_ingest_files_writes_kept_rows_pseudonymised_and_a_quarantine_table(settings, tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(HEADER + "\n".join(ROWS) + "\n")
    day = pd.Timestamp("2026-01-01").date()
    report = pipeline.ingest_files(settings, {"catalog": _catalog(tmp_path), "clickstream": clicks}, day=day)
    events = report.by_table[schemas.EVENTS]
    assert (events.rows_in, events.kept, events.quarantined) == (10, 2, 8)
    lake_events = lake.read_table(settings.lake_dir, schemas.EVENTS)
    assert len(lake_events) == 2 and lake_events[C.identifier].str.startswith("tok_").all()
    quarantine = lake.read_table(settings.lake_dir, schemas.QUARANTINE)
    assert len(quarantine) == 8 and "wc.1" not in quarantine[C.record].str.cat()
    assert quarantine[C.reason].value_counts().to_dict() == EXPECTED

    # Re-running the day replaces its partitions: same rows, no duplicates in the lake or the quarantine.
    pipeline.ingest_files(settings, {"catalog": _catalog(tmp_path), "clickstream": clicks}, day=day)
    assert len(lake.read_table(settings.lake_dir, schemas.EVENTS)) == 2
    assert len(lake.read_table(settings.lake_dir, schemas.QUARANTINE)) == 8


def test_a_malformed_file_fails_before_anything_is_written(settings, tmp_path):
    good = tmp_path / "clicks.csv"
    good.write_text(HEADER + ROWS[0] + "\n")
    bad = tmp_path / "till.parquet"
    bad.write_bytes(b"PAR1 truncated")
    before = sorted(p for p in settings.home_dir.rglob("*") if p.is_file()) if settings.home_dir.exists() else []
    with pytest.raises(MalformedFileError, match="till.parquet"):
        pipeline.ingest_files(settings, {"clickstream": good, "till": bad})
    assert not settings.lake_dir.exists() or not any(settings.lake_dir.rglob("*.parquet"))
    after = [p for p in settings.home_dir.rglob("*") if p.is_file()] if settings.home_dir.exists() else []
    assert [p for p in after if "lake" in p.parts] == [p for p in before if "lake" in p.parts]


def test_pii_never_reaches_the_lake_even_in_quarantined_rows(settings, tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text(
        "customer_id,email,phone,event_timestamp\n"
        "C1,ann@example.com,+44 7700 900123,2026-01-01T00:00:00Z\n"
        "C2,bob@example.com,+44 7700 900456,not-a-time\n"
    )
    pipeline.ingest_files(settings, {"crm": path})
    text = "".join(p.read_bytes().decode("latin-1") for p in settings.lake_dir.rglob("*.parquet"))
    assert "ann@example.com" not in text and "bob@example.com" not in text and "900456" not in text
    assert len(lake.read_table(settings.lake_dir, schemas.QUARANTINE)) == 1
