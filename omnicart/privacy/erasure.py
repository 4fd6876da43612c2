"""Erasure ("right to be forgotten"): remove one customer from everywhere the platform keeps data, and from future
ingests.

The customer is found through identity resolution, so an erasure by email also removes the rows seen under their
phone, loyalty card, devices, cookies and social handle. Where they go:

- the lake and the landing area: affected partitions are rewritten atomically through ``omnicart.lake`` (the
  quarantine, the Feast offline feature tables and serving's prediction logs are lake tables too; a logged answer's
  feedback rows go with it, found by request id);
- the Feast online store: SQLite rows or Redis entity keys of every view keyed by customer_id;
- the support logs (escalations and feedback, JSON lines under ``<home>/support``);
- the model artefacts that hold customer rows, in ``<home>/models`` and in every MLflow logged model (champion and
  older versions alike): the recommender's saved purchase histories and the support knowledge base's questions and
  answers are rewritten without them. What a model's weights learned in aggregate stays until its next training,
  which reads the cleaned lake; ``retrain`` names the families concerned.

The erasure log keeps tokens and counts only, never the personal data, and doubles as a suppression list that ingest
consults so a re-import cannot bring the customer back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart import lake, schemas
from omnicart.ingest.identity import latest_identity_map, links_from_tables, resolve
from omnicart.ingest.pipeline import pseudonymise_frame
from omnicart.ingest.validate import SUBJECT_COLUMNS
from omnicart.privacy import suppression
from omnicart.privacy.pseudonymise import scrub_text, token
from omnicart.schemas import C
from omnicart.settings import Settings
from omnicart.support import logs
from omnicart.support.logs import escalations_path, feedback_path

# Which model families learn from which tables (their weights saw the rows an erasure removed from the table).
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
    artifact_rows_removed: dict[str, int] = field(default_factory=dict)  # "models/<dir>" or "mlflow/<model>/<path>"
    retrain: list[str] = field(default_factory=list)  # families whose weights learned from removed rows

    @property
    def total_rows(self) -> int:
        return sum(self.rows_removed.values())


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

    # The copies first, the lake last: if a store fails, the lake still holds what a re-run needs to find them.
    online_rows = _erase_online(settings, sorted(customer_ids)) if online and customer_ids else 0
    # the customer's support tickets: the support model's knowledge base holds their text
    tickets = _rows(settings.lake_dir, schemas.SUPPORT, _subject_hits(values, None))
    kb = _KnowledgeMatch.of(tickets, key, values - customer_ids)
    artifacts = {**_erase_model_dirs(settings, customer_ids, kb), **_erase_mlflow(settings, customer_ids, kb)}

    removed: dict[str, int] = {}
    rewritten = 0
    answers: set[str] = set()  # request ids of the customer's logged answers: their feedback goes with them
    for area, root in (("lake", settings.lake_dir), ("landing", settings.landing_dir)):
        for table in _tables(root):
            hits = _subject_hits(values, key if area == "landing" else None)
            rows, parts, gone = _erase_table(root, table, hits)
            if C.request_id in gone.columns:
                answers |= set(gone[C.request_id].dropna().astype(str))
            if rows:
                removed[f"{area}/{table}"] = rows
                rewritten += parts
    escalated, request_ids = _erase_jsonl(escalations_path(settings.home_dir), _mentions(values, customer_ids))
    answers |= request_ids
    feedback, _ = _erase_jsonl(feedback_path(settings.home_dir), _mentions(values, set(), answers))
    removed.update({k: n for k, n in (("support/escalations", escalated), ("support/feedback", feedback)) if n})
    for table in (t for t in _tables(settings.lake_dir) if t.startswith(schemas.PREDICTIONS_PREFIX)):
        # feedback rows name the answer they rate, not the customer
        rows, parts, _ = _erase_table(settings.lake_dir, table, lambda f: _column_in(f, C.request_id, answers))
        if rows:
            removed[f"lake/{table}"] = removed.get(f"lake/{table}", 0) + rows
            rewritten += parts

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
        artifact_rows_removed=artifacts,
        retrain=families,
    )
    # Customer ids are stored as tokens too: the log holds nothing that names the person.
    suppress = sorted({token(key, C.customer_id, c) for c in customer_ids} | (values - customer_ids))
    suppression.append(settings, {**asdict(report), "at": at.isoformat(), "suppress": suppress})
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


def _column_in(frame: pd.DataFrame, column: str, values: set[str]) -> pd.Series:
    if column not in frame.columns or not values:
        return pd.Series(False, index=frame.index)
    return frame[column].isin(values)


def _subject_hits(values: set[str], landing_key: str | None) -> Callable[[pd.DataFrame], pd.Series]:
    """Which rows of a partition are the subject's: any identifying column holds one of ``values`` (raw landing
    files are compared by their tokens), or a quarantined row's kept record names one."""
    pattern = re.compile("|".join(re.escape(json.dumps(v)) for v in sorted(values))) if values else None

    def hits(frame: pd.DataFrame) -> pd.Series:
        probe = frame
        if landing_key is not None:  # raw personal data: compare its tokens
            probe = pseudonymise_frame(
                frame[[c for c in frame.columns if c in SUBJECT_COLUMNS or c == C.channel]], landing_key
            )
        hit = pd.Series(False, index=frame.index)
        for column in SUBJECT_COLUMNS:
            hit |= _column_in(probe, column, values)
        if C.record in frame.columns and pattern is not None:  # quarantined rows keep their values as JSON
            hit |= frame[C.record].fillna("").str.contains(pattern)
        return hit

    return hits


def _rows(root: Path, table: str, hits: Callable[[pd.DataFrame], pd.Series]) -> pd.DataFrame:
    """The table's rows ``hits`` picks, read only."""
    frames = [f[hits(f)] for day in lake.partitions(root, table) if len(f := lake.read_partition(root, table, day))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _erase_table(root: Path, table: str, hits: Callable[[pd.DataFrame], pd.Series]) -> tuple[int, int, pd.DataFrame]:
    """Rewrite every partition of the table that holds rows ``hits`` picks; returns (rows removed, partitions
    rewritten, the removed rows)."""
    rows = parts = 0
    gone: list[pd.DataFrame] = []
    for day in lake.partitions(root, table):
        files = lake.partition_files(root, table, day)  # appended chunks too (the prediction logs)
        frame = lake.read_files(files)
        hit = hits(frame)
        if hit.any():
            gone.append(frame[hit])
            # only the files read are replaced: a chunk serving appends meanwhile stays
            lake.write_partition(root, table, day, frame[~hit].reset_index(drop=True), replaces=files)
            rows += int(hit.sum())
            parts += 1
    return rows, parts, pd.concat(gone, ignore_index=True) if gone else pd.DataFrame()


def _mentions(
    tokens: set[str], customer_ids: set[str], request_ids: set[str] | frozenset[str] = frozenset()
) -> Callable[[dict[str, Any]], bool]:
    """Whether a support log record is the subject's: their customer id, an answer of theirs (request id), or a
    token of their email or phone in its scrubbed text."""
    texts = sorted(tokens - customer_ids)

    def mentions(record: dict[str, Any]) -> bool:
        if record.get(C.customer_id) in customer_ids or record.get(C.request_id) in request_ids:
            return True
        text = " ".join(str(record.get(k) or "") for k in (C.question, "comment"))
        return any(t in text for t in texts)

    return mentions


def _erase_jsonl(path: Path, drop: Callable[[dict[str, Any]], bool]) -> tuple[int, set[str]]:
    """Rewrite a JSON-lines log without the records ``drop`` picks (atomically: a reader sees the old file or the
    new one); returns how many went and their request ids. A line that is not JSON is kept as it was."""
    if not path.is_file():
        return 0, set()
    with logs.locked(path):  # serving appends under the same lock: nothing it writes meanwhile is lost
        return _rewrite_jsonl(path, drop)


def _rewrite_jsonl(path: Path, drop: Callable[[dict[str, Any]], bool]) -> tuple[int, set[str]]:
    kept: list[str] = []
    request_ids: set[str] = set()
    gone = 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            kept.append(line)
            continue
        if isinstance(record, dict) and drop(record):
            gone += 1
            if record.get(C.request_id):
                request_ids.add(str(record[C.request_id]))
        else:
            kept.append(line)
    if gone:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(kept)
        os.replace(tmp, path)
    return gone, request_ids


def _erase_histories(path: Path, customer_ids: set[str]) -> int:
    """Rewrite a recommender's saved purchase histories without the customers' rows; returns the rows removed."""
    try:
        histories = pd.read_parquet(path)
    except Exception as exc:  # a damaged copy must stop the erasure before the lake loses what finds the customer
        raise ValueError(f"cannot read the saved histories {path}: {exc}") from exc
    hit = histories[C.customer_id].astype(str).isin(customer_ids)
    if hit.any():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        os.close(fd)
        histories[~hit].reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    return int(hit.sum())


@dataclass(frozen=True)
class _KnowledgeMatch:
    """What of the support model's knowledge base is the subject's: their tickets' questions, the answers they got
    (dropped when no one else's question is left on them), and any text with a token of their email or phone."""

    questions: frozenset[str]
    answers: frozenset[str]
    tokens: tuple[str, ...]

    @classmethod
    def of(cls, tickets: pd.DataFrame, key: str, tokens: set[str]) -> _KnowledgeMatch:
        from omnicart.support.knowledge import doc_key

        def texts(column: str) -> list[str]:
            values = tickets[column] if column in tickets.columns else []
            return [scrub_text(v, key) for v in values if isinstance(v, str) and v.strip()]

        return cls(frozenset(texts(C.question)), frozenset(map(doc_key, texts(C.answer))), tuple(sorted(tokens)))

    def __bool__(self) -> bool:
        return bool(self.questions or self.answers or self.tokens)

    def mentions(self, texts: pd.Series) -> pd.Series:
        return texts.fillna("").astype(str).map(lambda t: any(x in t for x in self.tokens))


def _erase_knowledge(directory: Path, match: _KnowledgeMatch) -> int:
    """Rewrite a support model directory's knowledge base without the subject's questions and answers (the
    embeddings row for row, BM25 refitted); returns the questions and docs removed."""
    from omnicart.support.knowledge import FILES, KnowledgeBase, doc_key

    kb = KnowledgeBase.load(directory)
    questions = kb.questions[C.question]
    drop_questions = (questions.isin(match.questions) | match.mentions(questions)).to_numpy()
    doc_of = kb.questions["doc"].to_numpy(dtype=int)
    asked = np.bincount(doc_of[~drop_questions], minlength=len(kb.docs)) > 0
    answers = kb.docs[C.answer]
    theirs = (kb.docs[C.kb_source] == "ticket") & answers.map(doc_key).isin(match.answers) & ~asked
    drop_docs = (theirs | match.mentions(answers)).to_numpy()
    if not (drop_questions.any() or drop_docs.any()):
        return 0
    with tempfile.TemporaryDirectory(dir=directory, prefix=".erase-") as tmp:
        kb.without(drop_questions, drop_docs).save(Path(tmp))
        for name in FILES:
            if (directory / name).is_dir():
                shutil.rmtree(directory / name)
            os.replace(Path(tmp) / name, directory / name)
    meta_path = directory / "meta.json"
    if meta_path.is_file():  # its counts describe the knowledge base
        meta = json.loads(meta_path.read_text())
        meta.update(docs=int((~drop_docs).sum()), questions=int(len(kb.questions) - drop_questions.sum()))
        meta_path.write_text(json.dumps(meta, indent=2, default=float))
    return int(drop_questions.sum() + drop_docs.sum())


def _erase_model_dirs(settings: Settings, customer_ids: set[str], kb: _KnowledgeMatch) -> dict[str, int]:
    """The trained models' directories under ``<home>/models`` (what training saves before MLflow copies it): the
    recommender's histories and the support model's knowledge base."""
    from omnicart.recommend import HISTORIES_FILE
    from omnicart.support.knowledge import FILES

    root = settings.home_dir / "models"
    removed = {}
    for path in sorted(root.rglob(HISTORIES_FILE)) if root.is_dir() and customer_ids else []:
        if rows := _erase_histories(path, customer_ids):
            removed[f"models/{path.parent.relative_to(root)}"] = rows
    for path in sorted(root.rglob(FILES[1])) if root.is_dir() and kb else []:
        if rows := _erase_knowledge(path.parent, kb):
            removed[f"models/{path.parent.relative_to(root)}"] = rows
    return removed


def _erase_mlflow(settings: Settings, customer_ids: set[str], kb: _KnowledgeMatch) -> dict[str, int]:
    """Every logged model of every family in MLflow (champion, previous and older versions alike): the files that
    hold the customer's rows (the recommender's histories, the support knowledge base) are downloaded, rewritten
    and uploaded over the originals through MLflow's artifact API, so a tracking server's object store is reached
    the same way as the local artifact folder."""
    if not (customer_ids or kb):
        return {}
    if not settings.mlflow_tracking_uri and not (settings.home_dir / "mlflow.db").is_file():
        return {}  # nothing was ever logged (and a client would create the database)
    import mlflow.artifacts

    from omnicart import registry
    from omnicart.recommend import HISTORIES_FILE
    from omnicart.support.knowledge import FILES

    mlc = registry.client(settings)
    experiments = [e for f in schemas.FAMILIES if (e := mlc.get_experiment_by_name(f"omnicart/{f}")) is not None]
    removed: dict[str, int] = {}
    if not experiments:
        return removed
    token = None
    while True:
        page = mlc.search_logged_models([e.experiment_id for e in experiments], page_token=token)
        for model in page:
            root = model.artifact_location.rstrip("/")
            for path in _artifact_files(mlc, model.model_id, {HISTORIES_FILE, FILES[1]}):
                parent = str(Path(path).parent)
                with tempfile.TemporaryDirectory(prefix="omnicart-erase-") as tmp:
                    if Path(path).name == HISTORIES_FILE:
                        local = Path(mlflow.artifacts.download_artifacts(f"{root}/{path}", dst_path=tmp))
                        if rows := _erase_histories(local, customer_ids):
                            mlc.log_model_artifact(model.model_id, str(local), artifact_path=parent)
                            removed[f"mlflow/{model.model_id}/{path}"] = rows
                        continue
                    names = {Path(p).name for p in _artifact_names(mlc, model.model_id, parent)}
                    for name in (n for n in (*FILES, "meta.json") if n in names):
                        mlflow.artifacts.download_artifacts(f"{root}/{parent}/{name}", dst_path=tmp)
                    if rows := _erase_knowledge(Path(tmp), kb):
                        for item in sorted(Path(tmp).iterdir()):
                            if item.is_dir():
                                mlc.log_model_artifacts(
                                    model.model_id, str(item), artifact_path=f"{parent}/{item.name}"
                                )
                            else:
                                mlc.log_model_artifact(model.model_id, str(item), artifact_path=parent)
                        removed[f"mlflow/{model.model_id}/{parent}"] = rows
        token = page.token
        if not token:
            return removed


def _artifact_names(mlc: Any, model_id: str, path: str) -> list[str]:
    return [info.path for info in mlc.list_logged_model_artifacts(model_id, path)]


def _artifact_files(mlc: Any, model_id: str, names: set[str], path: str | None = None) -> list[str]:
    """Paths of the logged model's artifact files with one of ``names``, at any depth."""
    found = []
    for info in mlc.list_logged_model_artifacts(model_id, path):
        if info.is_dir:
            found += _artifact_files(mlc, model_id, names, info.path)
        elif Path(info.path).name in names:
            found.append(info.path)
    return found


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
