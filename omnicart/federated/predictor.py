"""The federated demand model as an MLflow pyfunc: its weights and the columns they multiply, in one JSON artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from omnicart.federated.silos import COLUMNS

ARTIFACT = "model"  # the artifact key of model.json


def save(path: Path, weights: np.ndarray, columns: tuple[str, ...] = COLUMNS, **info: Any) -> Path:
    """Write model.json: the weights, their columns and ``info`` (rounds, ε, δ, ...)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(columns),):
        raise ValueError(f"{len(columns)} columns need as many weights, got shape {weights.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"weights": weights.tolist(), "columns": list(columns), **info}, indent=1))
    return path


class FederatedDemandPredictor(mlflow.pyfunc.PythonModel):
    """Log units of the rows of a table with the model's ``columns`` (the features each owner computes alone)."""

    def __init__(self) -> None:
        self.weights_: np.ndarray | None = None
        self.columns_: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: Path) -> FederatedDemandPredictor:
        predictor = cls()
        predictor._read(Path(path))
        return predictor

    def _read(self, path: Path) -> None:
        spec = json.loads(path.read_text())
        self.weights_ = np.asarray(spec["weights"], dtype=np.float64)
        self.columns_ = tuple(spec["columns"])

    def load_context(self, context: Any) -> None:
        self._read(Path(context.artifacts[ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        if self.weights_ is None:
            raise RuntimeError("FederatedDemandPredictor has no weights loaded")
        missing = [c for c in self.columns_ if c not in model_input.columns]
        if missing:
            raise ValueError(f"the model needs columns {missing}")
        return model_input[list(self.columns_)].to_numpy(np.float64) @ self.weights_
