"""Start, stop and apply decisions: the registry aliases and the experiment file move together.

``start`` points the ``challenger`` alias at a version and writes the experiment; ``apply`` carries out a decision:
promote moves ``champion`` to the challenger's version (the former champion becomes ``previous``, one rollback
away) and removes ``challenger``; roll back and stop remove ``challenger``; widen and continue only save the state.
The caller redeploys Serve when ``needs_redeploy`` says the served versions or shares changed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from omnicart import registry
from omnicart.experiments import config as xconfig
from omnicart.experiments.config import Experiment
from omnicart.experiments.decision import Decision, decide
from omnicart.experiments.outcomes import observe
from omnicart.settings import Settings


class ExperimentError(ValueError):
    """An experiment that cannot start or stop as asked (no champion, one already running, ...)."""


def start(settings: Settings, family: str, version: str, day: dt.date, **options: Any) -> Experiment:
    """A new experiment of ``version`` against the champion, at the first canary stage; options override the
    settings' defaults for the family (``Settings.experiments``)."""
    champion = registry.champion_version(settings, family)
    if champion is None:
        raise ExperimentError(f"{family}: no champion to compare with; promote one first")
    if str(version) == champion:
        raise ExperimentError(f"{family}: version {version} is the champion already")
    current = xconfig.running(settings.home_dir, family)
    if current is not None:
        raise ExperimentError(f"{family}: experiment {current.config.name} is running; stop it first")
    merged = {**settings.experiments.get(family, {}), **{k: v for k, v in options.items() if v is not None}}
    if "stages" in merged:
        merged["stages"] = tuple(float(s) for s in merged["stages"])
    experiment = xconfig.start(family, str(version), day, **merged)  # validates before anything moves
    try:
        registry.set_challenger(settings, family, str(version))
    except Exception as exc:
        raise ExperimentError(f"{family}: no registered version {version}") from exc
    xconfig.save(settings.home_dir, experiment)
    return experiment


def stop(settings: Settings, family: str, reason: str = "stopped by hand") -> Experiment:
    """End the running experiment; the champion keeps all traffic."""
    experiment = xconfig.running(settings.home_dir, family)
    if experiment is None:
        raise ExperimentError(f"{family}: no experiment is running")
    ended = xconfig.ended(experiment, "stopped")
    ended.state.history.append({"action": "stop", "reason": reason, "day": dt.date.today().isoformat()})
    registry.clear_challenger(settings, family)
    xconfig.save(settings.home_dir, ended)
    return ended


def apply(settings: Settings, experiment: Experiment, decision: Decision) -> None:
    """Carry out ``decision`` in the registry and save the experiment's new state."""
    family = experiment.config.family
    if decision.action == "promote":
        registry.promote(settings, family, experiment.config.challenger_version)
    if decision.action in ("promote", "rollback", "stop"):
        registry.clear_challenger(settings, family)
    xconfig.save(settings.home_dir, experiment)


def needs_redeploy(decision: Decision) -> bool:
    return decision.action in ("promote", "rollback", "stop", "widen")


def evaluate(settings: Settings, family: str, day: dt.date) -> tuple[Experiment, Decision] | None:
    """Observe, decide and apply for the family's running experiment (None when none runs)."""
    experiment = xconfig.running(settings.home_dir, family)
    if experiment is None:
        return None
    decision, after = decide(experiment, observe(settings.lake_dir, experiment, day))
    apply(settings, after, decision)
    return after, decision
