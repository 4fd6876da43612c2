"""Erasure ("right to be forgotten"): remove one customer from every table, the feature store and future ingests.

The customer is found through identity resolution, so an erasure by email also removes the rows seen under their
phone, loyalty card, devices, cookies and social handle. Affected partitions are rewritten atomically through
``omnicart.lake`` (lake and landing area, including the quarantine and the Feast offline feature tables); the
Feast SQLite online store loses the customer's entity rows. The erasure log keeps tokens and counts only, never the
personal data, and doubles as a suppression list that ingest consults so a re-import cannot bring the customer back.
A marker lists the model families trained on the removed rows, for the retraining DAG.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from omnicart import lake, schemas
from omnicart.ingest.identity import latest_identity_map, links_from_tables, resolve
from omnicart.ingest.pipeline import pseudonymise_frame
from omnicart.ingest.validate import SUBJECT_COLUMNS
from omnicart.privacy import suppression
from omnicart.privacy.pseudonymise import token
from omnicart.schemas import C
from omnicart.settings import Settings

# Which model families learn from which tables (retrain them after an erasure touched the table).
TABLE_FAMILIES: dict[str, tuple[str, ...]] = {
    schemas.EVENTS: ("recommend", "pricing"),
    schemas.CUSTOMERS: ("recommend",),
    schemas.CUSTOMER_FEATURES: ("recommend",),
    schemas.CUSTOMER_CHANNEL_FEATURES: ("recommend", "pricing"),
    schemas.CUSTOMER_LAST_EVENT: ("recommend",),
    schemas.SUPPORT: ("support",),
}


@dataclass(frozen=True)
class ErasureReport:
    """What one erasure removed; holds tokens and counts only."""

    erasure_id: str
    subject: str  # the token the request was made with
    resolved_ids: list[str]
    identifiers: int  # tokens and customer ids erased
    rows_removed: dict[str, int] = field(default_factory=dict)  # "lake/<table>" or "landing/<table>" -> rows
    partitions_rewritten: int = 0
    online_rows_removed: int = 0
    retrain: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows_removed.values())


def marker_path(settings: Settings) -> Path:
    return suppression.log_path(settings).with_name("retrain_required.json")


def erase(
    settings: Settings,
    *,
    email: str | None = None,
    phone: str | None = None,
    customer_id: str | None = None,
    online: bool = True,
) -> ErasureReport:
    """Erase a customer, named by any one of email, phone or customer id, everywhere the platform keeps data."""
    if not any((email, phone, customer_id)):
        raise ValueError("name the customer by email, phone or customer_id")
    key = settings.secret("pseudonym_key")
    subject: list[tuple[str, str]] = []
    if email:
        subject.append((C.email, token(key, C.email, email)))
    if phone:
        subject.append((C.phone, token(key, C.phone, phone)))
    if customer_id:
        subject.append((C.customer_id, str(customer_id)))

    resolved_ids, members = _resolve_subject(settings, subject)
    values = {v for _, v in subject} | set(members[C.identifier])
    customer_ids = {v for k, v in subject if k == C.customer_id}
    customer_ids |= set(members.loc[members[C.id_kind] == C.customer_id, C.identifier])

    removed: dict[str, int] = {}
    rewritten = 0
    for area, root in (("lake", settings.lake_dir), ("landing", settings.landing_dir)):
        for table in _tables(root):
            rows, parts = _erase_table(root, table, values, key if area == "landing" else None)
            if rows:
                removed[f"{area}/{table}"] = rows
                rewritten += parts
    online_rows = _erase_online(settings, sorted(customer_ids)) if online and customer_ids else 0

    families = sorted({f for name in removed for f in TABLE_FAMILIES.get(name.split("/", 1)[1], ())})
    subject_token = subject[0][1] if subject[0][0] != C.customer_id else token(key, C.customer_id, subject[0][1])
    at = dt.datetime.now(dt.UTC)
    erasure_id = hashlib.sha256(f"{subject_token}|{at.isoformat()}".encode()).hexdigest()[:12]
    report = ErasureReport(
        erasure_id=erasure_id,
        subject=subject_token,
        resolved_ids=sorted(resolved_ids),
        identifiers=len(values),
        rows_removed=removed,
        partitions_rewritten=rewritten,
        online_rows_removed=online_rows,
        retrain=families,
    )
    # Customer ids are stored as tokens too: the log holds nothing that names the person.
    suppress = sorted({token(key, C.customer_id, c) for c in customer_ids} | (values - customer_ids))
    suppression.append(settings, {**asdict(report), "at": at.isoformat(), "suppress": suppress})
    if families:
        _mark_retrain(settings, families, erasure_id)
    return report


def _resolve_subject(settings: Settings, subject: list[tuple[str, str]]) -> tuple[list[str], pd.DataFrame]:
    """The resolved ids holding any of the subject's identifiers, and all their (unshared) identifiers."""
    identity_map = latest_identity_map(settings)
    if identity_map is None or identity_map.empty:
        customers = lake.read_table(settings.lake_dir, schemas.CUSTOMERS)
        identities = lake.read_table(settings.lake_dir, schemas.IDENTITIES)
        identity_map = resolve(links_from_tables(customers, identities)).identity_map
    if identity_map.empty:
        return [], pd.DataFrame(columns=[C.id_kind, C.identifier])
    unshared = identity_map[~identity_map[C.shared].astype(bool)]
    wanted = pd.DataFrame(subject, columns=[C.id_kind, C.identifier])
    ids = sorted(set(unshared.merge(wanted)[C.resolved_id]))
    return ids, unshared[unshared[C.resolved_id].isin(ids)][[C.id_kind, C.identifier]]


def _tables(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _erase_table(root: Path, table: str, values: set[str], landing_key: str | None) -> tuple[int, int]:
    """Rewrite every partition of the table that holds the subject's rows; returns (rows removed, partitions)."""
    pattern = re.compile("|".join(re.escape(json.dumps(v)) for v in sorted(values))) if values else None
    rows = parts = 0
    for day in lake.partitions(root, table):
        frame = lake.read_partition(root, table, day)  # appended chunks too (the prediction logs)
        probe = frame
        if landing_key is not None:  # raw personal data: compare its tokens
            probe = pseudonymise_frame(
                frame[[c for c in frame.columns if c in SUBJECT_COLUMNS or c == C.channel]], landing_key
            )
        hit = pd.Series(False, index=frame.index)
        for column in SUBJECT_COLUMNS:
            if column in probe.columns:
                hit |= probe[column].isin(values)
        if C.record in frame.columns and pattern is not None:  # quarantined rows keep their values as JSON
            hit |= frame[C.record].fillna("").str.contains(pattern)
        if hit.any():
            lake.write_partition(root, table, day, frame[~hit].reset_index(drop=True))
            rows += int(hit.sum())
            parts += 1
    return rows, parts


def _erase_online(settings: Settings, customer_ids: list[str]) -> int:
    """Delete the customers' entity rows from the profile's Feast online store (nothing to do before the first
    ``feast apply`` of the embedded profile)."""
    if settings.profile != "production" and not (settings.feast_dir / "registry.db").exists():
        return 0
    from omnicart.featurestore import feature_store

    return erase_online(feature_store(settings), customer_ids)


def erase_online(store: Any, customer_ids: list[str]) -> int:
    """Delete the customers' rows of every Feast view keyed by customer_id, alone or with other keys (e.g. customer ×
    channel), from the store's online store: SQLite (rows removed) or Redis (entity keys removed; one key holds every
    view of that entity). Feast has no per-entity delete, so each store is reached through Feast's own connection."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    views = [v for v in store.list_feature_views() if C.customer_id in [f.name for f in v.entity_columns]]
    online = store._get_provider().online_store
    if not views or not customer_ids:
        return 0
    if isinstance(online, SqliteOnlineStore):
        return _erase_sqlite(store, online, views, set(customer_ids))
    if isinstance(online, RedisOnlineStore):
        return _erase_redis(store, online, views, set(customer_ids))
    raise TypeError(
        f"cannot erase from a {type(online).__name__} online store: the platform's profiles use SQLite (embedded) "
        "or Redis (production)"
    )


def _belongs(config: Any, targets: set[str]) -> Callable[[bytes], bool]:
    from feast.infra.key_encoding_utils import deserialize_entity_key

    version = config.entity_key_serialization_version

    def belongs(serialized: bytes) -> bool:
        key = deserialize_entity_key(serialized, entity_key_serialization_version=version)
        values = dict(zip(key.join_keys, key.entity_values, strict=True))
        return values[C.customer_id].string_val in targets

    return belongs


def _erase_sqlite(store: Any, online: Any, views: list[Any], targets: set[str]) -> int:
    from feast.infra.online_stores.helpers import compute_table_id

    config = store.config
    versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
    belongs = _belongs(config, targets)
    conn = online._get_conn(config)
    removed = 0
    for view in views:
        table = compute_table_id(config.project, view, versioning).replace('"', '""')
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
        if not exists:
            continue
        keys = [(k,) for (k,) in conn.execute(f'SELECT DISTINCT entity_key FROM "{table}"') if belongs(k)]
        with conn:
            before = conn.total_changes
            conn.executemany(f'DELETE FROM "{table}" WHERE entity_key = ?', keys)
            removed += conn.total_changes - before
    return removed


def _erase_redis(store: Any, online: Any, views: list[Any], targets: set[str]) -> int:
    """Feast's Redis key of an entity is its serialized entity key followed by the project name, one hash holding
    every view with those join keys: scan the keys of each join-key set that includes customer_id (Feast's own
    prefix) and delete the customers' ones."""
    from feast.infra.key_encoding_utils import serialize_entity_key_prefix

    config = store.config
    client = online._get_client(config.online_store)
    project = config.project.encode("utf-8")
    belongs = _belongs(config, targets)
    removed = 0
    for join_keys in sorted({tuple(sorted(v.join_keys)) for v in views}):
        prefix = serialize_entity_key_prefix(list(join_keys), config.entity_key_serialization_version)
        pattern = _glob_escape(prefix) + b"*" + _glob_escape(project)
        doomed = [
            k
            for k in client.scan_iter(match=pattern, count=1000)
            if k.endswith(project) and belongs(k[: -len(project)])
        ]
        for start in range(0, len(doomed), 1000):
            removed += int(client.delete(*doomed[start : start + 1000]))
    return removed


def _glob_escape(raw: bytes) -> bytes:
    """``raw`` as a literal in a Redis MATCH pattern (the key bytes may hold ``*``, ``?``, ``[`` or ``\\``)."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", raw)


def _mark_retrain(settings: Settings, families: list[str], erasure_id: str) -> None:
    path = marker_path(settings)
    state = json.loads(path.read_text()) if path.is_file() else {"families": [], "erasures": []}
    state["families"] = sorted(set(state["families"]) | set(families))
    state["erasures"] = [*state["erasures"], erasure_id]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".retrain-", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def retrain_required(settings: Settings) -> list[str]:
    """Model families that must be retrained because an erasure removed rows they learned from."""
    path = marker_path(settings)
    return json.loads(path.read_text())["families"] if path.is_file() else []


def clear_retrain(settings: Settings, families: list[str]) -> None:
    """Called after retraining: drop these families from the marker (the marker goes when none is left)."""
    path = marker_path(settings)
    if not path.is_file():
        return
    state = json.loads(path.read_text())
    state["families"] = sorted(set(state["families"]) - set(families))
    if state["families"]:
        path.write_text(json.dumps(state, indent=2, sort_keys=True))
    else:
        path.unlink()
