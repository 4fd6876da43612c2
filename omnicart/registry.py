"""MLflow: log runs, register model versions, promote by alias, load the champion, roll back.

One registered model per family (``omnicart-<family>``). The alias ``champion`` is what serving loads; each
promotion moves the former champion to ``previous``, so a rollback is one alias move.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnicart.settings import Settings

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"  # the version an online experiment tests against the champion
# What a logged model needs to load elsewhere, pinned to this environment's versions. Stating it spares MLflow its
# requirement inference, which imports the model in a subprocess (about 20 s per logged model here).
RUNTIME_PACKAGES = ("mlflow", "numpy", "pandas", "pyarrow", "scikit-learn", "xgboost", "torch", "sentence-transformers")


def pip_requirements() -> list[str]:
    """``RUNTIME_PACKAGES`` pinned to the installed versions (the CPU torch wheel as installed here)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for package in RUNTIME_PACKAGES:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pinned


def model_name(family: str) -> str:
    return f"omnicart-{family}"


def client(settings: Settings) -> Any:
    """An MlflowClient on the settings' tracking store; experiments keep artifacts under home/mlartifacts."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return MlflowClient(settings.mlflow_uri, settings.mlflow_uri)


def _experiment_id(settings: Settings, family: str) -> str:
    mlc = client(settings)
    name = f"omnicart/{family}"
    experiment = mlc.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if settings.mlflow_uri.startswith(("http://", "https://")):
        # a tracking server: its artifact root (``mlflow server --artifacts-destination``) holds the artifacts
        return mlc.create_experiment(name)
    location = (settings.mlflow_artifacts / family).resolve()
    location.mkdir(parents=True, exist_ok=True)
    return mlc.create_experiment(name, artifact_location=location.as_uri())


@dataclass(frozen=True)
class Registered:
    """A logged run and the model version registered from it."""

    run_id: str
    version: str
    model_uri: str


def log_model(
    settings: Settings,
    family: str,
    python_model: Any,
    *,
    artifacts: Mapping[str, str | Path],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str] | None = None,
    signature: Any = None,
) -> Registered:
    """Log one training run (params, metrics, tags, the pyfunc model with its artifacts and optional signature)
    and register a version."""
    import mlflow

    client(settings)
    with mlflow.start_run(experiment_id=_experiment_id(settings, family)) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.set_tags(dict(tags or {}))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts={k: str(v) for k, v in artifacts.items()},
            registered_model_name=model_name(family),
            signature=signature,
            pip_requirements=pip_requirements(),
        )
    version = str(info.registered_model_version)
    return Registered(run.info.run_id, version, f"models:/{model_name(family)}/{version}")


def champion_version(settings: Settings, family: str) -> str | None:
    """The version the ``champion`` alias points at, or None before the first promotion."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(model_name(family), CHAMPION).version)
    except MlflowException:
        return None


def version_metrics(settings: Settings, family: str, version: str) -> dict[str, float]:
    """Metrics of the run that produced a model version."""
    mlc = client(settings)
    run_id = mlc.get_model_version(model_name(family), version).run_id
    return dict(mlc.get_run(run_id).data.metrics)


def promote(settings: Settings, family: str, version: str) -> None:
    """Make ``version`` the champion; the former champion becomes ``previous``."""
    mlc = client(settings)
    current = champion_version(settings, family)
    if current is not None and current != version:
        mlc.set_registered_model_alias(model_name(family), PREVIOUS, current)
    mlc.set_registered_model_alias(model_name(family), CHAMPION, version)


def rollback(settings: Settings, family: str) -> str:
    """Restore the previous champion; returns the version now serving. Raises when there is none."""
    mlc = client(settings)
    from mlflow.exceptions import MlflowException

    try:
        previous = str(mlc.get_model_version_by_alias(model_name(family), PREVIOUS).version)
    except MlflowException as exc:
        raise LookupError(f"{family}: no previous champion to roll back to") from exc
    current = champion_version(settings, family)
    mlc.set_registered_model_alias(model_name(family), CHAMPION, previous)
    if current is not None:
        mlc.set_registered_model_alias(model_name(family), PREVIOUS, current)
    return previous


def set_challenger(settings: Settings, family: str, version: str) -> None:
    """Point the ``challenger`` alias at ``version`` (which must exist) for an online experiment."""
    mlc = client(settings)
    mlc.get_model_version(model_name(family), str(version))  # raises when there is no such version
    mlc.set_registered_model_alias(model_name(family), CHALLENGER, str(version))


def clear_challenger(settings: Settings, family: str) -> None:
    """Remove the ``challenger`` alias (the experiment ended); nothing happens when there is none."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        client(settings).delete_registered_model_alias(model_name(family), CHALLENGER)


def alias_version(settings: Settings, family: str, alias: str) -> str | None:
    """The version behind ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(model_name(family), alias).version)
    except MlflowException:
        return None


# Where the predictors that older model versions pickled by reference live now (they moved from training/ into the
# core, so serving needs no training code); ``load`` resolves the old names where the old modules are gone.
LEGACY_MODULES = {
    "training.recommend": "omnicart.recommend.predictor",  # Recommender
    "training.support": "omnicart.support.predictor",  # SupportModel
}


@contextlib.contextmanager
def legacy_modules(importable: Callable[[str], bool] | None = None) -> Iterator[list[str]]:
    """While loading, make each ``LEGACY_MODULES`` name that cannot be imported any more an alias of its new home
    (its parent package a bare stand-in), so a model pickled under the old name unpickles; undone afterwards.
    Yields the names it aliased."""
    importable = importable or _importable
    added: list[str] = []
    try:
        for old, new in LEGACY_MODULES.items():
            if old in sys.modules or importable(old):
                continue
            parent = old.rpartition(".")[0]
            if parent not in sys.modules:
                sys.modules[parent] = types.ModuleType(parent)
                added.append(parent)
            sys.modules[old] = importlib.import_module(new)
            added.append(old)
        yield [name for name in added if name in LEGACY_MODULES]
    finally:
        for name in reversed(added):
            sys.modules.pop(name, None)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def load(settings: Settings, family: str, alias: str = CHAMPION) -> Any:
    """The family's predictor object (the pyfunc's python model) behind ``alias``."""
    import mlflow

    client(settings)
    with legacy_modules():
        return mlflow.pyfunc.load_model(f"models:/{model_name(family)}@{alias}").unwrap_python_model()
