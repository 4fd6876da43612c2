"""The contract every model family implements, the lookup of a family by name, and the promotion decision.

A family is one module ``training/<name>.py`` that defines ``FAMILY = Family(...)``; its name is listed once in
``omnicart.schemas.FAMILIES``, which the DAGs, monitoring and the CLI read. ``training.run.train_family`` treats every
family alike: build the dataset, train, evaluate beside the baselines, evaluate the champion on the same dataset,
``decide``, register in MLflow, promote. See docs/adding-a-family.md.
"""

from __future__ import annotations

import datetime as dt
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnicart.schemas import FAMILIES
from omnicart.settings import Settings

MODEL = "model"  # the key of the family's own figures in an evaluation; the others are its baselines

# {"model": {metric: value}, "<baseline>": {metric: value}, ...}
Evaluation = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Registration:
    """What the registry keeps of a trained predictor: the pyfunc to pickle, the files it loads, and the run's
    params, tags, extra metrics (beside the flattened evaluation) and signature."""

    python_model: Any
    artifacts: Mapping[str, str | Path]
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    signature: Any = None


@dataclass(frozen=True)
class Family:
    """One model family's verbs. ``train`` returns the predictor that serving loads; ``evaluate`` scores a
    predictor (the challenger, or the champion loaded from the registry) and, with ``baselines``, its baselines on
    the same dataset; ``guardrails`` lists why an evaluation may not be promoted whatever its gate metric."""

    name: str
    gate_metric: str  # a key of evaluation["model"]
    higher_is_better: bool
    build_dataset: Callable[[Settings, dt.date], Any]
    train: Callable[[Settings, Any], Any]
    evaluate: Callable[..., Evaluation]  # (predictor, dataset, *, baselines: bool = True)
    registration: Callable[[Any, Any], Registration]  # (predictor, dataset)
    guardrails: Callable[[Evaluation], list[str]] = lambda evaluation: []
    predictor_type: type | None = None  # the champion must be one to be judged on the new dataset
    stages: Callable[[Any], dict[str, float]] = lambda predictor: {}  # seconds of the steps inside train, by name


def get(name: str) -> Family:
    """The family called ``name``: ``FAMILY`` of the module ``training.<name>``."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    family = importlib.import_module(f"training.{name}").FAMILY
    if not isinstance(family, Family) or family.name != name:
        raise TypeError(f"training.{name}.FAMILY must be a Family named {name!r}")
    return family


@dataclass(frozen=True)
class Decision:
    """Whether the challenger becomes champion, and why (said in the run's tags and the CLI's output)."""

    promote: bool
    reason: str


def decide(
    metric: str,
    challenger: float,
    champion: float | None,
    *,
    higher_is_better: bool,
    guardrail_failures: list[str] | tuple[str, ...] = (),
) -> Decision:
    """Promote when every guardrail holds and the challenger's gate metric is at least as good as the champion's on
    the same dataset (a tie promotes the newer model); without a champion, the guardrails alone decide."""
    if guardrail_failures:
        return Decision(False, "guardrail failed: " + "; ".join(guardrail_failures))
    if not math.isfinite(challenger):
        return Decision(False, f"{metric} of the challenger is {challenger}")
    if champion is None or not math.isfinite(champion):
        return Decision(True, f"no champion to beat ({metric} {challenger:.4g})")
    better = challenger >= champion if higher_is_better else challenger <= champion
    verb = "beats or ties" if better else "loses to"
    return Decision(better, f"{metric} {challenger:.4g} {verb} the champion's {champion:.4g} on the same data")


def flatten(evaluation: Evaluation) -> dict[str, float]:
    """MLflow-legal metric names, one per figure ("model.hit_at_1", "model_at_50pct.answered_accuracy"); values that
    are not finite numbers are left out."""
    out = {}
    for name, values in evaluation.items():
        for metric, value in values.items():
            key = f"{name}.{metric}".replace("@", "_at_").replace("%", "pct").replace("+", "_")
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                out[key] = float(value)
    return out
