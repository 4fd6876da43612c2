"""The support family's retrieval engine: BM25 and dense indexes of a knowledge base, their fusion and calibration.

A knowledge-base entry (a "doc") is one unique answer text: a past ticket's answer, an FAQ answer, a product Q&A
answer, or a product's catalog text. A doc keeps the questions it is known to answer, its intent and its products.
For a customer question each doc gets five scores, fused by weights tuned on validation data:

- ``dense_a`` cosine(question, answer) and ``dense_q`` max cosine(question, the doc's known questions) — MiniLM;
- ``bm25_a`` and ``bm25_q``, the same with BM25 (k1 = 1.5, b = 0.75), each divided by the query's best score;
- ``intent`` the intent classifier's probability of the doc's intent.

Everything is saved as plain files (JSON lines, npz, the bm25s index, the sentence-transformers folder, ONNX).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart.schemas import C

FEATURES = ("dense_a", "dense_q", "bm25_a", "bm25_q", "intent")
BM25_K1 = 1.5
BM25_B = 0.75
DIM = 384
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STEMMER: Any = None
_STOP: frozenset[str] = frozenset()


# --- lexical ---------------------------------------------------------------------------------------------------------
def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word tokens without English stop words, Snowball-stemmed (the same for index and query)."""
    global _STEMMER, _STOP
    if _STEMMER is None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        _STEMMER, _STOP = Stemmer.Stemmer("english"), frozenset(STOPWORDS_EN)
    return [_STEMMER.stemWords([w for w in _TOKEN.findall((t or "").lower()) if w not in _STOP]) for t in texts]


class BM25Index:
    """Okapi BM25 (Lucene variant, k1 = 1.5, b = 0.75) over a list of texts, by the maintained ``bm25s`` library."""

    def __init__(self, k1: float = BM25_K1, b: float = BM25_B) -> None:
        self.k1 = k1
        self.b = b

    def fit(self, texts: Sequence[str]) -> BM25Index:
        import bm25s

        self.retriever_ = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        self.n_ = len(texts)
        if self.n_:
            self.retriever_.index(tokenize(texts), show_progress=False)
        return self

    def scores(self, query_tokens: Sequence[list[str]]) -> np.ndarray:
        """(queries × texts) BM25 scores; a query with no known token scores 0 everywhere."""
        out = np.zeros((len(query_tokens), self.n_), dtype=np.float32)
        if not self.n_:
            return out
        vocab = self.retriever_.vocab_dict
        for i, tokens in enumerate(query_tokens):
            known = [t for t in tokens if t in vocab and t != ""]
            if known:
                out[i] = self.retriever_.get_scores(known)
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "bm25.json").write_text(json.dumps({"k1": self.k1, "b": self.b, "n": self.n_}))
        if self.n_:
            self.retriever_.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path) -> BM25Index:
        import bm25s

        meta = json.loads((directory / "bm25.json").read_text())
        index = cls(meta["k1"], meta["b"])
        index.n_ = meta["n"]
        index.retriever_ = bm25s.BM25.load(str(directory), show_progress=False) if index.n_ else None
        return index


# --- dense -----------------------------------------------------------------------------------------------------------
class Encoder:
    """L2-normalised sentence embeddings from a sentence-transformers folder, run by torch or by onnxruntime.

    The ONNX path (``onnx_file``) exports the same transformer and does the mean pooling here; it needs neither
    torch nor sentence-transformers at serving time."""

    def __init__(
        self, directory: Path, onnx_file: Path | None = None, device: str | None = None, threads: int | None = None
    ) -> None:
        self.directory = Path(directory)
        self.onnx_file = Path(onnx_file) if onnx_file else None
        self.device = device
        self.threads = threads
        self._model: Any = None
        self._session: Any = None
        self._tokenizer: Any = None

    @property
    def backend(self) -> str:
        return "torch" if self.onnx_file is None else f"onnx:{self.onnx_file.name}"

    def torch_model(self) -> Any:
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder; never reach for a model hub
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.directory), device=self.device or "cpu")
        return self._model

    def encode(self, texts: Sequence[str], max_length: int, batch_size: int = 64) -> np.ndarray:
        texts = [t if t else " " for t in texts]
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        if self.onnx_file is None:
            model = self.torch_model()
            model.max_seq_length = max_length
            vectors = model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
            )
            return np.asarray(vectors, dtype=np.float32)
        return self._encode_onnx(texts, max_length, batch_size)

    def _encode_onnx(self, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
        if self._session is None:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(self.onnx_file), options, providers=["CPUExecutionProvider"])
            self._inputs = {i.name for i in self._session.get_inputs()}
            self._tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        tok = self._tokenizer
        tok.enable_truncation(max_length)
        tok.enable_padding()  # to the longest in the batch
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = tok.encode_batch([texts[i] for i in idx])
            ids = np.asarray([e.ids for e in enc], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feeds)[0]
            pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


def export_onnx(encoder_dir: Path, path: Path) -> Path:
    """Export the transformer of a sentence-transformers folder to ONNX (dynamic batch and sequence axes)."""
    import torch

    model = Encoder(encoder_dir).torch_model()
    transformer = model[0].auto_model.to("cpu").eval()
    tokens = model.tokenizer(
        ["an example question", "a second, longer example sentence"], return_tensors="pt", padding=True
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001 - traced
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "hidden"]}
    with torch.no_grad():
        torch.onnx.export(
            _Hidden(transformer),
            tuple(tokens[n] for n in names),
            str(path),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, and dynamic axes as declared
        )
    return path


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of the weights (per channel), activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    return target


def throughput(encoder: Encoder, texts: Sequence[str], max_length: int) -> float:
    """Sentences per second of ``encoder`` on ``texts`` (one warm-up batch first)."""
    encoder.encode(list(texts[:8]), max_length)
    started = time.perf_counter()
    encoder.encode(list(texts), max_length)
    return len(texts) / max(time.perf_counter() - started, 1e-9)


# --- intents ---------------------------------------------------------------------------------------------------------
@dataclass
class IntentClassifier:
    """Multinomial logistic regression on question embeddings: the route of a question (and a fusion feature)."""

    classes: list[str] = field(default_factory=list)
    coef: np.ndarray = field(default_factory=lambda: np.zeros((0, DIM), dtype=np.float32))
    intercept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    @classmethod
    def fit(cls, embeddings: np.ndarray, intents: Sequence[Any]) -> IntentClassifier:
        labels = np.asarray([i if isinstance(i, str) and i else "" for i in intents], dtype=object)
        keep = labels != ""
        classes = sorted(set(labels[keep]))
        if len(classes) < 2:
            return cls(classes=classes)
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=10.0, max_iter=2000).fit(embeddings[keep], labels[keep])
        return cls(
            classes=[str(c) for c in clf.classes_],
            coef=clf.coef_.astype(np.float32),
            intercept=clf.intercept_.astype(np.float32),
        )

    def proba(self, embeddings: np.ndarray) -> np.ndarray:
        """(questions × classes) probabilities; a single known intent gets 1, none gives an empty matrix."""
        if len(self.classes) < 2:
            return np.ones((len(embeddings), len(self.classes)), dtype=np.float32)
        logits = embeddings @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def save(self, directory: Path) -> None:
        np.savez(directory / "intent.npz", coef=self.coef, intercept=self.intercept)
        (directory / "intent.json").write_text(json.dumps({"classes": self.classes}))

    @classmethod
    def load(cls, directory: Path) -> IntentClassifier:
        arrays = np.load(directory / "intent.npz")
        classes = json.loads((directory / "intent.json").read_text())["classes"]
        return cls(classes=classes, coef=arrays["coef"], intercept=arrays["intercept"])


# --- the knowledge base ----------------------------------------------------------------------------------------------
def doc_key(answer: str) -> str:
    """Docs are unique answer texts: compared after whitespace normalisation."""
    return " ".join(answer.split())


@dataclass
class KnowledgeBase:
    """Docs (unique answers with their intent, products and source) and the questions each is known to answer."""

    docs: pd.DataFrame  # doc_id, answer, intent, product_ids (list), kb_source
    questions: pd.DataFrame  # question, doc (row of docs)
    answer_emb: np.ndarray
    question_emb: np.ndarray
    bm25_answers: BM25Index
    bm25_questions: BM25Index

    @staticmethod
    def group(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One doc per unique answer; ``frame`` has question (may be empty), answer, intent, product_id, kb_source."""
        rows = frame.assign(_key=[doc_key(a) for a in frame[C.answer]])
        rows = rows[rows["_key"] != ""]
        docs, questions = [], []
        for n, (key, grp) in enumerate(rows.groupby("_key", sort=False)):
            intents = [i for i in grp[C.intent] if isinstance(i, str) and i]
            products = sorted({p for p in grp[C.product_id] if isinstance(p, str) and p})
            docs.append(
                {
                    C.doc_id: f"d{n:06d}",
                    C.answer: key,
                    C.intent: max(set(intents), key=intents.count) if intents else None,
                    "product_ids": products,
                    C.kb_source: str(grp[C.kb_source].iloc[0]),
                }
            )
            for q in dict.fromkeys(q for q in grp[C.question] if isinstance(q, str) and q.strip()):
                questions.append({C.question: q, "doc": n})
        docs_frame = pd.DataFrame(docs, columns=[C.doc_id, C.answer, C.intent, "product_ids", C.kb_source])
        return docs_frame, pd.DataFrame(questions, columns=[C.question, "doc"])

    @classmethod
    def build(
        cls, frame: pd.DataFrame, encode_answers: Callable[[list[str]], np.ndarray], encode_questions: Callable
    ) -> KnowledgeBase:
        docs, questions = cls.group(frame)
        answers = docs[C.answer].tolist()
        qtexts = questions[C.question].tolist()
        return cls(
            docs=docs,
            questions=questions,
            answer_emb=encode_answers(answers),
            question_emb=encode_questions(qtexts),
            bm25_answers=BM25Index().fit(answers),
            bm25_questions=BM25Index().fit(qtexts),
        )

    def __post_init__(self) -> None:
        self.index_products()

    def index_products(self) -> None:
        self.by_product_: dict[str, np.ndarray] = {}
        lists: dict[str, list[int]] = {}
        for n, products in enumerate(self.docs["product_ids"]):
            for p in products:
                lists.setdefault(p, []).append(n)
        self.by_product_ = {p: np.asarray(v) for p, v in lists.items()}
        self.generic_ = np.asarray([n for n, p in enumerate(self.docs["product_ids"]) if not p], dtype=int)
        doc_of_question = self.questions["doc"].to_numpy(dtype=int) if len(self.questions) else np.zeros(0, int)
        self.q_order_ = np.argsort(doc_of_question, kind="stable")
        sorted_docs = doc_of_question[self.q_order_]
        self.q_docs_, self.q_starts_ = np.unique(sorted_docs, return_index=True)
        self.doc_intents_ = self.docs[C.intent].tolist()

    def __len__(self) -> int:
        return len(self.docs)

    def scope(self, product_id: str | None) -> tuple[np.ndarray | None, str]:
        """Docs a question may be answered from: its product's and the generic ones; None means all docs."""
        if not product_id:
            return None, "all"
        if product_id in self.by_product_:
            return np.concatenate([self.by_product_[product_id], self.generic_]), "product"
        return None, "unknown_product"

    def _per_doc_max(self, per_question: np.ndarray) -> np.ndarray:
        """(queries × questions) → (queries × docs): the best of each doc's questions; 0 for docs with none."""
        out = np.zeros((per_question.shape[0], len(self.docs)), dtype=np.float32)
        if per_question.shape[1]:
            reduced = np.maximum.reduceat(per_question[:, self.q_order_], self.q_starts_, axis=1)
            out[:, self.q_docs_] = reduced
        return out

    def features(
        self, query_emb: np.ndarray, query_tokens: Sequence[list[str]], intent_p: np.ndarray, classes: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """The five (queries × docs) score matrices named in FEATURES."""
        dense_a = query_emb @ self.answer_emb.T
        dense_q = self._per_doc_max(query_emb @ self.question_emb.T) if len(self.questions) else None
        bm25_a = _normalise(self.bm25_answers.scores(query_tokens))
        bm25_q = self._per_doc_max(_normalise(self.bm25_questions.scores(query_tokens)))
        intent = np.zeros_like(dense_a)
        if len(classes) and intent_p.size:
            col = {c: i for i, c in enumerate(classes)}
            idx = np.asarray([col.get(i, -1) if isinstance(i, str) else -1 for i in self.doc_intents_])
            has = idx >= 0
            intent[:, has] = intent_p[:, idx[has]]
        return {
            "dense_a": dense_a.astype(np.float32),
            "dense_q": dense_q if dense_q is not None else np.zeros_like(dense_a),
            "bm25_a": bm25_a,
            "bm25_q": bm25_q,
            "intent": intent,
        }

    # --- plain files ---
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "kb_docs.jsonl", "w", encoding="utf-8") as f:
            for row in self.docs.to_dict("records"):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        with open(directory / "kb_questions.jsonl", "w", encoding="utf-8") as f:
            for row in self.questions.to_dict("records"):
                f.write(json.dumps({C.question: row[C.question], "doc": int(row["doc"])}, ensure_ascii=False) + "\n")
        np.savez(
            directory / "kb_embeddings.npz",
            answers=self.answer_emb.astype(np.float16),
            questions=self.question_emb.astype(np.float16),
        )
        self.bm25_answers.save(directory / "bm25_answers")
        self.bm25_questions.save(directory / "bm25_questions")

    @classmethod
    def load(cls, directory: Path) -> KnowledgeBase:
        docs = pd.read_json(directory / "kb_docs.jsonl", lines=True, dtype=False)
        if docs.empty:
            docs = pd.DataFrame(columns=[C.doc_id, C.answer, C.intent, "product_ids", C.kb_source])
        docs[C.intent] = [i if isinstance(i, str) and i else None for i in docs[C.intent]]
        qpath = directory / "kb_questions.jsonl"
        questions = pd.read_json(qpath, lines=True, dtype=False) if qpath.stat().st_size else pd.DataFrame()
        if questions.empty:
            questions = pd.DataFrame({C.question: pd.Series(dtype=object), "doc": pd.Series(dtype=int)})
        arrays = np.load(directory / "kb_embeddings.npz")
        return cls(
            docs=docs,
            questions=questions,
            answer_emb=arrays["answers"].astype(np.float32),
            question_emb=arrays["questions"].astype(np.float32).reshape(-1, DIM),
            bm25_answers=BM25Index.load(directory / "bm25_answers"),
            bm25_questions=BM25Index.load(directory / "bm25_questions"),
        )


def _normalise(scores: np.ndarray) -> np.ndarray:
    """Each query's scores divided by its best (0 stays 0), so BM25 is on the cosine's scale."""
    top = scores.max(axis=1, keepdims=True) if scores.size else scores
    return np.divide(scores, top, out=np.zeros_like(scores), where=top > 0).astype(np.float32)


# --- fusion, ranking metrics and calibration -------------------------------------------------------------------------
def fuse(features: dict[str, np.ndarray], weights: dict[str, float], mask: np.ndarray | None = None) -> np.ndarray:
    """The weighted sum of the feature matrices; docs outside a question's scope (``mask`` False) get -inf."""
    total = None
    for name in FEATURES:
        w = weights.get(name, 0.0)
        if w:
            total = features[name] * w if total is None else total + features[name] * w
    if total is None:
        total = np.zeros_like(features["dense_a"])
    return total if mask is None else np.where(mask, total, -np.inf).astype(np.float32)


def rank_metrics(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> dict[str, float]:
    """hit@1 and MRR@k of (queries × docs) ``scores`` against a boolean (queries × docs) ``relevant``."""
    if not len(scores):
        return {"hit@1": 0.0, f"mrr@{k}": 0.0}
    kk = min(k, scores.shape[1])
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable"), axis=1)
    # a doc outside the question's scope (-inf) is never a hit, even when fewer than k docs are in scope
    hits = np.take_along_axis(relevant, top, axis=1) & np.isfinite(np.take_along_axis(scores, top, axis=1))
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    rr = np.where(first >= 0, 1.0 / (np.maximum(first, 0) + 1), 0.0)
    return {"hit@1": float(hits[:, 0].mean()), f"mrr@{k}": float(rr.mean())}


WEIGHT_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def tune_weights(
    features: dict[str, np.ndarray],
    relevant: np.ndarray,
    available: Sequence[str] = FEATURES,
    mask: np.ndarray | None = None,
    sweeps: int = 3,
) -> tuple[dict[str, float], dict[str, float]]:
    """Coordinate ascent over non-negative fusion weights, maximising validation hit@1 (MRR@10 breaks ties)."""
    weights = {name: 0.0 for name in FEATURES}
    weights["dense_a"] = 1.0

    def objective(w: dict[str, float]) -> tuple[float, dict[str, float]]:
        m = rank_metrics(fuse(features, w, mask), relevant)
        return m["hit@1"] + 0.1 * m["mrr@10"], m

    best, best_metrics = objective(weights)
    for _ in range(sweeps):
        improved = False
        for name in available:
            for value in WEIGHT_GRID:
                if value == weights[name]:
                    continue
                trial = {**weights, name: value}
                if not any(trial.values()):
                    continue
                score, metrics = objective(trial)
                if score > best + 1e-9:
                    best, best_metrics, weights, improved = score, metrics, trial, True
        if not improved:
            break
    return weights, best_metrics


def confidence_features(fused: np.ndarray, intent_p: np.ndarray) -> np.ndarray:
    """Per question: the best fused score, its margin over the runner-up, and the top intent probability."""
    if fused.shape[1] == 0:
        return np.zeros((len(fused), 3), dtype=np.float32)
    part = -np.partition(-fused, min(1, fused.shape[1] - 1), axis=1)
    s1 = np.where(np.isfinite(part[:, 0]), part[:, 0], 0.0)
    s2 = part[:, 1] if fused.shape[1] > 1 else np.full_like(s1, -np.inf)
    s2 = np.where(np.isfinite(s2), s2, s1 - 1.0)  # a lone candidate: a clear, not an infinite, margin
    pint = intent_p.max(axis=1) if intent_p.size else np.zeros_like(s1)
    return np.stack([s1, np.minimum(s1 - s2, 1.0), pint], axis=1).astype(np.float32)


@dataclass
class Calibration:
    """P(the top answer is right) from the confidence features, and the threshold that meets a target precision."""

    coef: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    intercept: float = 0.0
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    threshold: float = 1.01  # above 1: escalate everything
    target_precision: float = 0.9
    reachable: bool = False
    validation: dict[str, float] = field(default_factory=dict)

    def confidence(self, feats: np.ndarray) -> np.ndarray:
        z = (feats - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    @classmethod
    def fit(cls, feats: np.ndarray, correct: np.ndarray, target_precision: float, seed: int = 0) -> Calibration:
        correct = np.asarray(correct, dtype=bool)
        mean = feats.mean(axis=0) if len(feats) else np.zeros(3)
        scale = feats.std(axis=0) if len(feats) else np.ones(3)
        scale = np.where(scale > 1e-6, scale, 1.0)
        cal = cls(mean=mean.tolist(), scale=scale.tolist(), target_precision=target_precision)
        if len(correct) == 0:
            return cal
        if correct.all() or not correct.any():
            # one class only: the confidence is the observed accuracy for every question
            p = float(np.clip(correct.mean(), 1e-3, 1 - 1e-3))
            cal.intercept = float(np.log(p / (1 - p)))
            probs = np.full(len(correct), cal.confidence(feats[:1])[0] if len(feats) else p)
        else:
            from sklearn.linear_model import LogisticRegression
            from sklearn.model_selection import StratifiedKFold, cross_val_predict

            z = (feats - mean) / scale
            folds = int(min(5, np.bincount(correct.astype(int)).min()))
            lr = LogisticRegression(max_iter=1000)
            if folds >= 2:
                cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
                probs = cross_val_predict(lr, z, correct, cv=cv, method="predict_proba")[:, 1]
            else:
                probs = lr.fit(z, correct).predict_proba(z)[:, 1]
            lr.fit(z, correct)
            cal.coef = lr.coef_[0].tolist()
            cal.intercept = float(lr.intercept_[0])
        cal.threshold, cal.reachable, answered, precision = threshold_for_precision(probs, correct, target_precision)
        cal.validation = {
            "questions": float(len(correct)),
            "accuracy": float(correct.mean()),
            "answered_share": answered,
            "answered_precision": precision,
        }
        return cal


def threshold_for_precision(
    confidence: np.ndarray, correct: np.ndarray, target: float, min_answered: int = 5
) -> tuple[float, bool, float, float]:
    """The lowest confidence whose answered set (all at or above it) still has precision ≥ ``target``.

    Returns (threshold, reachable, answered share, answered precision); unreachable gives 1.01 (hand everything over).
    """
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(order) + 1)
    precision = hits / n
    ok = np.flatnonzero((precision >= target) & (n >= min(min_answered, len(order))))
    if not len(ok):
        return 1.01, False, 0.0, 0.0
    last = int(ok[-1])
    return float(confidence[order[last]]), True, float((last + 1) / len(order)), float(precision[last])


def share_accuracy_curve(
    confidence: np.ndarray, correct: np.ndarray, shares: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0)
) -> list[dict[str, float]]:
    """Accuracy of the answered questions when the most confident ``share`` of them is answered."""
    order = np.argsort(-confidence, kind="stable")
    out = []
    for share in shares:
        k = max(1, int(round(share * len(order))))
        out.append({"answered_share": float(share), "answered_accuracy": float(np.mean(correct[order[:k]]))})
    return out
