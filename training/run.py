"""The one generic runner: every family, from the DAG and the CLI alike, goes build → train → evaluate → judge the
champion on the same dataset → decide → register → promote (→ deploy)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from omnicart import registry
from omnicart.settings import Settings
from training.family import MODEL, Family, decide, flatten, get

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutcome:
    """What one training run of a family produced and decided."""

    family: str
    version: str
    metrics: dict[str, float]
    champion_metric: float | None
    promoted: bool
    champion_version: str
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def champion_metric(settings: Settings, family: Family, dataset: Any) -> float | None:
    """The current champion's gate metric on ``dataset``; None without a champion, or (logged) when it cannot be
    loaded or is of another predictor type than this code trains (a model of an older format): the challenger is
    then judged by its guardrails alone."""
    if registry.champion_version(settings, family.name) is None:
        return None
    try:
        current = registry.load(settings, family.name)
    except Exception:
        log.exception("the %s champion could not be loaded to evaluate it on this dataset", family.name)
        return None
    if family.predictor_type is not None and not isinstance(current, family.predictor_type):
        log.warning("the %s champion (%s) cannot be evaluated on this dataset", family.name, type(current).__name__)
        return None
    return family.evaluate(current, dataset, baselines=False)[MODEL][family.gate_metric]


def train_family(
    settings: Settings,
    name: str,
    as_of: dt.date,
    *,
    params: Mapping[str, Any] | None = None,
    deploy: Callable[[Settings], Any] | None = None,
) -> TrainOutcome:
    """Train ``name`` (with ``params`` for its ``train``) on the data before ``as_of``, evaluate it and the champion
    on the same dataset, register it, and promote it (then ``deploy``, when given) if ``decide`` says so."""
    family = get(name)
    dataset = family.build_dataset(settings, as_of)
    predictor = family.train(settings, dataset, **(params or {}))
    evaluation = family.evaluate(predictor, dataset)
    challenger = evaluation[MODEL][family.gate_metric]
    current = registry.champion_version(settings, family.name)
    judged = champion_metric(settings, family, dataset)
    decision = decide(
        family.gate_metric,
        challenger,
        judged,
        higher_is_better=family.higher_is_better,
        guardrail_failures=family.guardrails(evaluation),
    )
    spec = family.registration(predictor, dataset)
    metrics = flatten(evaluation)
    registered = registry.log_model(
        settings,
        family.name,
        spec.python_model,
        artifacts=spec.artifacts,
        params={"as_of": as_of.isoformat(), **spec.params},
        metrics={**metrics, **spec.metrics, "gate.champion": judged if judged is not None else -1.0},
        tags={**spec.tags, "gate_metric": f"{MODEL}.{family.gate_metric}", "decision": decision.reason},
        signature=spec.signature,
    )
    if decision.promote:
        registry.promote(settings, family.name, registered.version)
        if deploy is not None:
            deploy(settings)
    log.info("%s v%s: %s", family.name, registered.version, decision.reason)
    return TrainOutcome(
        family=family.name,
        version=registered.version,
        metrics={**metrics, **spec.metrics},
        champion_metric=judged,
        promoted=decision.promote,
        champion_version=registered.version if decision.promote else str(current),
        reason=decision.reason,
    )
