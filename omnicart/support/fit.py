"""The whole support model fitted from a scrubbed dataset: fine-tune, index, tune the fusion, calibrate, export ONNX.

``fit_scrubbed`` writes a directory of plain files that ``SupportModel`` loads; the family's Ray Train job runs it
in its worker, ``fit_local`` in this process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from omnicart import text
from omnicart.encoder import Encoder, export_onnx, quantize_int8, throughput
from omnicart.metrics import rank_metrics
from omnicart.schemas import C
from omnicart.support import NAME
from omnicart.support.calibration import Calibration, calibrate
from omnicart.support.dataset import SupportDataset, scrub_dataset
from omnicart.support.finetune import fine_tune, fine_tune_queries
from omnicart.support.fusion import FEATURES, fuse, tune_weights
from omnicart.support.intents import IntentClassifier
from omnicart.support.knowledge import Candidates, KnowledgeBase, candidates, doc_key
from omnicart.support.predictor import SupportModel

MODEL_FORMAT = 1

# Sized for a shared 2-core CPU: the fine-tuning stays well inside 15 minutes (max_seconds is a hard stop).
DEFAULT_CONFIG: dict[str, Any] = {
    "epochs": 1,
    "max_pairs": 2048,  # fine-tuning pairs drawn from the training split
    "batch_size": 32,  # in-batch negatives; no two pairs of one batch share an answer (or an intent)
    "lr": 5e-5,
    "warmup_share": 0.1,
    "train_question_length": 48,
    "train_answer_length": 64,
    "freeze_layers": 2,  # embeddings and the lowest transformer layers stay as pre-trained (a CPU saving)
    # False: only the question side is fine-tuned, against every training answer as a negative; the answers keep
    # their off-the-shelf embeddings, so the pool is encoded once (shared with the MiniLM baseline via cache_dir)
    "tune_answers": True,
    "question_index": True,  # index the known questions of each answer (dense_q, bm25_q)
    "cache_dir": None,  # where off-the-shelf answer embeddings are cached (tune_answers False)
    "max_seconds": 840.0,
    "question_length": 64,  # tokens when encoding questions for the index and at query time
    "answer_length": 128,  # fine-tuned answers only; off-the-shelf ones use MiniLM's own 256 (the baseline's)
    "val_share": 0.1,
    "max_val": 1000,
    "target_precision": 0.9,
    "use_product_scope": True,  # validate (tune, calibrate) with product-scoped retrieval when ids are given
    # validation tunes and calibrates on each question's candidates: the docs among the best this many by each score
    "candidate_depth": 50,
    "onnx": True,
    # the runtime that encodes the knowledge base (validation's and the served one) on a CPU: "onnx" is the same
    # fp32 transformer as torch (the same vectors up to float rounding) at about twice its speed here; "onnx_int8"
    # is faster again (about 1.7 × here), with int8 weights; "auto" takes the int8 export when its validation hit@1
    # on a sample of the knowledge base is within ``onnx_tolerance`` of the fp32 export's, else the fp32 one;
    # "torch" always on a GPU or when ``onnx`` is off
    "index_backend": "auto",
    "index_check_docs": 2000,  # "auto": docs in the sample (and the validation questions' own answers, "reqa")
    "index_check_rows": 5,  # "auto": at most this many rows (known questions) of each sampled doc
    "onnx_tolerance": 0.01,  # a faster query encoder is used when its validation hit@1 is within 1 % of the index's
    "seed": 0,
    "threads": None,  # torch threads in the worker; None: every core (Ray's default would be one)
}


class _Cached:
    """Encode each distinct text once per max length (validation and final index share most texts)."""

    def __init__(self, encoder: Encoder, max_length: int) -> None:
        self.encoder, self.max_length, self.cache = encoder, max_length, {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            self.cache.update(zip(todo, self.encoder.encode(todo, self.max_length), strict=True))
        if not texts:
            return np.zeros((0, text.DIM), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts]).astype(np.float32)


class _Encoders(NamedTuple):
    """One export's encoding caches: answers and questions (their max lengths differ)."""

    answers: _Cached
    questions: _Cached


def _within_tolerance(hit1: float, reference_hit1: float, tolerance: float) -> bool:
    """An encoder's validation hit@1 is good enough when it is within ``tolerance`` (relative) of the reference's."""
    return hit1 >= (1 - tolerance) * reference_hit1


def _available(kb: KnowledgeBase, classifier: IntentClassifier) -> list[str]:
    names = ["dense_a", "bm25_a"]
    if len(kb.questions):
        names += ["dense_q", "bm25_q"]
    if len(classifier.classes) >= 2:
        names.append("intent")
    return [n for n in FEATURES if n in names]


def fit_scrubbed(dataset: SupportDataset, directory: Path, config: dict[str, Any]) -> dict[str, float]:
    """Fine-tune, index, tune the fusion, calibrate and export: write the whole model into ``directory``.

    ``dataset`` must already be scrubbed (``scrub_dataset``); validation is a random ``val_share`` of the training
    pairs, held out of fine-tuning and of the validation knowledge base's questions."""
    import torch

    cfg = {**DEFAULT_CONFIG, **config}
    torch.set_num_threads(int(cfg["threads"] or os.cpu_count() or 1))
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg["seed"])
    train = dataset.train.reset_index(drop=True)
    n_val = min(int(round(cfg["val_share"] * len(train))), int(cfg["max_val"])) if len(train) >= 10 else 0
    is_val = np.zeros(len(train), dtype=bool)
    is_val[rng.choice(len(train), size=n_val, replace=False)] = True
    fit_rows, val_rows = train[~is_val].reset_index(drop=True), train[is_val].reset_index(drop=True)
    device = "cuda" if torch.cuda.is_available() else None
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    # 1. fine-tune the dense encoder on the fitting pairs
    with_q = fit_rows[fit_rows[C.question].notna()]
    by_intent = dataset.protocol == "intent" and with_q[C.intent].notna().all() and len(with_q)
    keys = with_q[C.intent].tolist() if by_intent else [doc_key(a) for a in with_q[C.answer]]
    questions, output = with_q[C.question].tolist(), directory / "encoder"
    if cfg["tune_answers"]:
        tuned = fine_tune(text.model_path(), output, questions, with_q[C.answer].tolist(), keys, cfg)
    else:
        cache_dir = Path(cfg["cache_dir"]) if cfg["cache_dir"] else None

        def enc_a(texts: Sequence[str]) -> np.ndarray:
            return text.encode(texts, cache_dir, device)

        answer_keys = [doc_key(a) for a in with_q[C.answer]]
        bank = list(dict.fromkeys(answer_keys))
        position = {a: n for n, a in enumerate(bank)}
        targets = [position[a] for a in answer_keys]
        bank_emb = enc_a(bank)
        stages["encode_answer_bank"] = time.perf_counter() - clock
        groups = None
        if by_intent:
            intent_of = dict(zip(answer_keys, with_q[C.intent], strict=True))
            groups = (with_q[C.intent].tolist(), [intent_of[a] for a in bank])
        tuned = fine_tune_queries(text.model_path(), output, questions, targets, bank_emb, cfg, groups)
    stages["fine_tune"] = tuned["seconds"]
    clock = time.perf_counter()
    exports: dict[str, Path] = {}
    if cfg["onnx"]:
        exports["onnx"] = export_onnx(output, directory / "encoder.onnx")
        exports["onnx_int8"] = quantize_int8(exports["onnx"], directory / "encoder.int8.onnx")
        stages["onnx_export"] = time.perf_counter() - clock
        clock = time.perf_counter()
    if not cfg["question_index"]:
        fit_rows = fit_rows.assign(**{C.question: None})  # the questions still train; they are not indexed
    labelled = with_q[with_q[C.intent].notna()]
    val_kb_rows = [fit_rows, dataset.extra_kb]
    if dataset.protocol == "reqa":
        val_kb_rows.append(val_rows.assign(**{C.question: None}))
    val_kb_frame = pd.concat(val_kb_rows, ignore_index=True)
    index_check: dict[str, Any] = {}
    if device is None and cfg["index_backend"] == "auto" and {"onnx", "onnx_int8"} <= set(exports) and len(val_rows):
        index_backend, index_check, chosen = _check_index(
            output, exports, val_kb_frame, val_rows, dataset.protocol, None if cfg["tune_answers"] else enc_a, cfg
        )
        stages["index_check"] = time.perf_counter() - clock
        clock = time.perf_counter()
        enc_q = chosen.questions
        if cfg["tune_answers"]:
            enc_a = chosen.answers
    else:
        backend = "onnx" if cfg["index_backend"] == "auto" else cfg["index_backend"]
        index_backend = backend if device is None and backend in exports else "torch"
        index_encoder = Encoder(output, exports.get(index_backend), device=device)
        if cfg["tune_answers"]:
            enc_a = _Cached(index_encoder, cfg["answer_length"])
        enc_q = _Cached(index_encoder, cfg["question_length"])

    # 2. validation: a knowledge base without the validation questions; tune the fusion, calibrate confidence
    val_kb = KnowledgeBase.build(val_kb_frame, enc_a, enc_q)
    classifier = IntentClassifier.fit(enc_q(labelled[C.question].tolist()), labelled[C.intent].tolist())
    val_questions = val_rows[C.question].tolist()
    val_products = val_rows[C.product_id].tolist() if cfg["use_product_scope"] else [None] * len(val_rows)

    def val_candidates(q_emb: np.ndarray) -> tuple[Candidates, np.ndarray]:
        p = classifier.proba(q_emb)
        pool = candidates(
            val_kb, val_rows, dataset.protocol, q_emb, p, classifier.classes, val_products, cfg["candidate_depth"]
        )
        return pool, p

    weights = {name: float(name == "dense_a") for name in FEATURES}
    val_metrics: dict[str, float] = {}
    calibration = Calibration(target_precision=cfg["target_precision"])
    onnx_report: dict[str, Any] = {"backend": "torch", "index_backend": index_backend, "index_check": index_check}
    if len(val_rows) and len(val_kb):
        pool, intent_p = val_candidates(enc_q(val_questions))
        weights, val_metrics = tune_weights(pool.features, pool.relevant, _available(val_kb, classifier), pool.mask)
        fused = fuse(pool.features, weights, pool.mask)
        calibration = calibrate(fused, intent_p, pool.relevant, cfg["target_precision"])
        dense_only = rank_metrics(fuse(pool.features, {"dense_a": 1.0}, pool.mask), pool.relevant)
        val_metrics = {**val_metrics, "dense_a_hit@1": dense_only["hit@1"]}
        stages["validate"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if exports:
            onnx_report = _choose_onnx(
                directory, exports, index_backend, val_questions, val_candidates, weights, val_metrics["hit@1"], cfg
            ) | {"index_check": index_check}
            stages["onnx"] = time.perf_counter() - clock
            clock = time.perf_counter()

    # 3. the knowledge base to serve: every training pair plus the extra entries, and the final intent classifier
    kb = KnowledgeBase.build(
        dataset.kb if cfg["question_index"] else dataset.kb.assign(**{C.question: None}), enc_a, enc_q
    )
    labelled = train[train[C.question].notna() & train[C.intent].notna()]
    classifier = IntentClassifier.fit(enc_q(labelled[C.question].tolist()), labelled[C.intent].tolist())
    stages["index"] = time.perf_counter() - clock
    for path in exports.values():  # only the served query encoder's export stays
        if path.name != onnx_report.get("file"):
            path.unlink(missing_ok=True)
    kb.save(directory)
    classifier.save(directory)
    meta = {
        "format": MODEL_FORMAT,
        "family": NAME,
        "dataset": dataset.name,
        "protocol": dataset.protocol,
        "fingerprint": dataset.fingerprint(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": cfg,
        "weights": weights,
        "calibration": calibration.__dict__,
        "fine_tune": tuned,
        "answer_encoder": "fine-tuned" if cfg["tune_answers"] else "off-the-shelf all-MiniLM-L6-v2 (frozen)",
        "seconds": {k: round(v, 1) for k, v in stages.items()},
        "validation": val_metrics,
        "onnx": onnx_report,
        "docs": len(kb),
        "questions": len(kb.questions),
        "kb_sources": kb.docs[C.kb_source].value_counts().to_dict(),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, default=float))
    return {
        "docs": float(len(kb)),
        "fine_tune_seconds": float(tuned["seconds"]),
        "fine_tune_steps": float(tuned["steps"]),
        "val_hit@1": float(val_metrics.get("hit@1", float("nan"))),
    }


def _check_index(
    encoder_dir: Path,
    exports: dict[str, Path],
    kb_frame: pd.DataFrame,
    val_rows: pd.DataFrame,
    protocol: str,
    fixed_answers: Any,
    cfg: dict[str, Any],
) -> tuple[str, dict[str, Any], _Encoders]:
    """The export that encodes the knowledge base: "onnx_int8" when its validation hit@1 is within ``onnx_tolerance``
    of "onnx"'s (fp32), both judged on the same sample of the knowledge base (``kb_frame``: at most
    ``index_check_docs`` docs drawn by ``seed``, plus each validation question's own answer under "reqa", with at most
    ``index_check_rows`` rows of each) with the fusion of the dense and BM25 scores tuned for each. The cost does not
    grow with the knowledge base. Returns the backend, the report and the chosen export's encoding caches (answers,
    questions), which already hold the sample's and the validation questions' vectors. ``fixed_answers`` encodes
    the answers when they are not fine-tuned (off-the-shelf vectors, the same for both exports)."""
    keys = pd.Series([doc_key(a) for a in kb_frame[C.answer]], index=kb_frame.index)
    distinct = keys.unique()
    rng = np.random.default_rng(cfg["seed"])
    drawn = set(rng.choice(distinct, size=min(len(distinct), int(cfg["index_check_docs"])), replace=False).tolist())
    if protocol == "reqa":
        drawn |= {doc_key(a) for a in val_rows[C.answer]}
    in_sample = keys[keys.isin(drawn)]
    sample = kb_frame.loc[in_sample.groupby(in_sample, sort=False).head(int(cfg["index_check_rows"])).index]
    questions = val_rows[C.question].tolist()
    products = val_rows[C.product_id].tolist() if cfg["use_product_scope"] else [None] * len(val_rows)
    no_intents = np.zeros((len(val_rows), 0), dtype=np.float32)
    report: dict[str, Any] = {"docs": 0, "tolerance": cfg["onnx_tolerance"]}
    caches: dict[str, _Encoders] = {}
    for name in ("onnx", "onnx_int8"):
        encoder = Encoder(encoder_dir, exports[name])
        caches[name] = enc = _Encoders(_Cached(encoder, cfg["answer_length"]), _Cached(encoder, cfg["question_length"]))
        kb = KnowledgeBase.build(sample, fixed_answers or enc.answers, enc.questions)
        pool = candidates(
            kb, val_rows, protocol, enc.questions(questions), no_intents, [], products, cfg["candidate_depth"]
        )
        _, metrics = tune_weights(pool.features, pool.relevant, _available(kb, IntentClassifier()), pool.mask)
        report |= {"docs": len(kb), f"{name}_hit@1": metrics["hit@1"]}
    int8_ok = _within_tolerance(report["onnx_int8_hit@1"], report["onnx_hit@1"], cfg["onnx_tolerance"])
    chosen = "onnx_int8" if int8_ok else "onnx"
    report["chosen"] = chosen
    return chosen, report, caches[chosen]


def _choose_onnx(
    directory: Path,
    exports: dict[str, Path],
    index_backend: str,
    questions: list[str],
    val_candidates: Any,
    weights: dict[str, float],
    index_hit1: float,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """The query encoder to serve: the fastest of torch and the fp32 and int8 ONNX exports (``exports``) whose
    validation hit@1 is within tolerance of the index's own encoder (``index_backend``, ``index_hit1``, always one of
    the candidates, so there is always one to choose)."""
    sample = questions[:256]
    report: dict[str, Any] = {
        "tolerance": cfg["onnx_tolerance"],
        "index_backend": index_backend,
        f"{index_backend}_hit@1": index_hit1,
    }
    # serving replicas run on CPU: every candidate is timed on CPU, even when training had a GPU
    candidates = {"torch": Encoder(directory / "encoder")} | {
        name: Encoder(directory / "encoder", path) for name, path in exports.items()
    }
    for name, candidate in candidates.items():
        if name != index_backend:
            pool, _ = val_candidates(candidate.encode(questions, cfg["question_length"]))
            report[f"{name}_hit@1"] = rank_metrics(fuse(pool.features, weights, pool.mask), pool.relevant)["hit@1"]
        report[f"{name}_sentences_per_s"] = throughput(candidate, sample, cfg["question_length"])
    # the fastest encoder whose quality is within tolerance of the index encoder's
    good = [n for n in candidates if _within_tolerance(report[f"{n}_hit@1"], index_hit1, cfg["onnx_tolerance"])]
    chosen = max(good, key=lambda n: report[f"{n}_sentences_per_s"])
    report["backend"] = chosen
    report["file"] = exports[chosen].name if chosen in exports else None
    return report


def fit_local(dataset: SupportDataset, directory: Path, key: str, config: dict[str, Any] | None = None) -> SupportModel:
    """The same fit without Ray (tests, notebooks): scrub, fit into ``directory``, load."""
    fit_scrubbed(scrub_dataset(dataset, key), directory, config or {})
    return SupportModel.from_directory(directory)
