"""Bring your own data from Airflow: `omnicart import --mapping FILE` as a manually triggered task."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pendulum
from airflow.sdk import Asset, AssetAlias, Param, dag, task

from omnicart.assets import (
    DAY_KEY,
    FEATURE_INPUTS,
    IMPORT_ALIAS,
    IMPORT_ASSET_NAME,
    IMPORT_URI,
    LAST_DAY_KEY,
    lake_asset_name,
    lake_uri,
)

log = logging.getLogger("omnicart.dags.import_data")

DEFAULT_MAPPING = "infra/mappings/online_retail_ii.yaml"

DOC = """
### import_data
Triggered by hand (UI, API or `airflow dags trigger import_data --conf '{"mapping": "..."}'`); runs the very code of
`omnicart import --mapping FILE` (`omnicart/ingest/importer.py`):

`import_mapping` reads every file of the mapping (or only `source`; `source_path` replaces that source's file),
checks it as a whole, pseudonymises personal data, validates every row and writes the kept rows to the lake
partitions of the days they fall on and the rejects to the quarantine. It logs and returns rows in / kept /
quarantined by reason for each source. A malformed mapping or file fails the task (no retry) and writes nothing.

Each lake table written gets an asset event through the alias `omnicart_import`, naming the first and last day
written (`extra.day`, `extra.last_day`); the `omnicart://lake/import` event tells `materialize_features` to build
the features of those days. Relative paths: the mapping against the repository root, the mapping's own files
against `../shared/datasets`.
"""

DEFAULT_ARGS = {"owner": "data-platform", "retries": 1, "retry_delay": dt.timedelta(minutes=1)}

WRITTEN = AssetAlias(name=IMPORT_ALIAS, group="omnicart-lake")
IMPORTED = Asset(uri=IMPORT_URI, name=IMPORT_ASSET_NAME, group="omnicart-lake")


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


@dag(
    dag_id="import_data",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two imports at once would race on the same day partitions
    default_args=DEFAULT_ARGS,
    tags=["omnicart", "ingest", "privacy", "customer-data", "import"],
    doc_md=DOC,
    params={
        "mapping": Param(
            DEFAULT_MAPPING,
            type="string",
            minLength=1,
            description="YAML mapping onto the canonical tables (see infra/mappings/); relative to the repository.",
        ),
        "source": Param(
            None,
            type=["null", "string"],
            description="Import only this source of the mapping (by name); empty: all of them, in mapping order.",
        ),
        "source_path": Param(
            None,
            type=["null", "string"],
            description="A file to import instead of the source's own (the mapping's only source, or `source`).",
        ),
        "limit": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Read only the first N records of each file (a trial run); empty: every record.",
        ),
    },
)
def import_data():
    @task(outlets=[WRITTEN])
    def import_mapping(params=None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from omnicart.ingest import importer

        # dags/ sits in the repository root; an absolute path stays as it is
        mapping = Path(__file__).resolve().parents[1] / params["mapping"]
        try:
            report = importer.import_file(
                _settings(), mapping, params["source_path"], source=params["source"], limit=params["limit"]
            )
        except importer.INPUT_ERRORS as exc:  # the input is at fault: retrying cannot help
            raise AirflowFailException(f"import failed, nothing written: {exc}") from exc
        for line in importer.summary_lines(report):
            log.info("%s: %s", report.mapping, line)

        for table, (first, last) in report.spans.items():
            extra = {DAY_KEY: first.isoformat(), LAST_DAY_KEY: last.isoformat(), "mapping": report.mapping}
            asset = Asset(uri=lake_uri(table), name=lake_asset_name(table), group="omnicart-lake")
            outlet_events[WRITTEN].add(asset, extra=extra)
        inputs = [report.spans[t] for t in FEATURE_INPUTS if t in report.spans]
        if inputs:
            first, last = min(f for f, _ in inputs), max(la for _, la in inputs)
            extra = {DAY_KEY: first.isoformat(), LAST_DAY_KEY: last.isoformat(), "mapping": report.mapping}
            outlet_events[WRITTEN].add(IMPORTED, extra=extra)
        return report.to_dict()

    import_mapping()


import_data()
