"""The support model on tiny data: product scoping, escalation below the threshold, intent routing, no PII in the
saved index, and the calibration and ranking arithmetic it relies on."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from omnicart.schemas import C
from omnicart.support.bm25 import tokenize
from omnicart.support.calibration import Calibration, calibrate, confidence_features, threshold_for_precision
from omnicart.support.dataset import SupportDataset
from omnicart.support.finetune import _batches, _key_batch_sampler
from omnicart.support.fit import fit_local
from omnicart.support.predictor import SupportModel
from serving.support import SupportRequest, SupportService, escalations_path
from training.support import catalog_entries

KEY = "test-pseudonym-key"
EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"
ORDER = "Your order is on its way; follow it with the tracking link in your confirmation email."
RETURN = "You can return it within 30 days from Orders in your account; refunds take 5 working days."
LOGIN = "Use 'Forgot password' on the sign-in page to get a reset link by email."
HOURS = "Our stores are open 9:00-20:00 Monday to Saturday and 10:00-16:00 on Sunday."
FIT_A = "Yes: the Aqua 60 dishwasher is 59.8 cm wide and fits a standard 60 cm space."
FIT_B = "No: the Aqua 45 is a slimline dishwasher, 44.8 cm wide, made for 45 cm spaces."
TICKETS = [
    ("Where is my order?", ORDER, "order_status", None),
    ("Has my parcel been shipped yet?", ORDER, "order_status", None),
    ("My delivery is late, when will it arrive?", ORDER, "order_status", None),
    ("Can you tell me the status of my order?", ORDER, "order_status", None),
    ("How do I return the kettle?", RETURN, "return_item", None),
    ("I want to send back the toaster I bought.", RETURN, "return_item", None),
    ("What's your returns policy?", RETURN, "return_item", None),
    ("The blender arrived damaged, can I return it?", RETURN, "return_item", None),
    ("I forgot my password, how do I reset it?", LOGIN, "account_access", None),
    ("I can't log in to my account.", LOGIN, "account_access", None),
    (
        f"Locked out again. Reach me at {EMAIL} or {PHONE}.",
        f"{LOGIN} We also wrote to {EMAIL}.",
        "account_access",
        None,
    ),
    ("My account is locked after too many attempts.", LOGIN, "account_access", None),
    ("What time does the store open?", HOURS, "store_hours", None),
    ("Are you open on Sunday?", HOURS, "store_hours", None),
    ("What are your opening hours?", HOURS, "store_hours", None),
    ("When does the shop close today?", HOURS, "store_hours", None),
    ("Will this dishwasher fit a 60 cm space?", FIT_A, "product_question", "P-A"),
    ("Is it wide enough for a 60 cm gap?", FIT_A, "product_question", "P-A"),
    ("Will this dishwasher fit a 60 cm space?", FIT_B, "product_question", "P-B"),
    ("Is it narrow enough for a 45 cm gap?", FIT_B, "product_question", "P-B"),
]
ITEMS = pd.DataFrame(
    {
        C.item_id: ["P-A", "P-B", "P-C"],
        C.title: ["Aqua 60 dishwasher", "Aqua 45 slimline dishwasher", "Steel kettle"],
        C.description: ["Full-size, 13 place settings.", "Slimline, 9 place settings.", "1.7 litres, 3 kW."],
    }
)


def _frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[C.question, C.answer, C.intent, C.product_id])
    return frame.assign(**{C.kb_source: "ticket"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("support") / "model"
    test = _frame([("where's my parcel?", ORDER, "order_status", None)])
    dataset = SupportDataset("tiny", "intent", _frame(TICKETS), test, catalog_entries(ITEMS))
    fit_local(dataset, directory, KEY, {"epochs": 0, "onnx": False, "val_share": 0.2})
    return directory


@pytest.fixture
def model(model_dir):
    model = SupportModel.from_directory(model_dir)
    # a fixed, readable decision rule: confidence follows the best match to a known question
    model.weights_ = {"dense_q": 1.0}
    model.calibration_ = Calibration(coef=[12.0, 0.0, 0.0], intercept=-9.0, threshold=0.5, reachable=True)
    model.threshold_ = 0.5
    return model


def test_product_scope_picks_the_answer_for_the_product_asked_about(model):
    question = "Will this dishwasher fit a 60 cm space?"
    a = model.answer(question, product_id="P-A")
    b = model.answer(question, product_id="P-B")
    assert a["scope"] == "product" and b["scope"] == "product"
    assert a["sources"][0]["text"] == FIT_A
    assert b["sources"][0]["text"] == FIT_B
    assert all(set(s["product_ids"]) <= {"P-A"} for s in a["sources"])  # never another product's answer
    assert model.answer(question, product_id="P-unknown")["scope"] == "unknown_product"


def test_confident_answers_and_escalates_below_the_threshold_with_a_reason(model, tmp_path):
    service = SupportService(lambda: model, tmp_path, KEY, model_version="7")
    good = service.answer(SupportRequest(question="Are you open on Sunday?"))
    bad = service.answer(SupportRequest(question=f"zebra quantum tapestry, call {PHONE}", customer_id="c1"))
    assert good.answered and good.answer == HOURS and good.escalation is None
    assert good.confidence >= good.threshold
    assert not bad.answered and bad.answer is None and bad.confidence < bad.threshold
    assert "below the threshold" in bad.escalation.reason
    records = [json.loads(line) for line in escalations_path(tmp_path).read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["escalation_id"] == bad.escalation.escalation_id
    assert records[0][C.customer_id] == "c1" and records[0]["route"] == bad.escalation.route
    assert PHONE not in json.dumps(records) and "tok_" in records[0][C.question]  # scrubbed before storing


def test_unreachable_precision_target_hands_everything_over(model):
    model.calibration_ = Calibration(threshold=1.01, reachable=False)
    model.threshold_ = 1.01
    decision = model.answer("Are you open on Sunday?")
    assert not decision["answered"] and "target precision" in decision["reason"]


def test_intent_is_predicted_for_routing(model):
    assert model.answer("I forgot my password and cannot sign in")[C.intent] == "account_access"
    assert model.answer("when do you open on saturday")[C.intent] == "store_hours"


def test_saved_index_holds_no_ticket_pii(model_dir):
    text = b""
    for path in model_dir.rglob("*"):
        if path.is_file() and "encoder" not in path.relative_to(model_dir).parts[0]:
            text += path.read_bytes()
    for needle in (EMAIL, "jane.doe", PHONE, "7946 0958", "79460958"):
        assert needle.encode() not in text, needle
    bm25_vocab = (model_dir / "bm25_questions" / "vocab.index.json").read_text()
    assert '"jane"' not in bm25_vocab and '"exampl"' not in bm25_vocab  # ("doe" is a stem of "does")
    assert "tok_" in (model_dir / "kb_docs.jsonl").read_text()  # the scrubbed ticket is indexed, as tokens


def test_model_directory_round_trips(model_dir):
    first = SupportModel.from_directory(model_dir).answer("What's your returns policy?")
    again = SupportModel.from_directory(model_dir).answer("What's your returns policy?")
    assert first == again
    assert first["sources"][0]["text"] == RETURN
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["docs"] == len((model_dir / "kb_docs.jsonl").read_text().splitlines())
    assert set(meta["kb_sources"]) == {"ticket", "catalog"}


def test_threshold_meets_the_target_precision_on_validation():
    rng = np.random.default_rng(0)
    conf = rng.random(1000)
    correct = rng.random(1000) < conf  # confidence is informative
    t, reachable, share, precision = threshold_for_precision(conf, correct, 0.9)
    assert reachable and precision >= 0.9 and 0 < share < 1
    assert correct[conf >= t].mean() >= 0.9
    assert not threshold_for_precision(conf, np.zeros(1000, bool), 0.9)[1]
    cal = Calibration.fit(np.stack([conf, conf, conf], axis=1), correct, 0.9)
    assert cal.reachable and cal.confidence(np.array([[0.95] * 3]))[0] > cal.confidence(np.array([[0.1] * 3]))[0]


def test_all_correct_validation_still_learns_to_hand_over_uncovered_questions():
    """Templated FAQs are answered perfectly on validation: negatives come from hiding each question's answers."""
    rng = np.random.default_rng(1)
    n, docs = 200, 50
    intent_of_doc = np.arange(docs) % 10
    intent_of_q = rng.integers(0, 10, n)
    relevant = intent_of_q[:, None] == intent_of_doc[None, :]
    fused = np.where(relevant, 0.8, 0.3) + rng.normal(0, 0.05, (n, docs))  # right answers score clearly higher
    cal = calibrate(fused.astype(np.float32), np.zeros((n, 0), np.float32), relevant, 0.9)
    assert cal.validation["synthetic_negatives"] == n and cal.reachable
    covered = cal.confidence(confidence_features(fused[:1].astype(np.float32), np.zeros((1, 0))))[0]
    uncovered = cal.confidence(confidence_features(np.full((1, docs), 0.3, np.float32), np.zeros((1, 0))))[0]
    assert covered >= cal.threshold > uncovered


def test_batches_never_put_one_answer_twice_in_a_batch():
    keys = ["yes"] * 10 + [f"a{i}" for i in range(30)]
    batches = _batches(keys, 8, np.random.default_rng(0))
    assert all(len({keys[i] for i in b}) == len(b) for b in batches)
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used)) and {keys[i] for i in used} == set(keys)  # a pair is used once at most


def test_the_trainers_batch_sampler_replays_each_epochs_key_aware_batches():
    keys = ["yes"] * 10 + [f"a{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    epochs = [_batches(keys, 8, rng) for _ in range(2)]
    sampler = _key_batch_sampler(epochs)(list(range(len(keys))), batch_size=8, drop_last=False, seed=0)
    assert len(sampler) == max(len(e) for e in epochs)  # the trainer sizes every epoch by it
    for epoch, batches in enumerate(epochs):
        sampler.set_epoch(epoch)
        assert list(sampler) == batches
        assert all(len({keys[i] for i in b}) == len(b) for b in sampler)


def _fine_tuned(tmp_path, monkeypatch, fastest: str) -> SupportModel:
    """A few MultipleNegativesRankingLoss steps; the export's speed test reports ``fastest`` as the fastest encoder
    (measured speeds are machine noise), so which backend is kept depends only on quality."""
    speeds = {"torch": 100.0, "onnx:encoder.onnx": 200.0, "onnx:encoder.int8.onnx": 300.0}
    if fastest == "torch":
        speeds["torch"] = 400.0
    # the training module's own name for it (where fit_local lives), whatever module that is
    monkeypatch.setattr(sys.modules[fit_local.__module__], "throughput", lambda encoder, *_: speeds[encoder.backend])
    test = _frame([("where's my parcel?", ORDER, "order_status", None)])
    dataset = SupportDataset("tiny", "intent", _frame(TICKETS), test, catalog_entries(ITEMS))
    config = {"epochs": 1, "max_pairs": 16, "batch_size": 4, "val_share": 0.25}
    model = fit_local(dataset, tmp_path / "m", KEY, config)
    meta = model.meta_
    assert meta["fine_tune"]["steps"] >= 3 and 0 < meta["fine_tune"]["pairs"] <= 16  # validation pairs held out
    assert model.answer("Are you open on Sunday?")["sources"][0]["text"] == HOURS
    return model


@pytest.mark.slow
def test_fine_tuning_keeps_a_faster_onnx_encoder_within_tolerance(tmp_path, monkeypatch):
    """ONNX faster than torch: an ONNX query encoder is kept, and only within 1 % of torch's validation hit@1."""
    model = _fine_tuned(tmp_path, monkeypatch, fastest="onnx_int8")
    report = model.meta_["onnx"]
    assert report["backend"] in {"onnx", "onnx_int8"}, report  # int8 when it is within tolerance, else fp32
    # the default ("auto"): the knowledge base encoded by the int8 export when it is within tolerance on a sample
    check = report["index_check"]
    assert report["index_backend"] == check["chosen"] and check["docs"] > 0
    assert (check["chosen"] == "onnx_int8") == (check["onnx_int8_hit@1"] >= 0.99 * check["onnx_hit@1"]), check
    assert report[f"{report['backend']}_hit@1"] >= 0.99 * report["onnx_hit@1"]
    assert sorted(p.name for p in (tmp_path / "m").glob("*.onnx")) == [report["file"]]  # the other export is gone
    assert model.backend != "torch"
    torch_model = SupportModel.from_directory(tmp_path / "m", backend="torch")
    a, b = model.encode(["Are you open on Sunday?"]), torch_model.encode(["Are you open on Sunday?"])
    assert float(a[0] @ b[0]) > 0.95  # the same encoder, another runtime


@pytest.mark.slow
def test_an_int8_export_that_loses_quality_does_not_encode_the_knowledge_base(tmp_path, monkeypatch):
    """The int8 export made useless (random vectors): the sample check keeps the fp32 export for the index, and the
    query encoder is not the int8 one either."""
    from omnicart.encoder import Encoder

    encode = Encoder.encode

    def broken_int8(self, texts, max_length, batch_size=64):
        if self.onnx_file is not None and "int8" in self.onnx_file.name:
            vectors = np.random.default_rng(len(texts)).standard_normal((len(texts), 384)).astype(np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return encode(self, texts, max_length, batch_size)

    monkeypatch.setattr(Encoder, "encode", broken_int8)
    report = _fine_tuned(tmp_path, monkeypatch, fastest="onnx_int8").meta_["onnx"]
    check = report["index_check"]
    assert check["onnx_int8_hit@1"] < 0.99 * check["onnx_hit@1"], check
    assert report["index_backend"] == check["chosen"] == "onnx"
    assert report["backend"] != "onnx_int8"


@pytest.mark.slow
def test_fine_tuning_keeps_torch_when_no_onnx_export_is_faster(tmp_path, monkeypatch):
    model = _fine_tuned(tmp_path, monkeypatch, fastest="torch")
    report = model.meta_["onnx"]
    assert (report["backend"], report["file"]) == ("torch", None), report
    assert not list((tmp_path / "m").glob("*.onnx"))  # neither export is kept
    assert model.backend == "torch"


@pytest.mark.slow
def test_query_side_fine_tuning_keeps_the_answers_off_the_shelf(tmp_path):
    """tune_answers False: the questions learn against every training answer; the indexed answers keep their
    off-the-shelf MiniLM embeddings (shared with the baseline's cache) and no question is indexed."""
    from omnicart import text

    pairs = _frame([(q, a, None, None) for q, a, _, _ in TICKETS])
    test = _frame([("where's my parcel?", ORDER, None, None)])
    dataset = SupportDataset("tiny", "reqa", pairs, test, test.assign(**{C.question: None}))
    config = {"tune_answers": False, "question_index": False, "cache_dir": str(tmp_path / "cache")}
    config |= {"epochs": 1, "max_pairs": 16, "batch_size": 4, "val_share": 0.25, "onnx": False}
    model = fit_local(dataset, tmp_path / "m", KEY, config)
    tuned = model.meta_["fine_tune"]
    assert tuned["steps"] >= 3 and tuned["negatives"] >= 4  # every other training answer, not only the batch's
    assert len(model.kb_.questions) == 0
    off_the_shelf = text.encode(model.kb_.docs[C.answer].tolist(), tmp_path / "cache")
    assert np.allclose(model.kb_.answer_emb, off_the_shelf, atol=2e-3)  # stored as float16
    base = text.encode(["Are you open on Sunday?"])
    assert float(model.encode(["Are you open on Sunday?"])[0] @ base[0]) < 0.9999  # the query side did move
    assert model.answer("Are you open on Sunday?")["sources"][0]["text"] == HOURS


def test_evaluation_in_chunks_of_questions_gives_the_figures_of_one_pass(model_dir):
    from training.support import evaluate

    test = _frame([(q, a, i, p) for q, a, i, p in TICKETS[::2]])
    dataset = SupportDataset("tiny", "intent", _frame(TICKETS), test, catalog_entries(ITEMS))
    model = SupportModel.from_directory(model_dir)
    whole = evaluate(model, dataset, chunk=len(test))
    chunked = evaluate(model, dataset, chunk=3)
    assert set(whole) == set(chunked) and {"model", "model+scope", "bm25", "minilm+scope"} <= set(whole)
    for name, figures in whole.items():
        assert chunked[name] == pytest.approx(figures, nan_ok=True), name
    assert whole["model"]["questions"] == len(test) and whole["model"]["hit@1"] > 0
    # the figures are those of the served scores: ``SupportModel.score``, without and within the product scope
    from omnicart.metrics import rank_metrics
    from omnicart.support.knowledge import relevance

    truth = relevance("intent", test, model.kb_)
    questions, products = test[C.question].tolist(), test[C.product_id].tolist()
    for name, scope in (("model", None), ("model+scope", products)):
        served = np.concatenate([fused for _, fused, _, _ in model.score(questions, scope, chunk=3)])
        figures = rank_metrics(served, truth)
        assert {m: whole[name][m] for m in figures} == pytest.approx(figures), name
    assert whole["model+scope"] != whole["model"]  # the scope changes some ranking here


def test_validation_on_candidates_gives_the_figures_of_every_doc(model_dir):
    """Tuning and calibrating on each question's candidates (a few docs per score, scored a block of questions at a
    time) gives the weights, metrics and calibration that all docs give, with duplicates and out-of-scope docs
    masked."""
    from omnicart.metrics import rank_metrics
    from omnicart.support.fusion import FEATURES, fuse, tune_weights
    from omnicart.support.knowledge import candidates, relevance, scope_mask

    model = SupportModel.from_directory(model_dir)
    kb, classifier = model.kb_, model.intents_
    queries = _frame(TICKETS)
    emb = model.encode(queries[C.question].tolist())
    intent_p = classifier.proba(emb)
    products = queries[C.product_id].tolist()
    feats = kb.features(emb, tokenize(queries[C.question].tolist()), intent_p, classifier.classes)
    mask, _ = scope_mask(kb, products)
    truth = relevance("intent", queries, kb)
    pool = candidates(kb, queries, "intent", emb, intent_p, classifier.classes, products, depth=3, block_cells=40)

    assert pool.docs.shape == (len(queries), 2 * 3 * len(FEATURES)) and len(kb) > 3
    for row in range(len(queries)):  # each doc once, and only docs in scope
        kept = pool.docs[row][pool.mask[row]]
        assert len(set(kept)) == len(kept) and mask[row, kept].all()
    assert (~pool.mask).any()  # repeats were there to mask
    available = [f for f in FEATURES if f != "intent"]
    w_all, m_all = tune_weights(feats, truth, available, mask)
    w_pool, m_pool = tune_weights(pool.features, pool.relevant, available, pool.mask)
    assert w_pool == w_all and m_pool == pytest.approx(m_all)
    assert rank_metrics(fuse(pool.features, w_all, pool.mask), pool.relevant) == pytest.approx(
        rank_metrics(fuse(feats, w_all, mask), truth)
    )
    full = calibrate(fuse(feats, w_all, mask), intent_p, truth, 0.9)
    pooled = calibrate(fuse(pool.features, w_all, pool.mask), intent_p, pool.relevant, 0.9)
    assert pooled.threshold == pytest.approx(full.threshold, rel=1e-4)
    assert pooled.coef == pytest.approx(full.coef, rel=1e-4) and pooled.validation == full.validation


def test_relevance_never_matches_a_question_without_intent_to_a_doc_without_one():
    from types import SimpleNamespace

    from omnicart.support.knowledge import relevance

    queries = pd.DataFrame({C.intent: ["a", None, "b"], C.answer: ["x  y", "z", "w"]})
    kb = SimpleNamespace(docs=pd.DataFrame({C.intent: [None, "a", "b"], C.answer: ["x y", "w", "z"]}))
    assert relevance("intent", queries, kb).tolist() == [[False, True, False], [False] * 3, [False, False, True]]
    assert relevance("reqa", queries, kb).tolist() == [[True, False, False], [False, False, True], [False, True, False]]


def test_in_scope_masks_out_of_scope_docs_and_keeps_the_dtype():
    """Docs outside a question's scope score -inf (so they never rank above one in scope); without a mask every doc
    keeps its score, and the scores keep their dtype (BM25 baselines are float64, fused scores float32)."""
    from omnicart.support.fusion import fuse, in_scope

    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4]])
    mask = np.array([[False, True, True], [True, True, False]])
    masked = in_scope(scores, mask)
    assert masked.dtype == np.float64 and np.isneginf(masked[~mask]).all()
    assert (masked[mask] == scores[mask]).all() and masked.argmax(axis=1).tolist() == [2, 1]
    assert in_scope(scores, None) is scores
    feats = {"dense_a": scores.astype(np.float32)}
    fused = fuse(feats, {"dense_a": 1.0}, mask)
    assert fused.dtype == np.float32 and (fused == in_scope(feats["dense_a"], mask)).all()
