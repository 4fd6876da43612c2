"""Readers: real files written in tmp_path, including broken ones; lines are kept for quarantine citations."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from omnicart.ingest import readers
from omnicart.ingest.readers import LINE, PARSE_ERROR, MalformedFileError
from omnicart.schemas import C

HEADER = "event_id,event_timestamp,channel,event_type,item_id,quantity,price\n"


def test_csv_keeps_file_lines_even_with_quoted_newlines_and_blank_lines(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(
        HEADER
        + 'E1,2026-01-01T10:00:00Z,web,view,I1,1,"9.99"\n'
        + "\n"
        + 'E2,2026-01-01T10:01:00Z,app,"add_to\ncart",I2,1,5\n'
        + "E3,2026-01-01T10:02:00Z,web,view,I3\n"  # too few fields
    )
    src = readers.read_channel(path, "clickstream")
    assert src.frame[LINE].tolist() == [2, 4, 6]
    assert src.frame[PARSE_ERROR].tolist()[:2] == [None, None]
    assert "expected 7 fields" in src.frame[PARSE_ERROR].iloc[2]
    assert src.frame[C.price].iloc[0] == "9.99"


def test_latin1_csv_declared_utf8_is_a_malformed_file_naming_the_line(tmp_path):
    path = tmp_path / "till.csv"
    path.write_bytes(
        (HEADER + "E1,2026-01-01T10:00:00Z,store,purchase,I1,1,2.5\nE2,2026-01-01,store,purchase,Café,1,2\n").encode(
            "latin-1"
        )
    )
    with pytest.raises(MalformedFileError, match=r"till\.csv.*not valid utf-8.*line 3"):
        readers.read_channel(path, "till", encoding="utf-8")
    assert len(readers.read_channel(path, "till", encoding="latin-1")) == 2


def test_truncated_parquet_is_a_malformed_file(tmp_path):
    path = tmp_path / "prices.parquet"
    pd.DataFrame({C.item_id: ["I1"] * 100, C.price: [1.0] * 100}).to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MalformedFileError, match="prices.parquet.*Parquet"):
        readers.read_file(path)


def test_missing_required_column_is_a_malformed_file(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("item_id,title\nI1,Mug\n")
    with pytest.raises(MalformedFileError, match=r"missing required column\(s\) \['event_timestamp'\]"):
        readers.read_channel(path, "catalog")


def test_jsonl_gz_bad_lines_become_malformed_records_not_a_crash(tmp_path):
    path = tmp_path / "social.jsonl.gz"
    lines = [json.dumps({"event_id": "S1", "item_id": "I1"}), "{not json", "", json.dumps([1, 2])]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    src = readers.read_file(path, required=["event_id"])
    assert src.format == "jsonl" and src.frame[LINE].tolist() == [1, 2, 4]
    assert src.frame[PARSE_ERROR].notna().tolist() == [False, True, True]


def test_corrupt_gzip_and_limit(tmp_path):
    bad = tmp_path / "x.jsonl.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(MalformedFileError, match="gzip"):
        readers.read_file(bad)
    good = tmp_path / "p.parquet"
    pd.DataFrame({"a": range(1000)}).to_parquet(good)
    src = readers.read_file(good, limit=10)
    assert len(src) == 10 and src.frame[LINE].tolist() == list(range(1, 11))
