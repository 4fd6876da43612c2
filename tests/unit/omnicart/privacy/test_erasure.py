"""Erasure: one customer, named by a variant of their email, disappears from every table, and stays gone."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from omnicart import lake, schemas
from omnicart.datasets.simulator import ShopSimulator
from omnicart.ingest import daily, identity, pipeline
from omnicart.privacy import erasure, suppression
from omnicart.privacy.pseudonymise import token
from omnicart.schemas import C
from omnicart.settings import Settings

KEY = "test-key"


def _all_rows(root, table) -> pd.DataFrame:
    return lake.read_table(root, table)


@pytest.fixture
def shop(tmp_path):
    settings = Settings(home=tmp_path / "home", sim_customers=120, sim_items=20, sim_days=3, pseudonym_key=KEY)
    for day in daily.days_between(settings.sim_start, settings.sim_end):
        daily.land_simulated_day(settings, day)
        pipeline.ingest_landed_day(settings, day)
        identity.resolve_day(settings, day)
    customers = ShopSimulator(settings).customers()
    events = lake.read_table(settings.lake_dir, schemas.EVENTS)
    # A customer seen on several channels, with events.
    busy = events[C.customer_id].value_counts().index
    person = customers.set_index(C.customer_id).loc[busy[0]]
    return settings, busy[0], person


def test_erase_by_email_removes_every_row_of_the_customer(shop, tmp_path):
    settings, cid, person = shop
    # A quarantined row of theirs, too (a till line with a bad quantity).
    till = tmp_path / "till.csv"
    till.write_text(
        "event_id,event_timestamp,customer_id,channel,event_type,item_id,quantity\n"
        f"T1,2026-01-02T10:00:00Z,{cid},store,purchase,I00001,lots\n"
    )
    pipeline.ingest_files(settings, {"till": till})
    assert (lake.read_table(settings.lake_dir, schemas.QUARANTINE)[C.record].str.contains(cid)).any()
    before = {t: len(_all_rows(settings.lake_dir, t)) for t in (schemas.EVENTS, schemas.CUSTOMERS)}
    email_token = token(KEY, C.email, person[C.email])
    tokens = {token(KEY, k, person[k]) for k in (C.email, C.phone, C.device_id, C.web_cookie) if person[k]}

    report = erasure.erase(settings, email=f"  {person[C.email].upper()} ")

    assert report.subject == email_token and len(report.resolved_ids) == 1
    assert report.rows_removed["lake/events"] > 0 and report.rows_removed["lake/quarantine"] == 1
    for root in (settings.lake_dir, settings.landing_dir):
        for table in erasure._tables(root):
            frame = _all_rows(root, table)
            for column in (C.customer_id, C.identifier, C.email, C.phone, C.device_id, C.web_cookie):
                if column in frame.columns:
                    assert not frame[column].isin({cid, *tokens}).any(), (root.name, table, column)
            if root == settings.landing_dir and C.email in frame.columns:
                assert not frame[C.email].astype(str).str.lower().str.strip().eq(person[C.email]).any()
    # Everyone else is untouched.
    assert (
        len(_all_rows(settings.lake_dir, schemas.EVENTS)) == before[schemas.EVENTS] - report.rows_removed["lake/events"]
    )
    assert len(_all_rows(settings.lake_dir, schemas.CUSTOMERS)) == before[schemas.CUSTOMERS] - 1

    log = suppression.log_path(settings).read_text()
    assert person[C.email] not in log.lower() and person[C.phone] not in log and cid not in log
    assert json.loads(log.splitlines()[0])["erasure_id"] == report.erasure_id
    assert "recommend" in report.retrain


def test_a_store_that_fails_stops_the_erasure_before_the_lake_and_a_rerun_finishes_it(shop):
    from omnicart.recommend import HISTORIES_FILE

    settings, cid, _ = shop
    damaged = settings.home_dir / "models" / "recommend" / "as_of=2026-01-02" / HISTORIES_FILE
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read the saved histories"):
        erasure.erase(settings, customer_id=cid)
    assert cid in set(lake.read_table(settings.lake_dir, schemas.EVENTS)[C.customer_id])  # still findable
    assert not suppression.log_path(settings).exists()
    damaged.unlink()

    report = erasure.erase(settings, customer_id=cid)

    assert report.rows_removed["lake/events"] > 0
    assert cid not in set(lake.read_table(settings.lake_dir, schemas.EVENTS)[C.customer_id])


def test_a_reingest_cannot_bring_an_erased_customer_back(shop):
    settings, cid, person = shop
    erasure.erase(settings, customer_id=cid)
    daily.land_simulated_day(settings, settings.sim_start)  # the shop re-delivers day 0, customer included
    report = pipeline.ingest_landed_day(settings, settings.sim_start)
    assert report.by_table[schemas.CUSTOMERS].by_reason.get("erased") == 1
    assert cid not in set(lake.read_table(settings.lake_dir, schemas.CUSTOMERS)[C.customer_id])
    erased_rows = lake.read_table(settings.lake_dir, schemas.QUARANTINE)
    assert erased_rows.loc[erased_rows[C.reason] == "erased", C.record].isna().all()  # nothing of theirs kept


class RuleModel:
    """A support model for the log writers: answers questions about opening hours, hands over the rest."""

    def answer_batch(self, questions, product_ids, k):
        return [
            {
                "answered": "hours" in q,
                C.answer: "9 to 5" if "hours" in q else None,
                "confidence": 0.9 if "hours" in q else 0.1,
                "threshold": 0.5,
                C.intent: "store_hours" if "hours" in q else "order_status",
                "sources": [],
            }
            for q in questions
        ]


def plant_support_and_predictions(settings: Settings, cid: str, email: str, other: str) -> dict[str, list[str]]:
    """What serving writes about the customer (and about ``other``): escalations and feedback JSON lines, and the
    prediction logs of recommend, support and support feedback in the lake. Returns the request ids per owner."""
    from serving.prediction_log import PredictionLog
    from serving.support import FeedbackRequest, SupportRequest, SupportService

    service = SupportService(RuleModel, settings.home_dir, KEY, model_version="1")
    requests = [
        SupportRequest(question="Where is my parcel?", customer_id=cid, channel="web"),  # escalated
        SupportRequest(question="What are your opening hours?", customer_id=cid),  # answered
        SupportRequest(question=f"Please write to {email} about my order", channel="service"),  # their email, no id
        SupportRequest(question="Where is my parcel?", customer_id=other),  # someone else: kept
        SupportRequest(question="What are your opening hours?", customer_id=other),
    ]
    answers = service.answer_batch(requests)
    log = PredictionLog(settings.lake_dir, flush_rows=10**6, flush_seconds=3600)
    log.support(requests, answers)
    for answer in answers:
        feedback = FeedbackRequest(request_id=answer.request_id, helpful=answer.answered, comment="thanks")
        service.feedback(feedback)
        log.support_feedback(feedback)
    now = pd.Timestamp.now(tz="UTC")
    log.add(
        "recommend",
        [
            {C.event_timestamp: now, C.request_id: f"r-{who}", C.customer_id: who, C.item_id: "I00001", C.rank: 1}
            for who in (cid, other)
        ],
    )
    log.close()
    ids = [a.request_id for a in answers]
    return {"customer": [*ids[:3], f"r-{cid}"], "other": [*ids[3:], f"r-{other}"]}


def _support_logs(settings: Settings) -> dict[str, list[dict]]:
    from omnicart.support.logs import escalations_path, feedback_path

    return {
        name: [json.loads(line) for line in path(settings.home_dir).read_text().splitlines()]
        for name, path in (("escalations", escalations_path), ("feedback", feedback_path))
    }


def test_erasure_removes_the_customer_from_support_logs_and_prediction_logs(shop):
    settings, cid, person = shop
    other = next(c for c in lake.read_table(settings.lake_dir, schemas.CUSTOMERS)[C.customer_id] if c != cid)
    planted = plant_support_and_predictions(settings, cid, person[C.email], other)
    before = _support_logs(settings)
    assert len(before["escalations"]) == 3 and len(before["feedback"]) == 5
    assert any(token(KEY, C.email, person[C.email]) in e[C.question] for e in before["escalations"])

    report = erasure.erase(settings, customer_id=cid)

    after = _support_logs(settings)
    assert [e[C.customer_id] for e in after["escalations"]] == [other]
    assert {f[C.request_id] for f in after["feedback"]} == set(planted["other"][:2])
    assert report.rows_removed["support/escalations"] == 2 and report.rows_removed["support/feedback"] == 3
    logged = {t: lake.read_table(settings.lake_dir, schemas.predictions_table(t)) for t in ("recommend", "support")}
    feedback = lake.read_table(settings.lake_dir, schemas.predictions_table("support_feedback"))
    assert set(logged["support"][C.request_id]) == set(planted["other"][:2])
    assert set(logged["recommend"][C.customer_id]) == {other}
    assert set(feedback[C.request_id]) == set(planted["other"][:2])  # rows that rate the customer's answers went
    assert report.rows_removed["lake/predictions_support"] == 3
    assert report.rows_removed["lake/predictions_support_feedback"] == 3


class Histories:
    """Stands in for the recommender's pyfunc in MLflow: what matters here is its model directory artifact."""

    def predict(self, context, model_input, params=None):
        return model_input


def plant_recommender(settings: Settings, cid: str, other: str, versions: int = 2) -> list[str]:
    """A recommender model directory holding both customers' histories under ``<home>/models``, logged to MLflow
    and registered ``versions`` times (champion and older versions each keep a copy); returns the versions."""
    import mlflow.pyfunc

    from omnicart import registry
    from omnicart.recommend import HISTORIES_FILE

    model = type("HistoriesModel", (Histories, mlflow.pyfunc.PythonModel), {})()
    out = []
    for n in range(versions):
        directory = settings.home_dir / "models" / "recommend" / f"as_of=2026-01-0{n + 1}"
        (directory / "recsys").mkdir(parents=True)
        (directory / "recsys" / "recsys.json").write_text("{}")
        histories = pd.DataFrame({C.customer_id: [cid, cid, other], C.item_id: ["I1", "I2", "I1"]})
        histories.to_parquet(directory / HISTORIES_FILE, index=False)
        registered = registry.log_model(
            settings, "recommend", model, artifacts={"model_dir": directory}, params={}, metrics={"ndcg_at_10": 0.1}
        )
        out.append(registered.version)
    registry.promote(settings, "recommend", out[-1])
    return out


def _histories_everywhere(settings: Settings, versions: list[str]) -> dict[str, pd.DataFrame]:
    import mlflow.artifacts

    from omnicart import registry
    from omnicart.recommend import HISTORIES_FILE

    found = {str(p): pd.read_parquet(p) for p in (settings.home_dir / "models").rglob(HISTORIES_FILE)}
    registry.client(settings)
    for version in versions:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{registry.model_name('recommend')}/{version}"))
        [path] = local.rglob(HISTORIES_FILE)
        found[f"version {version}"] = pd.read_parquet(path)
    return found


def test_erasure_rewrites_the_recommender_histories_in_model_dirs_and_every_mlflow_version(shop):
    settings, cid, _ = shop
    other = next(c for c in lake.read_table(settings.lake_dir, schemas.CUSTOMERS)[C.customer_id] if c != cid)
    versions = plant_recommender(settings, cid, other)
    before = _histories_everywhere(settings, versions)
    assert len(before) == 4 and all(set(h[C.customer_id]) == {cid, other} for h in before.values())

    report = erasure.erase(settings, customer_id=cid)

    after = _histories_everywhere(settings, versions)
    assert after.keys() == before.keys()
    for name, histories in after.items():  # only the customer's rows went; the file keeps its columns
        assert histories.to_dict("records") == [{C.customer_id: other, C.item_id: "I1"}], name
    assert sorted(report.artifact_rows_removed.values()) == [2, 2, 2, 2]
    assert sum(k.startswith("mlflow/") for k in report.artifact_rows_removed) == 2


def encode(texts) -> np.ndarray:
    """A stand-in sentence encoder for knowledge bases in these tests (one seeded unit vector per text): erasure
    moves rows, so any fixed encoder shows whether each embedding stayed with its text."""
    from omnicart.text import DIM

    rows = [
        np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:12], 16)).standard_normal(DIM) for t in texts
    ]
    out = np.asarray(rows, dtype=np.float32).reshape(-1, DIM)
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-9)


def plant_support_model(settings: Settings, versions: int = 1) -> Path:
    """A support model directory whose knowledge base indexes the lake's tickets (MiniLM embeddings, BM25), saved
    under ``<home>/models`` and logged to MLflow ``versions`` times; returns the directory."""
    import mlflow.pyfunc

    from omnicart import registry
    from omnicart.support.dataset import canonical
    from omnicart.support.knowledge import KnowledgeBase

    tickets = lake.read_table(settings.lake_dir, schemas.SUPPORT)
    frame = canonical(tickets.assign(**{C.product_id: tickets[C.item_id]}), "ticket")
    kb = KnowledgeBase.build(frame, encode, encode)
    directory = settings.home_dir / "models" / "support" / "shop-test"
    kb.save(directory)
    (directory / "meta.json").write_text(json.dumps({"docs": len(kb), "questions": len(kb.questions)}))
    model = type("SupportFiles", (Histories, mlflow.pyfunc.PythonModel), {})()
    for _ in range(versions):
        registry.log_model(settings, "support", model, artifacts={"model_dir": directory}, params={}, metrics={})
    return directory


def _knowledge_everywhere(settings: Settings) -> dict[str, object]:
    import mlflow.artifacts

    from omnicart import registry
    from omnicart.support.knowledge import KnowledgeBase

    found = {"models": KnowledgeBase.load(settings.home_dir / "models" / "support" / "shop-test")}
    registry.client(settings)
    for version in registry.client(settings).search_model_versions(f"name='{registry.model_name('support')}'"):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{registry.model_name('support')}/{version.version}"))
        [questions] = local.rglob("kb_questions.jsonl")
        found[f"version {version.version}"] = KnowledgeBase.load(questions.parent)
    return found


def test_erasure_takes_the_customer_s_tickets_out_of_the_support_knowledge_base(shop):
    settings, _, _ = shop
    tickets = lake.read_table(settings.lake_dir, schemas.SUPPORT)
    ticket = tickets[tickets[C.question].str.contains("tok_")].iloc[0]  # a question that names its asker
    cid = ticket[C.customer_id]
    plant_support_model(settings)
    before = _knowledge_everywhere(settings)
    assert len(before) == 2 and all(ticket[C.question] in set(kb.questions[C.question]) for kb in before.values())

    report = erasure.erase(settings, customer_id=cid)

    for name, kb in _knowledge_everywhere(settings).items():
        old = before[name]
        assert ticket[C.question] not in set(kb.questions[C.question]), name
        assert len(kb.questions) == len(old.questions) - 1 and kb.bm25_questions.n_ == len(kb.questions)
        # the answer is shared with others' tickets: it stays, and so does every other question, on its own doc
        assert set(kb.docs[C.doc_id]) == set(old.docs[C.doc_id])
        pairs = {(q, kb.docs[C.doc_id][d]) for q, d in zip(kb.questions[C.question], kb.questions["doc"], strict=True)}
        old_pairs = {
            (q, old.docs[C.doc_id][d]) for q, d in zip(old.questions[C.question], old.questions["doc"], strict=True)
        }
        assert pairs == old_pairs - {(q, d) for q, d in old_pairs if q == ticket[C.question]}
        # embeddings stay row for row with their questions
        assert np.allclose(kb.question_emb, encode(kb.questions[C.question].tolist()), atol=1e-2)
    meta = json.loads((settings.home_dir / "models" / "support" / "shop-test" / "meta.json").read_text())
    assert meta["questions"] == len(before["models"].questions) - 1
    assert sum(k.startswith("mlflow/") for k in report.artifact_rows_removed) == 1


def test_a_knowledge_base_without_a_doc_drops_its_questions_and_keeps_the_rest_aligned():
    from omnicart.support.knowledge import KnowledgeBase

    frame = pd.DataFrame(
        {
            C.question: ["Where is my parcel?", "Has my order shipped?", "When do you open?", "Can I return it?"],
            C.answer: ["Track it online.", "Track it online.", "At nine.", "Within 30 days."],
            C.intent: ["order", "order", "hours", "returns"],
            C.product_id: [None, None, None, "P1"],
            C.kb_source: "ticket",
        }
    )
    kb = KnowledgeBase.build(frame, encode, encode)
    smaller = kb.without(np.array([True, False, False, False]), np.array([False, True, False]))
    assert smaller.docs[C.answer].tolist() == ["Track it online.", "Within 30 days."]
    assert smaller.questions.to_dict("list") == {
        C.question: ["Has my order shipped?", "Can I return it?"],
        "doc": [0, 1],
    }
    assert np.array_equal(smaller.question_emb, kb.question_emb[[1, 3]])
    assert np.array_equal(smaller.answer_emb, kb.answer_emb[[0, 2]])
    assert smaller.bm25_answers.n_ == 2 and smaller.by_product_ == {"P1": np.array([1])}
    scores = smaller.bm25_questions.scores([["ship"]])
    assert scores.shape == (1, 2) and scores[0, 0] > 0 == scores[0, 1]


@pytest.mark.slow
def test_erasure_reaches_the_feast_online_store(tmp_path):
    from feature_repo.apply import apply_and_materialize
    from omnicart import features, featurestore

    settings = Settings(home=tmp_path / "home", sim_customers=60, sim_items=15, sim_days=2, pseudonym_key=KEY)
    daily.land_and_ingest(settings, settings.sim_start, settings.sim_end)
    features.build_feature_days(settings, settings.sim_start, settings.sim_end)
    features.build_omnichannel_days(settings, settings.sim_start, settings.sim_end)
    apply_and_materialize(settings, settings.sim_start, settings.sim_end)
    refs = [f"{schemas.F.customer_view}:{schemas.F.n_views_30d}", f"{schemas.F.customer_view}:{C.segment}"]
    frequency = schemas.windowed(schemas.F.frequency, 30)
    per_channel = [f"{schemas.F.customer_channel_view}:{frequency}"]

    def channel_rows(store, ids):
        rows = [{C.customer_id: i, C.channel: "all"} for i in ids]
        return store.get_online_features(features=per_channel, entity_rows=rows).to_dict()[frequency]

    with_channels = set(lake.read_table(settings.lake_dir, schemas.CUSTOMER_CHANNEL_FEATURES)[C.customer_id])
    ids = lake.read_table(settings.lake_dir, schemas.CUSTOMER_FEATURES)[C.customer_id]
    cid, other = sorted(set(ids) & with_channels)[:2]
    store = featurestore.feature_store(settings)
    assert featurestore.online_features(store, refs, C.customer_id, [cid])[0][C.segment] is not None
    assert channel_rows(store, [cid])[0] is not None  # the customer x channel view (two join keys) has them too

    report = erasure.erase(settings, customer_id=cid)

    assert report.online_rows_removed > 0 and report.rows_removed["lake/customer_features"] == 2
    store = featurestore.feature_store(settings)
    gone, kept = featurestore.online_features(store, refs, C.customer_id, [cid, other])
    assert gone[C.segment] is None and kept[C.segment] is not None
    gone_channel, kept_channel = channel_rows(store, [cid, other])
    assert gone_channel is None and kept_channel is not None


@pytest.fixture
def redis_url(tmp_path):
    """A throwaway redis-server (the production profile's online store), or a skip naming what is missing."""
    import shutil

    from benchmarks.feast_online import redis_server

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; `make test` installs it as root)")
    with redis_server(tmp_path / "redis") as url:
        yield url


def _redis_store(settings: Settings, redis_url: str):
    """The feature repo applied and materialised into Redis (a registry of its own beside the SQLite one)."""
    import datetime as dt

    from feast import FeatureStore, RepoConfig

    from feature_repo import definitions
    from feature_repo.apply import materialize_windows
    from omnicart import featurestore, stores

    store = FeatureStore(
        config=RepoConfig(
            project=featurestore.PROJECT,
            provider="local",
            registry=str(settings.feast_dir / "registry-redis.db"),
            online_store={"type": "redis", "connection_string": stores.redis_connection_string(redis_url)},
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
            repo_path=settings.feast_dir,
        )
    )
    store.apply(definitions())
    for view, (start, end) in materialize_windows(settings, settings.sim_start, settings.sim_end).items():
        store.materialize(
            start_date=dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            end_date=dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC),
            feature_views=[view],
        )
    return store


@pytest.mark.slow
def test_erasure_reaches_a_redis_online_store(tmp_path, redis_url):
    import redis

    from omnicart import features, featurestore

    settings = Settings(home=tmp_path / "home", sim_customers=60, sim_items=15, sim_days=2, pseudonym_key=KEY)
    daily.land_and_ingest(settings, settings.sim_start, settings.sim_end)
    features.build_feature_days(settings, settings.sim_start, settings.sim_end)
    features.build_omnichannel_days(settings, settings.sim_start, settings.sim_end)
    store = _redis_store(settings, redis_url)
    refs = [f"{schemas.F.customer_view}:{C.segment}"]
    frequency = schemas.windowed(schemas.F.frequency, 30)
    per_channel = [f"{schemas.F.customer_channel_view}:{frequency}"]
    with_channels = set(lake.read_table(settings.lake_dir, schemas.CUSTOMER_CHANNEL_FEATURES)[C.customer_id])
    ids = lake.read_table(settings.lake_dir, schemas.CUSTOMER_FEATURES)[C.customer_id]
    cid, other = sorted(set(ids) & with_channels)[:2]

    def channel_rows(ids):
        rows = [{C.customer_id: i, C.channel: "all"} for i in ids]
        return store.get_online_features(features=per_channel, entity_rows=rows).to_dict()[frequency]

    assert featurestore.online_features(store, refs, C.customer_id, [cid])[0][C.segment] is not None
    assert channel_rows([cid])[0] is not None
    keys_before = redis.Redis.from_url(redis_url).dbsize()
    # the customer's keys: one per join-key set and channel, each a hash of every view with those keys; their id is
    # in the key as its length then its bytes
    value = struct.pack("<I", len(cid)) + cid.encode()
    theirs = [k for k in redis.Redis.from_url(redis_url).scan_iter() if value in k]
    assert len(theirs) >= 2

    removed = erasure.erase_online(store, [cid])

    assert removed == len(theirs)
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == keys_before - removed
    assert not [k for k in client.scan_iter() if value in k]
    gone, kept = featurestore.online_features(store, refs, C.customer_id, [cid, other])
    assert gone[C.segment] is None and kept[C.segment] is not None
    gone_channel, kept_channel = channel_rows([cid, other])
    assert gone_channel is None and kept_channel is not None


def test_redis_match_patterns_take_key_bytes_literally():
    assert erasure._glob_escape(b"a*b?c[d]e\\f") == b"a\\*b\\?c\\[d\\]e\\\\f"


# --- one customer planted everywhere the platform keeps data, then erased: nothing of theirs remains ----------------
def _traces(settings: Settings, needles: set[str], store, ids: list[str]) -> list[str]:
    """Every place under the home that still holds one of ``needles`` (the customer's id, tokens and ticket texts):
    any cell of any lake or landing table, the Feast online store's entity keys and values, the support logs, and
    the model artefacts in ``<home>/models`` and in each MLflow logged model."""
    import mlflow.artifacts

    from omnicart import featurestore, registry
    from omnicart.recommend import HISTORIES_FILE
    from omnicart.support.knowledge import KnowledgeBase
    from omnicart.support.logs import escalations_path, feedback_path

    pattern = "|".join(map(re.escape, sorted(needles)))
    found = []
    for root in (settings.lake_dir, settings.landing_dir):
        for table in erasure._tables(root):
            cells = _all_rows(root, table).astype(str)
            for column in cells.columns:
                if cells[column].str.contains(pattern).any():
                    found.append(f"{root.name}/{table}.{column}")
    for path in (escalations_path(settings.home_dir), feedback_path(settings.home_dir)):
        if re.search(pattern, path.read_text()):
            found.append(str(path))
    values = featurestore.online_features(store, [f"{schemas.F.customer_view}:{C.segment}"], C.customer_id, ids)
    found += [f"online customer_stats of {i}" for i, v in zip(ids, values, strict=True) if v[C.segment] is not None]
    frequency = schemas.windowed(schemas.F.frequency, 30)
    rows = [{C.customer_id: i, C.channel: ch} for i in ids for ch in (*schemas.CHANNELS, "all")]
    online = store.get_online_features([f"{schemas.F.customer_channel_view}:{frequency}"], rows).to_dict()
    found += [f"online customer_channel of {r}" for r, v in zip(rows, online[frequency], strict=True) if v is not None]
    registry.client(settings)
    local_models = [settings.home_dir / "models"]
    for family in ("recommend", "support"):
        for version in registry.client(settings).search_model_versions(f"name='{registry.model_name(family)}'"):
            local_models.append(Path(mlflow.artifacts.download_artifacts(version.source)))
    for root in local_models:
        for path in root.rglob(HISTORIES_FILE):
            if pd.read_parquet(path).astype(str).apply(lambda c: c.str.contains(pattern)).any().any():
                found.append(str(path))
        for path in root.rglob("kb_questions.jsonl"):
            kb = KnowledgeBase.load(path.parent)
            texts = pd.concat([kb.questions[C.question], kb.docs[C.answer]]).astype(str)
            if texts.str.contains(pattern).any():
                found.append(str(path.parent))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_a_customer_planted_everywhere_leaves_no_trace(tmp_path, request, monkeypatch, online_store):
    from feature_repo.apply import apply_and_materialize
    from omnicart import features, featurestore

    settings = Settings(home=tmp_path / "home", sim_customers=60, sim_items=15, sim_days=3, pseudonym_key=KEY)
    daily.land_and_ingest(settings, settings.sim_start, settings.sim_end)
    features.build_feature_days(settings, settings.sim_start, settings.sim_end)
    features.build_omnichannel_days(settings, settings.sim_start, settings.sim_end)
    apply_and_materialize(settings, settings.sim_start, settings.sim_end)
    store = featurestore.feature_store(settings)
    if online_store == "redis":  # the production profile's online store, reached through the same erase()
        store = _redis_store(settings, request.getfixturevalue("redis_url"))
        monkeypatch.setattr(featurestore, "feature_store", lambda _settings: store)
    # the customer: one with support tickets, events and per-channel features
    tickets = lake.read_table(settings.lake_dir, schemas.SUPPORT)
    with_channels = set(lake.read_table(settings.lake_dir, schemas.CUSTOMER_CHANNEL_FEATURES)[C.customer_id])
    cid = sorted(set(tickets[C.customer_id].dropna()) & with_channels)[0]
    other = sorted(with_channels - {cid})[0]
    person = ShopSimulator(settings).customers().set_index(C.customer_id).loc[cid]
    plant_support_and_predictions(settings, cid, person[C.email], other)
    plant_recommender(settings, cid, other)
    plant_support_model(settings)
    tokens = {token(KEY, k, person[k]) for k in (C.email, C.phone, C.device_id, C.web_cookie) if person[k]}
    their_tickets = tickets.loc[tickets[C.customer_id] == cid, C.question]
    needles = {cid, *tokens, *their_tickets}
    everywhere = _traces(settings, needles, store, [cid])
    for place in ("lake/events", "lake/customers", "lake/predictions_support", "landing/", "escalations.jsonl",
                  "online customer_stats", "online customer_channel", "models", "mlartifacts"):  # fmt: skip
        assert any(place in p for p in everywhere), (place, everywhere)

    report = erasure.erase(settings, email=person[C.email])

    assert report.resolved_ids and report.online_rows_removed > 0 and report.artifact_rows_removed
    assert _traces(settings, needles, store, [cid]) == []
    assert _traces(settings, {other}, store, [other])  # and the others are still there


def test_a_support_log_line_appended_while_erasure_rewrites_the_log_is_kept(tmp_path):
    import threading

    from omnicart.support import logs

    path = logs.escalations_path(tmp_path)
    for who in ("A", "B"):
        logs.append(path, json.dumps({C.customer_id: who}) + "\n")
    writer = threading.Thread(target=logs.append, args=(path, json.dumps({C.customer_id: "C"}) + "\n"))

    def drop(record: dict) -> bool:
        if not writer.is_alive() and writer.ident is None:  # serving answers while the log is being read
            writer.start()
            writer.join(timeout=0.3)
            assert writer.is_alive()  # it waits for the erasure's lock
        return record[C.customer_id] == "A"

    assert erasure._erase_jsonl(path, drop) == (1, set())
    writer.join(timeout=5)
    assert [json.loads(line)[C.customer_id] for line in path.read_text().splitlines()] == ["B", "C"]
