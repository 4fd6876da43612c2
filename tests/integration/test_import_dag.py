"""import_data run by Airflow (dag.test): the importer as a task, the same lake as `omnicart import`, asset events
that make the scheduler start materialize_features, and a malformed file that fails the task and writes nothing."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from edge import orchestration
from omnicart import lake, schemas
from omnicart.assets import DAY_KEY, IMPORT_URI, LAST_DAY_KEY, lake_uri
from omnicart.ingest.importer import default_data_root
from omnicart.schemas import C
from omnicart.settings import Settings, get_settings
from tests.integration.conftest import asset_events, dags_due_on_assets, settings_env, unpaused, xcom_return

pytestmark = pytest.mark.integration

MAPPING = orchestration.project_dir() / "infra" / "mappings" / "online_retail_ii.yaml"
DATASET = default_data_root() / "online_retail_ii"
KEY = "import-dag-test-key"  # one pseudonym key for every home here, so the DAG's and the CLI's lakes compare

# Invoice lines in the layout (columns and Parquet types) of UCI Online Retail II: its first lines (country
# shortened), its first cancellation, a postage line, a stock adjustment and an exact duplicate, which the mapping
# must each handle.
COLUMNS = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
LINES = [
    ("489434", "85048", "15CM CHRISTMAS GLASS BALL 20 LIGHTS", 12, "2009-12-01 07:45:00", 6.95, 13085.0, "UK"),
    ("489434", "79323P", "PINK CHERRY LIGHTS", 12, "2009-12-01 07:45:00", 6.75, 13085.0, "UK"),
    ("489435", "22350", "CAT BOWL", 12, "2009-12-01 07:46:00", 2.55, 13085.0, "UK"),
    ("489436", "POST", "POSTAGE", 1, "2009-12-01 09:06:00", 18.0, 13078.0, "UK"),
    ("C489449", "22087", "PAPER BUNTING WHITE LACE", -12, "2009-12-01 10:33:00", 2.95, 16321.0, "Australia"),
    ("489464", "21733", "85123a mixed", -96, "2009-12-01 10:52:00", 0.0, None, "UK"),
    ("489435", "22350", "CAT BOWL", 12, "2009-12-01 07:46:00", 2.55, 13085.0, "UK"),
    ("489520", "21523", "FANCY FONT HOME SWEET HOME DOORMAT", 10, "2009-12-02 11:02:00", 5.95, 14911.0, "EIRE"),
]


@pytest.fixture(scope="module", autouse=True)
def _materialize_unpaused(platform):
    """materialize_features unpaused (DAGs start paused here), so asset events queue it as they would in production."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "dags", "reserialize"], env=os.environ.copy(), capture_output=True, check=True)
    with unpaused("materialize_features"):
        yield


@contextlib.contextmanager
def _home(path: Path) -> Iterator[Settings]:
    """The settings of a platform home at ``path`` (its own lake), as the DAG's tasks will read them."""
    env = {"OMNICART_HOME": str(path), "OMNICART_PSEUDONYM_KEY": KEY}
    with settings_env(env):
        yield get_settings()


def _sample(path: Path) -> Path:
    pd.DataFrame(LINES, columns=COLUMNS).to_parquet(path, index=False)
    return path


def _digests(s: Settings) -> dict[str, str]:
    return {
        str(p.relative_to(s.lake_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(s.lake_dir.rglob(lake.PART_FILE))
    }


def _report(run) -> dict:
    return xcom_return(run, "import_mapping")


def _events_of(run) -> dict[str, dict]:
    """Asset URI → extra of each asset event the run emitted."""
    return {e["uri"]: e["extra"] for e in asset_events(run.dag_id, run.run_id)}


def _import(day: dt.date, **conf):
    return orchestration.run_dag("import_data", day, conf=conf)


def test_a_real_format_file_through_the_task(tmp_path, caplog, capfd):
    caplog.set_level(logging.INFO, logger="omnicart")
    with _home(tmp_path / "home") as s:
        run = _import(dt.date(2026, 2, 1), source_path=str(_sample(tmp_path / "invoices.parquet")))
        assert str(run.state) == "success", orchestration.task_states(run)
        report = _report(run)
        events = lake.read_table(s.lake_dir, schemas.EVENTS)
        items = lake.read_table(s.lake_dir, schemas.ITEMS)

    assert (report["rows_in"], report["kept"]) == (8, 5)
    assert report["quarantined"] == {"filtered": 2, "duplicate": 1}  # postage, stock adjustment; the repeated line
    assert report["spans"][schemas.EVENTS] == ["2009-12-01", "2009-12-02"]
    assert len(events) == 5 and sorted(events[C.event_type]) == ["purchase"] * 4 + ["return"]
    assert set(items[C.item_id]) == set(events[C.item_id])  # the catalog derived from the kept lines
    output = capfd.readouterr()
    logged = caplog.text + output.out + output.err
    counted = re.search(r"invoice_lines: 8 rows in, 5 kept, 3 quarantined \{'(filtered|duplicate)'", logged)
    assert counted, logged[-2000:]

    # asset events: every lake table written through the alias, with its days, and the import asset
    emitted = _events_of(run)
    assert emitted[lake_uri(schemas.EVENTS)][DAY_KEY] == "2009-12-01"
    assert emitted[lake_uri(schemas.EVENTS)][LAST_DAY_KEY] == "2009-12-02"
    assert {lake_uri(schemas.ITEMS), lake_uri(schemas.QUARANTINE)} <= set(emitted)
    assert lake_uri(schemas.CUSTOMERS) not in emitted  # this mapping writes no customers
    assert emitted[IMPORT_URI] == {DAY_KEY: "2009-12-01", LAST_DAY_KEY: "2009-12-02", "mapping": "online_retail_ii"}

    # the scheduler's own test: materialize_features is due (the import asset satisfies its condition)
    assert "materialize_features" in dags_due_on_assets()


def test_the_task_writes_the_lake_the_cli_writes(tmp_path):
    if not DATASET.is_dir():
        pytest.skip(f"dataset online_retail_ii not found at {DATASET} (it lives in ../shared/datasets)")
    limit = 8000  # its first three days
    with _home(tmp_path / "dag") as s:
        run = _import(dt.date(2026, 2, 2), mapping=str(MAPPING.relative_to(orchestration.project_dir())), limit=limit)
        assert str(run.state) == "success", orchestration.task_states(run)
        report = _report(run)
        from_dag = _digests(s)
    cli = Path(sys.executable).with_name("omnicart")
    env = {**os.environ, "OMNICART_HOME": str(tmp_path / "cli"), "OMNICART_PSEUDONYM_KEY": KEY}
    done = subprocess.run(
        [str(cli), "import", "--mapping", str(MAPPING), "--limit", str(limit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = re.search(r"invoice_lines: ([\d,]+) rows in, ([\d,]+) kept, ([\d,]+) quarantined", done.stdout)
    assert printed, done.stdout
    assert [int(g.replace(",", "")) for g in printed.groups()] == [
        report["rows_in"],
        report["kept"],
        sum(report["quarantined"].values()),
    ]
    assert report["rows_in"] == limit and report["kept"] > 0.9 * limit
    with _home(tmp_path / "cli") as s:
        from_cli = _digests(s)
    assert len(from_dag) >= 3 * 3 and from_dag == from_cli  # byte for byte: one code path


def test_a_malformed_file_fails_the_task_and_leaves_the_lake_untouched(tmp_path, caplog, capfd):
    caplog.set_level(logging.INFO)
    sample = _sample(tmp_path / "invoices.parquet")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(sample.read_bytes()[: sample.stat().st_size // 2])  # an upload cut short
    with _home(tmp_path / "home") as s:
        assert str(_import(dt.date(2026, 2, 3), source_path=str(sample)).state) == "success"
        before = _digests(s)
        capfd.readouterr()
        run = _import(dt.date(2026, 2, 4), source_path=str(truncated))
        assert str(run.state) == "failed"
        assert orchestration.task_states(run) == {"import_mapping": "failed"}  # no retry: the input is at fault
        assert _digests(s) == before and len(before) >= 3
        assert _events_of(run) == {}
    output = capfd.readouterr()
    logged = caplog.text + output.out + output.err
    assert "import failed, nothing written" in logged and "unreadable Parquet" in logged and "truncated" in logged
