"""``SupportModel``, the support family's predictor: the MLflow pyfunc that serving loads from the registry.

It is pickled without state; ``load_context`` reads the model directory (plain files written by ``fit``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from omnicart.encoder import Encoder
from omnicart.schemas import C
from omnicart.support.bm25 import tokenize
from omnicart.support.calibration import Calibration, confidence_features
from omnicart.support.fusion import fuse
from omnicart.support.intents import IntentClassifier
from omnicart.support.knowledge import KnowledgeBase, scope_mask


class SupportModel(mlflow.pyfunc.PythonModel):
    """Answers a question from the knowledge base with a calibrated confidence and its sources, or hands it over.

    Loads from a directory of plain files; ``backend`` "torch" forces the torch query encoder even when training
    chose ONNX (for comparisons)."""

    def __init__(self) -> None:
        self.model_dir_: Path | None = None

    @classmethod
    def from_directory(cls, directory: Path, backend: str | None = None) -> SupportModel:
        model = cls()
        model._load(Path(directory), backend)
        return model

    def load_context(self, context: Any) -> None:
        self._load(Path(context.artifacts["model_dir"]), None)

    def _load(self, directory: Path, backend: str | None) -> None:
        self.model_dir_ = directory
        self.meta_ = json.loads((directory / "meta.json").read_text())
        self.kb_ = KnowledgeBase.load(directory)
        self.intents_ = IntentClassifier.load(directory)
        self.weights_ = self.meta_["weights"]
        self.calibration_ = Calibration(**self.meta_["calibration"])
        self.threshold_ = float(self.calibration_.threshold)
        cfg = self.meta_["config"]
        self.question_length_ = int(cfg["question_length"])
        onnx_file = self.meta_.get("onnx", {}).get("file")
        use_onnx = onnx_file and backend != "torch" and (directory / onnx_file).exists()
        self.encoder_ = Encoder(directory / "encoder", directory / onnx_file if use_onnx else None)

    @property
    def backend(self) -> str:
        return self.encoder_.backend

    def encode(self, questions: Sequence[str]) -> np.ndarray:
        return self.encoder_.encode(list(questions), self.question_length_)

    def score(
        self,
        questions: Sequence[str],
        product_ids: Sequence[str | None] | None = None,
        weights: dict[str, float] | None = None,
        chunk: int = 256,
        embeddings: np.ndarray | None = None,
    ) -> Iterator[tuple[slice, np.ndarray, np.ndarray, list[str]]]:
        """Fused (questions × docs) scores, in chunks: (rows, scores with -inf outside scope, intent probs, scopes)."""
        questions = list(questions)
        product_ids = list(product_ids) if product_ids is not None else [None] * len(questions)
        for rows, feats, intent_p in self.features(questions, chunk, embeddings):
            mask, scopes = scope_mask(self.kb_, product_ids[rows])
            yield rows, fuse(feats, weights or self.weights_, mask), intent_p, scopes

    def features(
        self, questions: Sequence[str], chunk: int = 256, embeddings: np.ndarray | None = None
    ) -> Iterator[tuple[slice, dict[str, np.ndarray], np.ndarray]]:
        """The five (questions × docs) score matrices of ``KnowledgeBase.features``, in chunks: (rows, features, intent
        probs); ``score`` fuses them."""
        questions = list(questions)
        emb = self.encode(questions) if embeddings is None else embeddings
        for start in range(0, len(questions), chunk):
            rows = slice(start, min(start + chunk, len(questions)))
            intent_p = self.intents_.proba(emb[rows])
            yield (
                rows,
                self.kb_.features(emb[rows], tokenize(questions[rows]), intent_p, self.intents_.classes),
                intent_p,
            )

    def answer_batch(
        self, questions: Sequence[str], product_ids: Sequence[str | None] | None = None, k: int = 3
    ) -> list[dict[str, Any]]:
        """For each (already scrubbed) question: answered or not, the answer, confidence, intent, sources, reason."""
        out: list[dict[str, Any]] = []
        for _, fused, intent_p, scopes in self.score(questions, product_ids):
            conf = self.calibration_.confidence(confidence_features(fused, intent_p)) if len(self.kb_) else None
            for i in range(len(fused)):
                out.append(self._decide(fused[i], intent_p[i], scopes[i], None if conf is None else float(conf[i]), k))
        return out

    def answer(self, question: str, product_id: str | None = None, k: int = 3) -> dict[str, Any]:
        return self.answer_batch([question], [product_id], k)[0]

    def _decide(self, scores: np.ndarray, intent_p: np.ndarray, scope: str, conf: float | None, k: int) -> dict:
        classes = self.intents_.classes
        intent = classes[int(intent_p.argmax())] if len(classes) and intent_p.size else None
        intent_conf = float(intent_p.max()) if intent is not None else None
        finite = np.flatnonzero(np.isfinite(scores))
        top = finite[np.argsort(-scores[finite], kind="stable")[:k]] if len(finite) else finite
        docs = self.kb_.docs
        sources = [
            {
                C.doc_id: str(docs[C.doc_id].iat[d]),
                C.kb_source: str(docs[C.kb_source].iat[d]),
                "score": round(float(scores[d]), 4),
                "text": str(docs[C.answer].iat[d])[:300],
                "product_ids": list(docs["product_ids"].iat[d])[:5],
            }
            for d in top
        ]
        confidence = 0.0 if conf is None or not len(top) else conf
        answered = bool(len(top)) and confidence >= self.threshold_
        reason = None
        if not len(top):
            reason = "the knowledge base has nothing to answer from"
        elif not answered and not self.calibration_.reachable:
            reason = (
                f"no answer reached the target precision of {self.calibration_.target_precision:.0%} on validation"
                " data, so every question goes to a person"
            )
        elif not answered:
            reason = (
                f"confidence {confidence:.2f} is below the threshold {self.threshold_:.2f} calibrated for "
                f"{self.calibration_.target_precision:.0%} precision on validation data"
            )
        if scope == "unknown_product" and reason:
            reason += "; the product is not in the knowledge base"
        return {
            "answered": answered,
            C.answer: str(docs[C.answer].iat[top[0]]) if answered else None,
            "confidence": round(confidence, 4),
            "threshold": round(self.threshold_, 4),
            C.intent: intent,
            "intent_confidence": None if intent_conf is None else round(intent_conf, 4),
            "scope": scope,
            "sources": sources,
            "reason": reason,
        }

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list:
        """pyfunc entry point: one decision per row of (question[, product_id])."""
        products = model_input[C.product_id].tolist() if C.product_id in model_input.columns else None
        return self.answer_batch(
            model_input[C.question].astype(str).tolist(), products, int((params or {}).get("k", 3))
        )
