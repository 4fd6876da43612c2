"""The lake: date-partitioned Parquet tables that a re-run replaces atomically."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from omnicart import lake, schemas
from omnicart.schemas import C

D1, D2, D3 = date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)


def _frame(day: date, n: int = 3, price: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            C.event_id: [f"E{day:%Y%m%d}-{i}" for i in range(n)],
            C.event_timestamp: pd.date_range(pd.Timestamp(day, tz="UTC"), periods=n, freq="h"),
            C.price: [price] * n,
        }
    )


def test_write_partition_lays_out_hive_style_directories(tmp_path):
    path = lake.write_partition(tmp_path, schemas.EVENTS, D1, _frame(D1))
    assert path == tmp_path / schemas.EVENTS / f"{C.dt}=2026-01-01" / lake.PART_FILE
    assert path.is_file()


def test_read_table_round_trips_in_date_order_without_adding_dt(tmp_path):
    for day in (D3, D1, D2):  # written out of order
        lake.write_partition(tmp_path, schemas.EVENTS, day, _frame(day))
    table = lake.read_table(tmp_path, schemas.EVENTS)
    expected = pd.concat([_frame(D1), _frame(D2), _frame(D3)], ignore_index=True)
    pd.testing.assert_frame_equal(table, expected)
    assert C.dt not in table.columns
    assert str(table[C.event_timestamp].dt.tz) == "UTC"


def test_read_table_bounds_are_inclusive_and_columns_select(tmp_path):
    for day in (D1, D2, D3):
        lake.write_partition(tmp_path, schemas.EVENTS, day, _frame(day))
    middle = lake.read_table(tmp_path, schemas.EVENTS, start=D2, end=D2)
    assert middle[C.event_id].str.startswith("E20260102").all() and len(middle) == 3
    assert len(lake.read_table(tmp_path, schemas.EVENTS, start=D2)) == 6
    assert len(lake.read_table(tmp_path, schemas.EVENTS, end=D2)) == 6
    only_ids = lake.read_table(tmp_path, schemas.EVENTS, columns=[C.event_id])
    assert list(only_ids.columns) == [C.event_id] and len(only_ids) == 9


def test_read_table_of_missing_table_or_range_is_empty(tmp_path):
    assert lake.read_table(tmp_path, schemas.PRICES).empty
    lake.write_partition(tmp_path, schemas.EVENTS, D1, _frame(D1))
    empty = lake.read_table(tmp_path, schemas.EVENTS, start=D2, columns=[C.event_id, C.price])
    assert empty.empty and list(empty.columns) == [C.event_id, C.price]


def test_empty_partitions_do_not_disturb_the_others(tmp_path):
    lake.write_partition(tmp_path, schemas.EVENTS, D1, _frame(D1).iloc[:0])
    lake.write_partition(tmp_path, schemas.EVENTS, D2, _frame(D2))
    table = lake.read_table(tmp_path, schemas.EVENTS)
    assert len(table) == 3 and table[C.price].dtype == float


def test_rewriting_a_day_replaces_it(tmp_path):
    lake.write_partition(tmp_path, schemas.EVENTS, D1, _frame(D1, n=5, price=1.0))
    lake.write_partition(tmp_path, schemas.EVENTS, D2, _frame(D2))
    lake.write_partition(tmp_path, schemas.EVENTS, D1, _frame(D1, n=2, price=9.0))
    day1 = lake.read_table(tmp_path, schemas.EVENTS, start=D1, end=D1)
    assert len(day1) == 2 and (day1[C.price] == 9.0).all()
    assert len(lake.read_table(tmp_path, schemas.EVENTS)) == 5
    # nothing but the one part file is left behind
    assert [p.name for p in lake.partition_dir(tmp_path, schemas.EVENTS, D1).iterdir()] == [lake.PART_FILE]


def test_failed_write_leaves_the_previous_partition_intact(tmp_path):
    lake.write_partition(tmp_path, schemas.EVENTS, D1, _frame(D1, price=2.0))
    unwritable = pd.DataFrame({C.event_id: ["x"], C.price: [object()]})  # pyarrow cannot serialise this
    with pytest.raises(Exception):  # noqa: B017 - whichever error pyarrow raises, the old data must survive
        lake.write_partition(tmp_path, schemas.EVENTS, D1, unwritable)
    day1 = lake.read_table(tmp_path, schemas.EVENTS)
    pd.testing.assert_frame_equal(day1, _frame(D1, price=2.0))
    assert [p.name for p in lake.partition_dir(tmp_path, schemas.EVENTS, D1).iterdir()] == [lake.PART_FILE]


def test_partitions_are_sorted_and_ignore_foreign_entries(tmp_path):
    for day in (D3, D1):
        lake.write_partition(tmp_path, schemas.PRICES, day, _frame(day))
    (tmp_path / schemas.PRICES / "_SUCCESS").touch()
    (tmp_path / schemas.PRICES / f"{C.dt}=not-a-date").mkdir()
    (tmp_path / schemas.PRICES / f"{C.dt}=2026-01-02").mkdir()  # no part file: not a partition
    assert lake.partitions(tmp_path, schemas.PRICES) == [D1, D3]
    assert lake.partitions(tmp_path, schemas.EVENTS) == []
    assert len(lake.read_table(tmp_path, schemas.PRICES)) == 6


def test_delete_partition(tmp_path):
    for day in (D1, D2):
        lake.write_partition(tmp_path, schemas.EVENTS, day, _frame(day))
    assert lake.delete_partition(tmp_path, schemas.EVENTS, D1) is True
    assert lake.delete_partition(tmp_path, schemas.EVENTS, D1) is False
    assert lake.partitions(tmp_path, schemas.EVENTS) == [D2]
    assert lake.read_table(tmp_path, schemas.EVENTS)[C.event_id].str.startswith("E20260102").all()


@pytest.mark.parametrize("table", ["", "..", "a/b", "../events"])
def test_table_names_cannot_escape_the_root(tmp_path, table):
    with pytest.raises(ValueError):
        lake.write_partition(tmp_path, table, D1, _frame(D1))


def test_appended_chunks_are_read_with_the_day_and_replaced_by_a_rewrite(tmp_path):
    table = schemas.predictions_table("pricing")
    lake.append_partition(tmp_path, table, D1, _frame(D1, n=2, price=1.0))
    lake.append_partition(tmp_path, table, D1, _frame(D1, n=3, price=2.0))
    lake.append_partition(tmp_path, table, D2, _frame(D2, n=1))
    assert lake.partitions(tmp_path, table) == [D1, D2]  # a day of chunks only is a partition
    day1 = lake.read_table(tmp_path, table, start=D1, end=D1)
    assert list(day1[C.price]) == [1.0, 1.0, 2.0, 2.0, 2.0]  # in the order they landed
    assert len(lake.read_partition(tmp_path, table, D1)) == 5 and len(lake.read_table(tmp_path, table)) == 6

    lake.write_partition(tmp_path, table, D1, day1[day1[C.price] == 2.0])  # e.g. an erasure rewriting the day
    assert len(lake.read_table(tmp_path, table, start=D1, end=D1)) == 3
    assert [p.name for p in lake.partition_dir(tmp_path, table, D1).iterdir()] == [lake.PART_FILE]


def test_a_rewrite_of_the_files_it_read_keeps_a_chunk_appended_meanwhile(tmp_path):
    table = schemas.predictions_table("pricing")
    lake.append_partition(tmp_path, table, D1, _frame(D1, n=2, price=1.0))
    lake.append_partition(tmp_path, table, D1, _frame(D1, n=3, price=2.0))
    files = lake.partition_files(tmp_path, table, D1)
    read = lake.read_files(files)
    lake.append_partition(tmp_path, table, D1, _frame(D1, n=1, price=3.0))  # serving logs while the rewrite runs

    lake.write_partition(tmp_path, table, D1, read[read[C.price] == 2.0], replaces=files)

    assert sorted(lake.read_partition(tmp_path, table, D1)[C.price]) == [2.0, 2.0, 2.0, 3.0]
    assert len(lake.partition_files(tmp_path, table, D1)) == 2  # the rewritten part and the new chunk
