"""ingest_omnichannel and materialize_features run by Airflow on a small simulated shop: per-channel counts, asset
events, idempotent re-runs (dag.test), a backfill from the Airflow CLI run by a real scheduler that equals the daily
runs, and no raw PII anywhere afterwards (lake, Feast, MLflow after training, Airflow's logs)."""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import re
import shutil
import sqlite3
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from edge import orchestration
from omnicart import lake, schemas
from omnicart.assets import DAY_KEY, lake_uri
from omnicart.ingest.channels import LANDING_CHANNELS
from omnicart.schemas import C, F
from omnicart.settings import Settings, get_settings
from tests.integration.conftest import (
    asset_events,
    backfill_cli,
    backfill_runs,
    queued_by_the_scheduler,
    scheduler,
    settings_env,
    unpaused,
    xcom_return,
)

pytestmark = pytest.mark.integration

N_DAYS = 3
TRAINED_FAMILY = "recommend"  # trained on the customers' events before the PII scan, so MLflow holds what it saw


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
    with settings_env(env, unset=("OMNICART_DRIFT_DAY",)):
        s = get_settings()
        days = [s.sim_start + dt.timedelta(days=n) for n in range(N_DAYS)]
        runs, started = {}, time.perf_counter()
        for day in days:
            runs[("ingest_omnichannel", day)] = _run("ingest_omnichannel", day)
            runs[("materialize_features", day)] = _run("materialize_features", day)
        yield Omni(s, days, runs, {"daily_runs": round(time.perf_counter() - started, 1)})


def _digests(s: Settings) -> dict[str, str]:
    """sha256 of every lake and landing partition file."""
    return {
        str(p.relative_to(s.home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in (s.lake_dir, s.landing_dir)
        for p in sorted(root.rglob(lake.PART_FILE))
    }


def test_every_channel_task_accounts_for_its_rows(omni):
    run = omni.runs[("ingest_omnichannel", omni.days[0])]
    assert set(orchestration.task_states(run).values()) == {"success"}
    for channel, table in LANDING_CHANNELS.items():
        counts = xcom_return(run, f"ingest_{channel}")
        assert counts["table"] == table and counts["day"] == omni.days[0].isoformat()
        assert counts["rows_in"] == counts["kept"] + counts["quarantined"] > 0, channel
        kept = lake.read_table(omni.settings.lake_dir, table, omni.days[0], omni.days[0])
        assert len(kept) == counts["kept"], channel
    assert xcom_return(run, "resolve_identities")["customers"] > 100
    states = orchestration.task_states(omni.runs[("materialize_features", omni.days[-1])])
    assert set(states.values()) == {"success"}, states


def test_ingest_emits_an_asset_event_per_lake_table_with_its_day(omni):
    days_by_uri: dict[str, set[str]] = {}
    for event in asset_events("ingest_omnichannel"):
        days_by_uri.setdefault(event["uri"], set()).add((event["extra"] or {}).get(DAY_KEY))
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


# --- a backfill from Airflow's CLI, run by Airflow's scheduler ---------------------------------------------------
def _drop_days(root: Path, days: list[dt.date]) -> int:
    """Remove every table's partitions of ``days`` under ``root``; how many there were."""
    doomed = [p for d in days for p in root.glob(f"*/{C.dt}={d.isoformat()}")]
    for path in doomed:
        shutil.rmtree(path)
    return len(doomed)


def test_backfill_from_the_cli_by_the_scheduler_equals_the_daily_runs(omni, platform, tmp_path):
    """`airflow backfill create` over the last two days, executed by a real scheduler, rebuilds their landing files
    and lake partitions; materialize_features then runs once for those days. Everything equals the daily runs."""
    s = omni.settings
    daily = _digests(s)
    redone = omni.days[1:]
    logical = [d + dt.timedelta(days=1) for d in redone]  # a run at midnight processes the day before
    assert _drop_days(s.landing_dir, redone) >= 5 and _drop_days(s.lake_dir, redone) >= 10
    started = time.perf_counter()
    with unpaused("ingest_omnichannel"):  # a paused DAG's backfill runs wait
        # queues the runs; SQLite takes one writer at a time, so before the scheduler starts
        backfill_cli("ingest_omnichannel", logical[0], logical[-1])
        with scheduler(platform.settings, tmp_path) as components:
            omni.seconds["scheduler_start"] = round(time.perf_counter() - started, 1)
            runs = backfill_runs("ingest_omnichannel", 240, components, tmp_path)
    omni.seconds["backfill_by_scheduler"] = round(time.perf_counter() - started, 1)

    assert [r.logical_date.date() for r in runs] == logical
    task_logs = platform.settings.airflow_home / "logs" / "dag_id=ingest_omnichannel"
    for run in runs:
        assert (str(run.run_type), str(run.state)) == ("backfill", "success"), run
        states = queued_by_the_scheduler(run)
        assert states == dict.fromkeys(orchestration.task_states(run), "success"), (run.run_id, states)
        assert len(list(task_logs.glob(f"run_id={run.run_id}/*/*.log"))) >= len(states)  # each task logged to a file
    started = time.perf_counter()
    _run(
        "materialize_features",
        redone[-1],
        conf={"first_day": redone[0].isoformat(), "last_day": redone[-1].isoformat()},
    )
    omni.seconds["backfill_materialize"] = round(time.perf_counter() - started, 1)
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
    """The readable content of a file: Parquet decoded (its pages are compressed), gzip and zip archives (MLflow and
    torch artefacts may be either) unpacked, anything else (SQLite databases, logs, pickles) as its bytes."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        yield table.to_pandas().to_json(orient="records", default_handler=str)
        return
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield archive.read(member).decode("latin-1")
    yield data.decode("latin-1")


def _scan(roots: list[Path], needles: set[str], skip: tuple[Path, ...]) -> tuple[dict[str, list[str]], list[Path]]:
    """Files under ``roots`` (``skip`` aside) holding any needle, case-insensitively; and every file read."""
    hits: dict[str, list[str]] = {}
    lowered = {n.lower() for n in needles}
    read = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            if any(path.is_relative_to(k) for k in skip):
                continue
            read.append(path)
            for text in _texts(path):
                low = text.lower()
                found = [n for n in lowered if n in low]
                if found:
                    hits.setdefault(str(path), []).extend(found[:3])
    return hits, read


def _plant_controls(s: Settings, airflow_home: Path, email: str, phone: str) -> list[Path]:
    """Positive controls: a raw email or phone of the input in a scratch file of each kind the scan must read, in
    each store it covers (MLflow artefacts gzipped, a zipped one, a lake Parquet table, a SQLite DB beside Feast's,
    an Airflow log). The scan must find exactly these."""
    controls = [s.mlflow_artifacts / "pii-control.json.gz", s.mlflow_artifacts / "pii-control.zip"]
    controls[0].write_bytes(gzip.compress(json.dumps({"contact": email}).encode()))
    with zipfile.ZipFile(controls[1], "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("note.txt", f"call {phone}")
    controls.append(lake.write_partition(s.lake_dir, "pii_control", dt.date(2026, 1, 1), pd.DataFrame({"v": [email]})))
    controls.append(s.feast_dir / "pii-control.db")
    with contextlib.closing(sqlite3.connect(controls[-1])) as db, db:
        db.execute("create table t (v text)")
        db.execute("insert into t values (?)", (phone,))
    controls.append(airflow_home / "logs" / "pii-control.log")
    controls[-1].parent.mkdir(parents=True, exist_ok=True)
    controls[-1].write_text(f"[info] customer {email} wrote in\n")
    return controls


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
    from training.run import train_family

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
    # the platform trains on what it ingested: MLflow gets a run, a registered version and the model's artefacts
    started = time.perf_counter()
    outcome = train_family(s, TRAINED_FAMILY, day)
    omni.seconds[f"train_{TRAINED_FAMILY}"] = round(time.perf_counter() - started, 1)
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
    mlflow_db, artifacts = s.home_dir / "mlflow.db", s.mlflow_artifacts
    assert outcome.version and mlflow_db.is_file() and len(list(artifacts.rglob("MLmodel"))) >= 1
    assert (s.feast_dir / "online.db").is_file() and lake.partitions(s.lake_dir, schemas.CUSTOMER_CHANNEL_FEATURES)
    airflow_home = platform.settings.airflow_home  # its metadata DB (XComs, rendered fields) and the tasks' logs
    # lake (Feast's offline tables too), Feast's registry and online store, mlflow.db, mlartifacts, Ray's results
    roots = [s.home_dir, airflow_home]
    skip = (s.landing_dir, s.home_dir / "secrets", s.ground_truth_dir)  # the raw input itself, and the key
    assert _scan([s.landing_dir / schemas.CUSTOMERS], needles, ())[0], "the scan finds raw data where it is"
    email, phone = "leaky.person@pii-test.example", "+44 7000 111222"
    controls = _plant_controls(s, airflow_home, email, phone)
    try:
        started = time.perf_counter()
        hits, read = _scan(roots, needles, skip)
        omni.seconds["pii_scan"] = round(time.perf_counter() - started, 1)
    finally:
        for control in controls:
            control.unlink()
        shutil.rmtree(s.lake_dir / "pii_control")
    assert set(hits) == {str(c) for c in controls}, f"raw personal data found: {hits}"
    # ... and it read every store: MLflow's tracking DB and model files, Feast's online store, Airflow's DB and logs
    assert {mlflow_db, s.feast_dir / "online.db", airflow_home / "airflow.db"} <= set(read)
    assert any(p.name == "MLmodel" and p.is_relative_to(artifacts) for p in read)
    stores = {"lake": s.lake_dir, "feast": s.feast_dir, "mlartifacts": artifacts, "ray_results": s.ray_storage}
    stores["airflow task logs"] = airflow_home / "logs"
    counts = {name: sum(p.is_relative_to(root) and p not in controls for p in read) for name, root in stores.items()}
    backfilled = "backfill_by_scheduler" in omni.seconds  # the scheduler's tasks write log files; dag.test's none
    assert all(n > 0 for name, n in counts.items() if backfilled or name != "airflow task logs"), counts
    if backfilled:
        assert counts["airflow task logs"] >= 2 * (len(LANDING_CHANNELS) + 2), counts  # two runs of 8 tasks
    found_in_output = [n for n in needles if n.lower() in logged.lower()]
    assert found_in_output == [], found_in_output
    print(f"\nPII scan: {len(needles)} raw values, {len(read)} files read, of which {counts}")
    print(f"omnichannel integration timings (s): {omni.seconds}")
