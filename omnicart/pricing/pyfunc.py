"""The pricing model as an MLflow pyfunc: the registry carries the model directory as an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from omnicart.pricing.model import DemandModel
from omnicart.pricing.optimiser import PricingItem, PricingPolicy
from omnicart.pricing.pricer import suggest
from omnicart.schemas import C


class PricingPredictor(mlflow.pyfunc.PythonModel):
    """Loads ``DemandModel`` from the ``model_dir`` artifact; ``predict`` prices a table of items."""

    def __init__(self) -> None:
        self.model_: DemandModel | None = None

    @classmethod
    def from_directory(cls, directory: Path) -> PricingPredictor:
        return cls.from_model(DemandModel.load(Path(directory)))

    @classmethod
    def from_model(cls, model: DemandModel) -> PricingPredictor:
        """The predictor of an already fitted (or loaded) model."""
        predictor = cls()
        predictor.model_ = model
        return predictor

    def load_context(self, context: Any) -> None:
        self.model_ = DemandModel.load(Path(context.artifacts["model_dir"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[dict]:
        """One suggestion (as a dict) per row of ``product_id, price`` (optional ``cost, store_id,
        competitor_price``); ``params`` are PricingPolicy fields."""
        if self.model_ is None:
            raise RuntimeError("PricingPredictor has no model loaded")

        def value(row: dict, column: str) -> Any:
            v = row.get(column)
            return None if v is None or (isinstance(v, float) and pd.isna(v)) else v

        items = [
            PricingItem(
                product_id=str(row[C.product_id]),
                current_price=float(row[C.price]),
                cost=value(row, C.cost),
                store_id=None if value(row, C.store_id) is None else str(row[C.store_id]),
                competitor_price=value(row, C.competitor_price),
            )
            for row in model_input.to_dict("records")
        ]
        return [s.to_dict() for s in suggest(self.model_, items, PricingPolicy(**(params or {})))]
