"""Owners' files: one Parquet file per owner holding that owner's rows only, where the settings say."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from omnicart.federated.owners import list_owner_files, owner_file, read_owner, write_owner_files
from omnicart.schemas import C
from omnicart.settings import Settings, get_settings
from tests.unit.omnicart.federated.federated_data import stores_table


def test_each_owner_gets_its_own_rows_and_nothing_else(tmp_path):
    frame = stores_table(stores=3, products=2, weeks=10)
    written = write_owner_files(frame, tmp_path / "owners")
    assert written == list_owner_files(tmp_path / "owners")
    assert [p.name for p in written] == ["0.parquet", "1.parquet", "2.parquet"]
    for path in written:
        rows = read_owner(path)
        owner = path.stem
        expected = frame[frame[C.store_id] == owner].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, expected)
    assert sum(len(read_owner(p)) for p in written) == len(frame)


def test_a_subset_of_owners_and_a_rewrite_replace_only_their_files(tmp_path):
    frame = stores_table(stores=3, products=2, weeks=10)
    write_owner_files(frame, tmp_path, owners=["0", "2"])
    assert [p.stem for p in list_owner_files(tmp_path)] == ["0", "2"]
    fewer = frame[(frame[C.store_id] != "0") | (frame[C.product_id] == "0")]
    write_owner_files(fewer, tmp_path, owners=["0"])
    assert len(read_owner(tmp_path / "0.parquet")) == 10
    assert len(read_owner(tmp_path / "2.parquet")) == 20
    with pytest.raises(ValueError, match="no rows for owner"):
        write_owner_files(frame, tmp_path, owners=["7"])


def test_a_file_mixing_owners_is_refused(tmp_path):
    stores_table(stores=2, products=1, weeks=4).to_parquet(tmp_path / "mixed.parquet")
    with pytest.raises(ValueError, match="one owner's rows, found 2"):
        read_owner(tmp_path / "mixed.parquet")


def test_owner_names_become_safe_file_names(tmp_path):
    assert owner_file(tmp_path, "north/east 1").name == "north_east_1.parquet"
    with pytest.raises(ValueError):
        owner_file(tmp_path, "..")
    assert list_owner_files(tmp_path / "absent") == []


def test_owners_live_under_home_unless_set(tmp_path):
    assert Settings(home=tmp_path).owners_dir == tmp_path.resolve() / "federated" / "owners"
    assert Settings(home=tmp_path, federated_owners_dir=tmp_path / "sites").owners_dir == tmp_path / "sites"


def test_cli_writes_dominicks_stores_as_owners(tmp_path, monkeypatch):
    from benchmarks.runner import datasets_dir
    from edge.cli import app
    from omnicart.datasets import dominicks

    root = datasets_dir() / dominicks.NAME
    if not dominicks.available(root):
        pytest.skip(f"{dominicks.NAME} is not in {root}")
    monkeypatch.setenv("OMNICART_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["federated", "owners", "--dataset", dominicks.NAME, "--stores", "3"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    files = list_owner_files(tmp_path / "federated" / "owners")
    assert [p.stem for p in files] == ["5", "8", "9"]  # the first three stores by number
    for path in files:
        rows = read_owner(path)
        assert set(rows[C.store_id]) == {path.stem}
        assert (rows[C.price] > 0.2).all() and (rows[C.units] > 0).all()
        assert rows[C.period].min() >= dominicks.WEEK_ONE


def test_cli_refuses_other_datasets():
    from edge.cli import app

    result = CliRunner().invoke(app, ["federated", "owners", "--dataset", "online_retail_ii"])
    assert result.exit_code == 2
    assert "dominicks_beer only" in result.output
