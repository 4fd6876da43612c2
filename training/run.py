"""One code path for the DAG and the CLI: build the dataset, train, evaluate, register, promote if better."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from omnicart import registry
from omnicart.settings import Settings


@dataclass(frozen=True)
class TrainOutcome:
    """What one training run of a family produced and decided."""

    family: str
    version: str
    metrics: dict[str, float]
    champion_metric: float | None
    promoted: bool
    champion_version: str

    def to_dict(self) -> dict:
        return asdict(self)


def register_and_promote(
    settings: Settings,
    family: str,
    predictor: Any,
    *,
    promote: bool,
    champion: str | None,
    champion_metric: float | None,
    metrics: dict[str, float],
    **logged: Any,
) -> TrainOutcome:
    """Log the run and register its model (``logged``: artifacts, params, tags, signature, extra metrics go in
    ``metrics``), move ``champion`` to it when ``promote``, and say what happened. Every family ends here."""
    registered = registry.log_model(
        settings,
        family,
        predictor,
        metrics={**metrics, "gate.champion": champion_metric if champion_metric is not None else -1.0},
        **logged,
    )
    if promote:
        registry.promote(settings, family, registered.version)
    return TrainOutcome(
        family=family,
        version=registered.version,
        metrics=metrics,
        champion_metric=champion_metric,
        promoted=promote,
        champion_version=registered.version if promote else str(champion),
    )


def train_recommend(settings: Settings, as_of: dt.date) -> TrainOutcome:
    """Train the two-stage recommender on the purchases before ``as_of``; promote it when its NDCG@10 on the
    purchases of ``as_of`` is at least the champion's on the same day."""
    from omnicart.recommend.predictor import Recommender
    from training import recommend

    dataset = recommend.build_dataset(settings, as_of)
    model = recommend.train(settings, dataset)
    evaluation = recommend.evaluate(model, dataset)
    metrics = {f"{name}.{metric}": value for name, values in evaluation.items() for metric, value in values.items()}
    timings = {f"seconds.{stage}": value for stage, value in model.model_.timings_.items()}

    champion = registry.champion_version(settings, recommend.FAMILY)
    champion_metric = None
    if champion is not None:
        champion_metric = recommend.champion_metric(lambda: registry.load(settings, recommend.FAMILY), dataset)
    promoted = champion_metric is None or evaluation["model"][recommend.GATE_METRIC] >= champion_metric

    return register_and_promote(
        settings,
        recommend.FAMILY,
        Recommender(),
        promote=promoted,
        champion=champion,
        champion_metric=champion_metric,
        metrics={**metrics, **timings},
        artifacts={"model_dir": model.model_dir_},
        params=recommend.run_params(model, dataset),
        tags={
            "feature_service": recommend.FEATURE_SERVICE,
            "data_window": dataset.window,
            "gate_metric": f"model.{recommend.GATE_METRIC}",
        },
        signature=recommend.signature(model),
    )


# family → its train-evaluate-promote function; the DAG and the CLI go through ``train_family`` alike
def train_pricing(settings: Settings, as_of: dt.date) -> TrainOutcome:
    """Train the demand model on the shop's prices before ``as_of``; promote when its RMSE beats the champion's."""
    from training import pricing

    return pricing.train_and_register(settings, as_of)


def train_support(settings: Settings, as_of: dt.date) -> TrainOutcome:
    """Fine-tune and index the support assistant on the tickets before ``as_of``; promote when its hit@1 on the
    tickets of ``as_of`` is at least the champion's."""
    from training import support

    return support.train_and_register(settings, as_of)


FAMILIES = {"recommend": train_recommend, "pricing": train_pricing, "support": train_support}


def train_family(settings: Settings, family: str, as_of: dt.date) -> TrainOutcome:
    """Build the dataset, train, evaluate against the champion and promote if better, for one family."""
    try:
        run = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None
    return run(settings, as_of)
