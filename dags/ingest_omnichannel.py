"""Daily omnichannel ingest: each channel's landing file into the lake, validated and pseudonymised, then identities."""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Asset, Param, dag, task

from omnicart import schemas
from omnicart.assets import DAY_KEY, lake_asset_name, lake_uri
from omnicart.ingest.channels import LANDING_CHANNELS

DOC = """
### ingest_omnichannel
For the day that ended at the data interval's end (the run of logical date 2026-01-06 ingests 2026-01-05):

1. `land`: when `simulate` is on (the default, for the demo), the shop simulator writes the day's channel files into
   the landing area, as the shop's export jobs would; off, the files already landed are ingested.
2. one `ingest_<channel>` task per landing file (catalog first: the other feeds' item ids are checked against it):
   read → pseudonymise personal data → validate → write kept rows to the day's lake partition and rejects to the
   quarantine. Each task logs and returns rows in / kept / quarantined (by reason).
3. `resolve_identities`: one stable customer id across channels; writes the day's identity map.
4. `report_channels`: the day's buying customers, orders and revenue per channel, released with differential
   privacy (ε from the day's budget in `<home>/privacy/dp_budget.json`) into `<home>/reports/channels/<day>.json`;
   released once, so a re-run returns the same report.

Every task replaces its day's partitions, so a re-run or a backfill (`airflow backfill create --dag-id
ingest_omnichannel --from-date ... --to-date ...`) equals the daily runs. Each lake table is an Asset; updating them
triggers `materialize_features`, and every asset event carries the day it wrote (`extra.day`).
"""

DEFAULT_ARGS = {"owner": "data-platform", "retries": 1, "retry_delay": dt.timedelta(minutes=1)}


def _asset(table: str) -> Asset:
    return Asset(uri=lake_uri(table), name=lake_asset_name(table), group="omnicart-lake")


QUARANTINE = _asset(schemas.QUARANTINE)
IDENTITY_MAP = _asset(schemas.IDENTITY_MAP)


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


def _day(data_interval_end) -> dt.date:
    """The run ingests the day that ended at its data interval's end (a run at midnight of the 6th: the 5th)."""
    return (data_interval_end - dt.timedelta(microseconds=1)).date()


def _ingest_task(channel: str, table: str):
    lake_asset = _asset(table)

    @task(task_id=f"ingest_{channel}", outlets=[lake_asset, QUARANTINE])
    def ingest(landed: dict, outlet_events=None) -> dict:
        from omnicart.ingest.channels import ingest_landed_channel

        counts = ingest_landed_channel(_settings(), dt.date.fromisoformat(landed["day"]), channel)
        for asset in (lake_asset, QUARANTINE):
            outlet_events[asset].extra = {DAY_KEY: landed["day"], "channel": channel}
        return counts

    return ingest


@dag(
    dag_id="ingest_omnichannel",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["omnicart", "ingest", "privacy", "customer-data"],
    doc_md=DOC,
    params={
        "simulate": Param(
            True,
            type="boolean",
            description="Land the day from the shop simulator first (demo). Off: ingest the files already landed.",
        )
    },
)
def ingest_omnichannel():
    @task
    def land(data_interval_end=None, params=None) -> dict:
        day = _day(data_interval_end)
        if not params["simulate"]:
            return {"day": day.isoformat(), "simulated": False}
        from omnicart.ingest.daily import land_simulated_day

        return {"day": day.isoformat(), "simulated": True, "rows": land_simulated_day(_settings(), day).rows}

    @task(outlets=[IDENTITY_MAP])
    def resolve_identities(landed: dict, outlet_events=None) -> dict:
        from omnicart.ingest.identity import resolve_day

        result = resolve_day(_settings(), dt.date.fromisoformat(landed["day"]))
        outlet_events[IDENTITY_MAP].extra = {DAY_KEY: landed["day"]}
        return {"day": landed["day"], "customers": result.n_customers, "shared_identifiers": len(result.shared)}

    @task
    def report_channels(identities: dict) -> str:
        from omnicart.privacy.reports import release_channel_report

        return str(release_channel_report(_settings(), dt.date.fromisoformat(identities["day"])))

    landed = land()
    previous = landed
    for channel, table in LANDING_CHANNELS.items():  # one after another: they share the day's quarantine partition
        ingested = _ingest_task(channel, table)(landed)
        previous >> ingested
        previous = ingested
    identities = resolve_identities(landed)
    previous >> identities
    report_channels(identities)


ingest_omnichannel()
