"""The knowledge base: a doc is one unique answer text (a past ticket's answer, an FAQ answer, a product Q&A answer,
or a product's catalog text) with the questions it is known to answer, its intent and its products.

For a customer question each doc gets five scores (``fusion.FEATURES``), fused by weights tuned on validation data:

- ``dense_a`` cosine(question, answer) and ``dense_q`` max cosine(question, the doc's known questions) — MiniLM;
- ``bm25_a`` and ``bm25_q``, the same with BM25 (k1 = 1.5, b = 0.75), each divided by the query's best score;
- ``intent`` the intent classifier's probability of the doc's intent.

Everything is saved as plain files (JSON lines, npz, the bm25s index).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart.schemas import C
from omnicart.support.bm25 import BM25Index, tokenize
from omnicart.support.fusion import FEATURES, in_scope, normalise
from omnicart.text import DIM

# What ``KnowledgeBase.save`` writes into a model directory (files and folders).
FILES = ("kb_docs.jsonl", "kb_questions.jsonl", "kb_embeddings.npz", "bm25_answers", "bm25_questions")


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
        """One doc per unique answer; ``frame`` has question (may be empty), answer, intent, product_id, kb_source.

        Docs are numbered in order of first appearance; a doc's intent is its most frequent one (a tie goes to the
        one seen first), its products the sorted distinct ids, its source that of its first row; its questions are
        the distinct non-blank ones, in row order."""
        keys = pd.Series([doc_key(a) for a in frame[C.answer]], dtype=object)
        rows = frame.reset_index(drop=True)[(keys != "").to_numpy()]
        keys = keys[keys != ""]
        codes, uniques = pd.factorize(keys, sort=False)  # numbered in order of first appearance
        n_docs = len(uniques)
        first = np.unique(codes, return_index=True)[1] if n_docs else np.zeros(0, dtype=int)

        def texts(column: str, strip: bool = False) -> tuple[np.ndarray, np.ndarray]:
            """The rows whose ``column`` is a non-empty string (non-blank with ``strip``): doc numbers and values."""
            values = rows[column].to_numpy(dtype=object)
            ok = np.fromiter(
                (isinstance(v, str) and bool(v.strip() if strip else v) for v in values), bool, len(values)
            )
            return codes[ok], values[ok]

        doc, intent = texts(C.intent)
        counts = pd.Series(intent).groupby([doc, intent], sort=False).size()  # pairs in order of first appearance
        intents = np.full(n_docs, None, dtype=object)
        if len(counts):
            best = counts.groupby(level=0, sort=False).idxmax()  # the first of the most frequent
            intents[best.index.to_numpy(dtype=int)] = [pair[1] for pair in best]
        doc, product = texts(C.product_id)
        pairs = pd.DataFrame({"doc": doc, "p": product}).drop_duplicates().sort_values(["doc", "p"])
        by_doc = pairs.groupby("doc", sort=True)["p"].agg(list)
        products: list[list[str]] = [[] for _ in range(n_docs)]
        for n, ids in zip(by_doc.index, by_doc, strict=True):
            products[n] = ids
        docs_frame = pd.DataFrame(
            {
                C.doc_id: [f"d{n:06d}" for n in range(n_docs)],
                C.answer: list(uniques),
                C.intent: intents,
                "product_ids": products,
                C.kb_source: [str(v) for v in rows[C.kb_source].to_numpy(dtype=object)[first]],
            },
            columns=[C.doc_id, C.answer, C.intent, "product_ids", C.kb_source],
        )
        doc, question = texts(C.question, strip=True)
        questions = pd.DataFrame({C.question: question, "doc": doc}).drop_duplicates()
        questions = questions.sort_values("doc", kind="stable").reset_index(drop=True)
        return docs_frame, questions[[C.question, "doc"]]

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
        bm25_a = normalise(self.bm25_answers.scores(query_tokens))
        bm25_q = self._per_doc_max(normalise(self.bm25_questions.scores(query_tokens)))
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

    def without(self, questions: np.ndarray, docs: np.ndarray) -> KnowledgeBase:
        """A copy without the questions and docs the boolean masks pick (a dropped doc's questions go with it): the
        embeddings are kept row for row, the BM25 indexes refitted on what is left, doc ids unchanged."""
        keep_docs = ~np.asarray(docs, dtype=bool)
        doc_of = self.questions["doc"].to_numpy(dtype=int) if len(self.questions) else np.zeros(0, int)
        keep_questions = ~np.asarray(questions, dtype=bool) & keep_docs[doc_of]
        renumber = np.cumsum(keep_docs) - 1
        kept_docs = self.docs[keep_docs].reset_index(drop=True)
        kept_questions = self.questions[keep_questions].reset_index(drop=True)
        kept_questions["doc"] = renumber[doc_of[keep_questions]].astype(int)
        return KnowledgeBase(
            docs=kept_docs,
            questions=kept_questions,
            answer_emb=self.answer_emb[keep_docs],
            question_emb=self.question_emb[keep_questions],
            bm25_answers=BM25Index(self.bm25_answers.k1, self.bm25_answers.b).fit(kept_docs[C.answer].tolist()),
            bm25_questions=BM25Index(self.bm25_questions.k1, self.bm25_questions.b).fit(
                kept_questions[C.question].tolist()
            ),
        )

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


def relevance(protocol: str, queries: pd.DataFrame, kb: KnowledgeBase) -> np.ndarray:
    """(queries × docs) truth: the query's own answer ("reqa") or any doc of the query's intent ("intent")."""
    if protocol == "reqa":
        q_keys, d_keys = [doc_key(a) for a in queries[C.answer]], kb.docs[C.answer].tolist()
    else:
        q_keys = [i if isinstance(i, str) else "\0q" for i in queries[C.intent]]
        d_keys = [i if isinstance(i, str) else "\0d" for i in kb.docs[C.intent]]
    # integer codes compare far faster than strings (np.unique compares them as Python does; pandas' hashing would
    # take the two sentinels, which differ only after a NUL, for one)
    _, codes = np.unique(np.asarray(q_keys + d_keys, dtype=object), return_inverse=True)
    return codes[: len(q_keys), None] == codes[None, len(q_keys) :]


def scope_mask(kb: KnowledgeBase, product_ids: Sequence[Any]) -> tuple[np.ndarray | None, list[str]]:
    """(queries × docs) docs each question may be answered from (None when every question may use every doc), and
    each question's scope ("all", "product" or "unknown_product")."""
    masks, scopes, any_scoped = [], [], False
    for p in product_ids:
        allowed, scope = kb.scope(p if isinstance(p, str) else None)
        row = np.ones(len(kb), dtype=bool)
        if allowed is not None:
            row[:] = False
            row[allowed] = True
            any_scoped = True
        masks.append(row)
        scopes.append(scope)
    return (np.stack(masks) if any_scoped else None), scopes


@dataclass
class Candidates:
    """Each query's candidate docs, as (queries × width) arrays aligned column for column: by each feature, the
    ``depth`` best docs in scope and the ``depth`` best of those that are not relevant (calibration asks again without
    the right answers), merged. A column that repeats a doc, or holds one out of scope, has ``mask`` False."""

    docs: np.ndarray  # doc rows of the knowledge base
    features: dict[str, np.ndarray]  # FEATURES → scores
    relevant: np.ndarray
    mask: np.ndarray


def candidates(
    kb: KnowledgeBase,
    queries: pd.DataFrame,
    protocol: str,
    query_emb: np.ndarray,
    intent_p: np.ndarray,
    classes: Sequence[str],
    product_ids: Sequence[Any],
    depth: int = 50,
    block_cells: int = 5_000_000,
) -> Candidates:
    """The candidate docs of non-empty ``queries`` (question, answer, intent as ``relevance`` reads them) in a
    non-empty ``kb``.

    A fusion of the five scores ranks first only docs that are among the best by some score, so tuning the fusion and
    calibrating it on the candidates gives the figures of all docs, as long as the fused top 10 (and the best wrong
    doc) is among them; the queries are scored a block at a time (at most ``block_cells`` queries × docs cells), so
    memory grows with queries plus docs, not with their product."""
    n, k = len(queries), min(depth, len(kb))
    rows = max(1, block_cells // len(kb))
    tokens = tokenize(queries[C.question].tolist())
    parts: list[Candidates] = []
    for start in range(0, n, rows):
        block = slice(start, min(start + rows, n))
        feats = kb.features(query_emb[block], tokens[block], intent_p[block], classes)
        mask, _ = scope_mask(kb, list(product_ids[block]))
        relevant = relevance(protocol, queries.iloc[block], kb)
        wrong = ~relevant if mask is None else mask & ~relevant
        best = []
        for f in feats.values():
            for allowed in (mask, wrong):
                scores = in_scope(f, allowed)
                best.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
        docs = np.sort(np.concatenate(best, axis=1), axis=1)
        keep = np.ones(docs.shape, dtype=bool)
        keep[:, 1:] = docs[:, 1:] != docs[:, :-1]
        if mask is not None:
            keep &= np.take_along_axis(mask, docs, axis=1)
        parts.append(
            Candidates(
                docs=docs,
                features={name: np.take_along_axis(f, docs, axis=1) for name, f in feats.items()},
                relevant=np.take_along_axis(relevant, docs, axis=1),
                mask=keep,
            )
        )
    return Candidates(
        docs=np.concatenate([c.docs for c in parts]),
        features={f: np.concatenate([c.features[f] for c in parts]) for f in FEATURES},
        relevant=np.concatenate([c.relevant for c in parts]),
        mask=np.concatenate([c.mask for c in parts]),
    )
