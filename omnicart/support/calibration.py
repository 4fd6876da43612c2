"""Escalation: the calibrated probability that the top answer is right, and the threshold that meets a target
precision on validation questions (hand the question over to a person below it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_NEGATIVES = 20  # fewer wrong validation answers than this: calibrate with held-out-answer negatives too


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


def calibrate(fused: np.ndarray, intent_p: np.ndarray, relevant: np.ndarray, target_precision: float) -> Calibration:
    """Fit the confidence and its threshold on validation questions.

    When validation has too few wrong answers to learn from (templated FAQs are answered almost perfectly), each
    question is asked again with its right answers removed from the knowledge base: the top answer is then wrong by
    construction, which is what an uncovered question looks like. The threshold then also guards against those."""
    top = fused.argmax(axis=1)
    correct = relevant[np.arange(len(fused)), top] & np.isfinite(fused[np.arange(len(fused)), top])
    feats = confidence_features(fused, intent_p)
    synthetic = 0
    if (~correct).sum() < MIN_NEGATIVES:
        held_out = np.where(relevant, -np.inf, fused)
        keep = np.isfinite(held_out).any(axis=1)
        feats = np.concatenate([feats, confidence_features(held_out[keep], intent_p[keep])])
        correct = np.concatenate([correct, np.zeros(int(keep.sum()), dtype=bool)])
        synthetic = int(keep.sum())
    calibration = Calibration.fit(feats, correct, target_precision)
    calibration.validation["synthetic_negatives"] = float(synthetic)
    return calibration
