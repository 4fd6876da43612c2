"""Online experiments in serving, free of Ray: which model version answers a request, and recommend's exploration.

At start-up each replica reads the running experiments (``omnicart.experiments.config``, one file per family under
``<home>/experiments/``) and loads the ``challenger`` alias of each; ``pick`` then sends a request to the
challenger when its unit (the customer; the product for pricing) hashes below the experiment's share, else to the
champion, and names the variant so that every logged prediction carries it. A canary widening or an ended
experiment takes effect with the next (rolling) redeploy, which the ``evaluate_experiments`` DAG does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from omnicart.experiments import config as xconfig
from omnicart.experiments import offpolicy
from omnicart.experiments.config import Experiment

log = logging.getLogger("omnicart.serving.experiments")


def running_experiments(
    home: Any, families: tuple[str, ...], load: Callable[[str, Experiment], Any]
) -> tuple[dict[str, Experiment], dict[str, Any]]:
    """The running experiments and their challengers' services (``load(family, experiment)``). A challenger that
    cannot load is logged and left out: its family is then served by the champion alone, as without experiment."""
    experiments, challengers = {}, {}
    for family in families:
        try:
            experiment = xconfig.running(home, family)
        except ValueError:
            log.exception("%s: unreadable experiment file; serving the champion only", family)
            continue
        if experiment is None:
            continue
        try:
            challengers[family] = load(family, experiment)
        except Exception:
            log.exception("%s: the challenger could not be loaded; serving the champion only", family)
            continue
        experiments[family] = experiment
    return experiments, challengers


def pick(
    family: str,
    champion: Any,
    unit_id: str | None,
    experiments: Mapping[str, Experiment],
    challengers: Mapping[str, Any],
) -> tuple[Any, str | None]:
    """The service that answers ``unit_id`` and its variant (None when the family has no experiment running)."""
    experiment, challenger = experiments.get(family), challengers.get(family)
    if experiment is None or challenger is None:
        return champion, None
    variant = experiment.variant(unit_id)
    return (challenger if variant == xconfig.CHALLENGER else champion), variant


def explore_recommend(service: Any, request: Any, epsilon: float, pool: int, rng: np.random.Generator) -> Any:
    """``service.recommend(request)`` under the ε-slate exploration policy (``omnicart.experiments.offpolicy``):
    the candidates are the first ``k + pool`` items the service ranks for the request; every returned item carries
    the propensity of being shown in its slot. ε = 0: the plain answer, every propensity 1."""
    if epsilon <= 0:
        answer = service.recommend(request)
        return answer.model_copy(update={"items": [i.model_copy(update={"propensity": 1.0}) for i in answer.items]})
    wide = service.recommend(request.model_copy(update={"k": min(request.k + pool, 100)}))
    ranked, rest = wide.items[: request.k], wide.items[request.k :]
    shown = offpolicy.explore([i.item_id for i in ranked], [i.item_id for i in rest], epsilon, rng)
    by_id = {i.item_id: i for i in wide.items}
    items = [by_id[s.item_id].model_copy(update={"propensity": s.propensity}) for s in shown]
    return wide.model_copy(update={"items": items})


def groups(
    family: str,
    champion: Any,
    unit_ids: list[str | None],
    experiments: Mapping[str, Experiment],
    challengers: Mapping[str, Any],
) -> list[tuple[Any, str | None, list[int]]]:
    """A batch split by the service that answers each unit: (service, variant, positions), champion first."""
    out: dict[str | None, tuple[Any, str | None, list[int]]] = {}
    for position, unit in enumerate(unit_ids):
        service, variant = pick(family, champion, unit, experiments, challengers)
        out.setdefault(variant, (service, variant, []))[2].append(position)
    return sorted(out.values(), key=lambda g: g[1] == xconfig.CHALLENGER)


def tagged(answer: Any, variant: str | None) -> Any:
    """The answer with its variant set (unchanged outside an experiment)."""
    return answer if variant is None else answer.model_copy(update={"variant": variant})
