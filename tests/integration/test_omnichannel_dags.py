"""ingest_omnichannel and materialize_features run by Airflow (dag.test) on a small simulated shop: per-channel
counts, asset events, idempotent re-runs, a backfill equal to the daily runs, and no raw PII anywhere afterwards."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from omnicart import lake, orchestration, schemas
from omnicart.assets import DAY_KEY, lake_uri
from omnicart.ingest.channels import LANDING_CHANNELS
from omnicart.schemas import C, F
from omnicart.settings import Settings, get_settings

pytestmark = pytest.mark.integration

N_DAYS = 3


@dataclass
class Omni:
    settings: Settings
    days: list[dt.date]
    runs: dict[tuple[str, dt.date], object]
    seconds: dict[str, float] = field(default_factory=dict)


def _run(dag_id: str, day: dt.date, conf: dict | None = None):
    run = orchestration.run_dag(dag_id, day, conf=conf)
    assert str(run.state) == "success", (dag_id, day, orchestration.task_states(run))
    return run


@pytest.fixture(scope="module")
def omni(platform, tmp_path_factory):
    """Its own home (the platform's Airflow DB): three days, each ingested then materialised, as the schedule would."""
    home = tmp_path_factory.mktemp("omnichannel-home")
    env = {
        "OMNICART_HOME": str(home),
        "OMNICART_SIM_CUSTOMERS": "150",
        "OMNICART_SIM_ITEMS": "20",
        "OMNICART_SIM_DAYS": str(N_DAYS + 2),
        "OMNICART_DRIFT_KIND": "none",
    }
    saved = {k: os.environ.get(k) for k in [*env, "OMNICART_DRIFT_DAY"]}
    os.environ.update(env)
    os.environ.pop("OMNICART_DRIFT_DAY", None)
    get_settings.cache_clear()
    try:
        s = get_settings()
        days = [s.sim_start + dt.timedelta(days=n) for n in range(N_DAYS)]
        runs, started = {}, time.perf_counter()
        for day in days:
            runs[("ingest_omnichannel", day)] = _run("ingest_omnichannel", day)
            runs[("materialize_features", day)] = _run("materialize_features", day)
        yield Omni(s, days, runs, {"daily_runs": round(time.perf_counter() - started, 1)})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def _digests(s: Settings) -> dict[str, str]:
    """sha256 of every lake and landing partition file."""
    return {
        str(p.relative_to(s.home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in (s.lake_dir, s.landing_dir)
        for p in sorted(root.rglob(lake.PART_FILE))
    }


def _xcom(run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        )
    return json.loads(value) if isinstance(value, str) else value


def test_every_channel_task_accounts_for_its_rows(omni):
    run = omni.runs[("ingest_omnichannel", omni.days[0])]
    assert set(orchestration.task_states(run).values()) == {"success"}
    for channel, table in LANDING_CHANNELS.items():
        counts = _xcom(run, f"ingest_{channel}")
        assert counts["table"] == table and counts["day"] == omni.days[0].isoformat()
        assert counts["rows_in"] == counts["kept"] + counts["quarantined"] > 0, channel
        kept = lake.read_table(omni.settings.lake_dir, table, omni.days[0], omni.days[0])
        assert len(kept) == counts["kept"], channel
    assert _xcom(run, "resolve_identities")["customers"] > 100
    states = orchestration.task_states(omni.runs[("materialize_features", omni.days[-1])])
    assert set(states.values()) == {"success"}, states


def test_ingest_emits_an_asset_event_per_lake_table_with_its_day(omni):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.uri, AssetEvent.extra)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_dag_id == "ingest_omnichannel")
        ).all()
    days_by_uri: dict[str, set[str]] = {}
    for uri, extra in rows:
        days_by_uri.setdefault(uri, set()).add((extra or {}).get(DAY_KEY))
    for table in (*LANDING_CHANNELS.values(), schemas.QUARANTINE, schemas.IDENTITY_MAP):
        assert {d.isoformat() for d in omni.days} <= days_by_uri[lake_uri(table)], table


def test_rerunning_a_past_day_changes_nothing(omni):
    s = omni.settings
    before = _digests(s)
    assert len(before) >= 50
    started = time.perf_counter()
    _run("ingest_omnichannel", omni.days[1])
    _run("materialize_features", omni.days[1])
    omni.seconds["rerun_one_day"] = round(time.perf_counter() - started, 1)
    assert _digests(s) == before
    # and the online store still holds the newest day, not the re-run one
    from omnicart.featurestore import feature_store, online_features

    newest = lake.read_table(s.lake_dir, schemas.CUSTOMER_CHANNEL_FEATURES, omni.days[-1], omni.days[-1])
    row = newest[(newest[C.channel] == schemas.ALL_CHANNELS) & newest[F.recency_days].notna()].iloc[0]
    ref = f"{F.customer_channel_view}:{F.recency_days}"
    store = feature_store(s)
    online = store.get_online_features(
        features=[ref], entity_rows=[{C.customer_id: row[C.customer_id], C.channel: schemas.ALL_CHANNELS}]
    ).to_dict()
    assert online[F.recency_days][0] == pytest.approx(row[F.recency_days])
    assert online_features(store, [f"{F.item_text_view}:{F.text_embedding}"], C.item_id, ["I00001"])[0][
        F.text_embedding
    ], "the catalog's vectors, written on day 0, stay online"


def _dry_run_dates(s: Settings, first: dt.date, last: dt.date) -> list[dt.date]:
    """The logical dates `airflow backfill create --dry-run` plans for ingest_omnichannel over [first, last]."""
    airflow = Path(sys.executable).with_name("airflow")
    command = [
        str(airflow),
        "backfill",
        "create",
        "--dag-id",
        "ingest_omnichannel",
        "--from-date",
        first.isoformat(),
        "--to-date",
        last.isoformat(),
        "--reprocess-behavior",
        "completed",
        "--dry-run",
    ]
    out = subprocess.run(command, env=os.environ.copy(), capture_output=True, text=True, timeout=120, check=True)
    found = re.findall(r"^\|\s*(\d{4}-\d{2}-\d{2}) 00:00:00\+00:00\s*\|", out.stdout, flags=re.M)
    return [dt.date.fromisoformat(d) for d in found]


def test_backfill_equals_the_daily_runs(omni):
    """The CLI plans the range (dry run); its runs are then executed as the scheduler would, oldest first, with
    dag.test (no scheduler here), and materialize_features runs once for the days their asset events name."""
    s = omni.settings
    daily = _digests(s)
    logical = [d + dt.timedelta(days=1) for d in omni.days]  # a run at midnight processes the day before
    started = time.perf_counter()
    planned = _dry_run_dates(s, logical[0], logical[-1])
    omni.seconds["backfill_dry_run_cli"] = round(time.perf_counter() - started, 1)
    assert planned == logical
    for path in (s.lake_dir, s.landing_dir, s.feast_dir):
        shutil.rmtree(path)
    started = time.perf_counter()
    for when in planned:
        _run("ingest_omnichannel", when - dt.timedelta(days=1))
    days = {"first_day": omni.days[0].isoformat(), "last_day": omni.days[-1].isoformat()}
    _run("materialize_features", omni.days[-1], conf=days)
    omni.seconds["backfill_runs"] = round(time.perf_counter() - started, 1)
    assert _digests(s) == daily


# --- no raw personal data anywhere after the pipeline ------------------------------------------------------------
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w])\+?\d[\d ()-]{6,}\d(?![\w])")  # as omnicart.privacy.pseudonymise scrubs them


def _raw_pii(s: Settings) -> set[str]:
    """Every email and phone number the landing area (the pipeline's input) holds, as written and normalised."""
    found: set[str] = set()
    for table in (schemas.CUSTOMERS, schemas.IDENTITIES, schemas.EVENTS, schemas.SUPPORT):
        frame = lake.read_table(s.landing_dir, table)
        for column in (C.email, C.phone):
            if column in frame.columns:
                found |= set(frame[column].dropna().astype(str))
        if C.identifier in frame.columns:
            service = frame[frame[C.channel].map(schemas.CHANNEL_IDENTIFIER) == C.email]
            found |= set(service[C.identifier].dropna().astype(str))
        for column in (C.question, C.answer):
            if column in frame.columns:
                for text in frame[column].dropna():
                    found |= set(_EMAIL.findall(text)) | set(_PHONE.findall(text))
    normalised = {v.strip().lower() for v in found} | {re.sub(r"[^\d+]", "", v) for v in found if _PHONE.fullmatch(v)}
    return {v for v in found | normalised if len(v) >= 7}


def _texts(path: Path):
    """The readable content of a file: Parquet decoded (its pages are compressed), anything else as bytes."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        yield table.to_pandas().to_json(orient="records", default_handler=str)
        return
    data = path.read_bytes()
    yield data.decode("latin-1")


def _scan(roots: list[Path], needles: set[str], skip: tuple[Path, ...]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            if any(path.is_relative_to(k) for k in skip):
                continue
            for text in _texts(path):
                low = text.lower()
                found = [n for n in needles if n.lower() in low]
                if found:
                    hits[str(path)] = found[:3]
    return hits


def _plant_bad_rows(s: Settings, day: dt.date) -> int:
    """Rows that must be quarantined, carrying raw personal data: the quarantine must hold only their tokens."""
    crm = lake.read_table(s.landing_dir, schemas.CUSTOMERS, day, day)
    bad_crm = pd.DataFrame(
        [
            {
                C.customer_id: "C999001",
                C.email: "leaky.person@pii-test.example",
                C.phone: "+44 7000 111222",
                C.name: "Leaky Person",
                C.signup_date: "not-a-date",
                C.event_timestamp: pd.Timestamp(day, tz="UTC"),
            }
        ]
    )
    lake.write_partition(s.landing_dir, schemas.CUSTOMERS, day, pd.concat([crm, bad_crm], ignore_index=True))
    events = lake.read_table(s.landing_dir, schemas.EVENTS, day, day)
    bad_event = events.iloc[:1].assign(
        **{
            C.event_id: "E-BAD-1",
            C.customer_id: None,
            C.channel: "service",
            C.identifier: "leaky.person@pii-test.example",
            C.item_id: "NO-SUCH-ITEM",
        }
    )
    lake.write_partition(s.landing_dir, schemas.EVENTS, day, pd.concat([events, bad_event], ignore_index=True))
    return 2


def test_no_raw_pii_in_lake_feast_mlflow_or_logs(omni, platform, capfd, caplog):
    from omnicart.ingest.daily import land_simulated_day
    from omnicart.realtime import push_event

    caplog.set_level(logging.INFO, logger="omnicart")  # task logs reach pytest's handler or the process's streams
    s = omni.settings
    day = omni.days[-1] + dt.timedelta(days=1)
    land_simulated_day(s, day)
    planted = _plant_bad_rows(s, day)
    capfd.readouterr()
    started = time.perf_counter()
    _run("ingest_omnichannel", day, conf={"simulate": False})  # ingest what landed, bad rows included
    _run("materialize_features", day)
    omni.seconds["pii_day_runs"] = round(time.perf_counter() - started, 1)
    crm = lake.read_table(s.landing_dir, schemas.CUSTOMERS, omni.days[0], omni.days[0])
    emails = crm[C.email].dropna().head(5)
    pushed = [
        push_event(s, {"channel": "service", "event_type": "view", "item_id": "I00002", "identifier": e})
        for e in emails
    ]
    assert any(p.pushed for p in pushed)  # a raw email in, resolved through its token
    output = capfd.readouterr()
    logged = output.out + output.err + caplog.text

    for channel, table in LANDING_CHANNELS.items():  # each task logged its counts
        match = re.search(rf"{channel} {day} -> lake/{table}: rows in (\d+), kept (\d+), quarantined (\d+)", logged)
        assert match, channel
        rows_in, kept, quarantined = map(int, match.groups())
        assert rows_in == kept + quarantined
    quarantine = lake.read_table(s.lake_dir, schemas.QUARANTINE, day, day)
    assert len(quarantine) >= planted and quarantine[C.record].str.contains("tok_").any()

    needles = _raw_pii(s)
    assert {"leaky.person@pii-test.example", "+44 7000 111222", "+447000111222"} <= needles
    assert len(needles) > 200
    assert (s.feast_dir / "online.db").is_file() and lake.partitions(s.lake_dir, schemas.CUSTOMER_CHANNEL_FEATURES)
    roots = [s.home, platform.settings.airflow_home]  # lake (Feast's offline tables too), Feast, any MLflow, logs
    roots += [p for p in (platform.settings.mlflow_artifacts, platform.settings.home_dir / "mlflow.db") if p.exists()]
    skip = (s.landing_dir, s.home / "secrets", s.ground_truth_dir)  # the raw input itself, and the key
    assert _scan([s.landing_dir / schemas.CUSTOMERS], needles, ()), "the scan finds raw data where it is"
    hits = _scan(roots, needles, skip)
    assert hits == {}, f"raw personal data found: {hits}"
    found_in_output = [n for n in needles if n.lower() in logged.lower()]
    assert found_in_output == [], found_in_output
    print(f"\nomnichannel integration timings (s): {omni.seconds}")
