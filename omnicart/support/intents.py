"""The intent classifier: the route of a question, and the ``intent`` fusion feature."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnicart.text import DIM


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
