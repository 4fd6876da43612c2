"""An experiment's configuration and state, kept as one JSON file per family under ``<home>/experiments/``, where
the CLI writes it, Serve replicas read it at start-up and the daily DAG updates it.

A family runs at most one experiment at a time: the ``challenger`` alias of its registered model (a version the
experiment was started with) against ``champion``. Customers (products for pricing) are assigned by the salted
hash of the experiment name and their id: a unit is the challenger's while its bucket is below the current share,
so widening the canary only moves units from the champion to the challenger, never back.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from omnicart.experiments.stats import bucket

CHAMPION, CHALLENGER = "champion", "challenger"  # the variants, named after the aliases they serve
Status = Literal["running", "promoted", "rolled_back", "stopped"]

# What each family's experiment measures per unit (see docs/experiments.md), and which unit it randomises.
METRICS = {
    "recommend": "purchases of recommended items per exposed customer-day, next day included",
    "pricing": "profit per item-day",
    "support": "share of answers without escalation or negative feedback",
}
UNITS = {"recommend": "customer", "pricing": "product", "support": "customer"}


@dataclass(frozen=True)
class ExperimentConfig:
    """What to test and how carefully. Shares are of units; effects are relative to the champion's mean."""

    family: str
    challenger_version: str
    stages: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50)
    stage_days: int = 1  # days a stage runs at least before it may widen
    guard_share: float = 0.25  # a share this large is entered only once the harm test has its planned power
    mde: float = 0.03  # the smallest relative uplift worth promoting for; the sample size is planned for it
    alpha: float = 0.025  # one-sided false-promotion rate over all looks (O'Brien–Fleming spending)
    power: float = 0.95
    harm_tolerance: float = 0.05  # a relative drop the canary must catch before guard_share (Pocock spending)
    harm_alpha: float = 0.05
    harm_power: float = 0.95
    max_error_increase: float = 0.02  # challenger error/fallback rate minus champion's
    max_latency_ratio: float = 1.5  # challenger p95 latency over champion's
    srm_alpha: float = 0.001
    min_units: int = 30  # per arm, before any test
    max_days: int = 28  # without a decision by then: stop, the champion stays
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.family}-v{self.challenger_version}")
        shares = self.stages
        if not shares or any(not 0 < s < 1 for s in shares) or list(shares) != sorted(set(shares)):
            raise ValueError(f"stages: increasing shares in (0, 1) are required, got {shares}")
        for name in ("mde", "harm_tolerance"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}: must be in (0, 1), got {getattr(self, name)}")
        for name in ("alpha", "harm_alpha", "srm_alpha"):
            if not 0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name}: must be in (0, 0.5), got {getattr(self, name)}")
        for name in ("power", "harm_power"):
            if not 0.5 < getattr(self, name) < 1:
                raise ValueError(f"{name}: must be in (0.5, 1), got {getattr(self, name)}")
        if self.stage_days < 1 or self.max_days < 1 or self.min_units < 2:
            raise ValueError("stage_days and max_days must be ≥ 1, min_units ≥ 2")


@dataclass
class ExperimentState:
    """Where a running experiment stands: its canary stage, the looks taken so far (their information fractions fix
    the sequential boundaries), the planned information, and every daily decision."""

    started: dt.date
    stage: int = 0
    stage_started: dt.date | None = None
    status: Status = "running"
    efficacy_looks: list[float] = field(default_factory=list)
    harm_looks: list[float] = field(default_factory=list)
    baseline_mean: float | None = None  # the champion's mean and sd at the first look: the plan's scale
    baseline_sd: float | None = None
    planned_units: int | None = None  # units (both arms) at which the planned information is reached, projected
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.stage_started is None:
            self.stage_started = self.started


@dataclass
class Experiment:
    config: ExperimentConfig
    state: ExperimentState

    @property
    def share(self) -> float:
        """The challenger's share of units now (0 once the experiment has ended)."""
        return self.config.stages[self.state.stage] if self.state.status == "running" else 0.0

    def variant(self, unit_id: str | None) -> str:
        """``challenger`` or ``champion`` for this unit: sticky by hash; a request without a unit id (an anonymous
        visitor) gets the champion, so its outcome never dilutes the comparison."""
        if unit_id is None or self.share <= 0:
            return CHAMPION
        return CHALLENGER if bucket(self.config.name, str(unit_id)) < self.share else CHAMPION

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "state": asdict(self.state)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experiment:
        raw = dict(data["config"])
        raw["stages"] = tuple(raw["stages"])
        known = {f.name for f in fields(ExperimentConfig)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"experiment config: unknown fields {sorted(unknown)}")
        state = dict(data["state"])
        for key in ("started", "stage_started"):
            if state.get(key) is not None:
                state[key] = dt.date.fromisoformat(str(state[key]))
        return cls(ExperimentConfig(**raw), ExperimentState(**state))


def start(family: str, challenger_version: str, day: dt.date, **options: Any) -> Experiment:
    """A new experiment at its first canary stage."""
    return Experiment(ExperimentConfig(family, str(challenger_version), **options), ExperimentState(started=day))


def experiments_dir(home: Path) -> Path:
    return Path(home) / "experiments"


def path(home: Path, family: str) -> Path:
    return experiments_dir(home) / f"{family}.json"


def load(home: Path, family: str) -> Experiment | None:
    """The family's experiment (running or ended), or None if it never had one."""
    file = path(home, family)
    if not file.exists():
        return None
    try:
        return Experiment.from_dict(json.loads(file.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file}: not a valid experiment ({exc})") from exc


def running(home: Path, family: str) -> Experiment | None:
    found = load(home, family)
    return found if found is not None and found.state.status == "running" else None


def save(home: Path, experiment: Experiment) -> Path:
    """Write atomically (a replica starting meanwhile reads the old or the new file, never half of one)."""
    file = path(home, experiment.config.family)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(experiment.to_dict(), indent=2, default=str))
    os.replace(tmp, file)
    return file


def ended(experiment: Experiment, status: Status) -> Experiment:
    return Experiment(experiment.config, replace(experiment.state, status=status))
