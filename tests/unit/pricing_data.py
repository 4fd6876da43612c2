"""Small pricing fixtures shared by the test_pricing_* modules: simulator demand data and a model fitted once."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache

import pandas as pd

from omnicart.datasets.simulator import GroundTruth, ShopSimulator
from omnicart.pricing.model import DemandModel
from omnicart.settings import Settings
from training.pricing import canonical_prices

ITEMS = 40
DAYS = 120


@lru_cache(maxsize=4)
def simulated(items: int = ITEMS, days: int = DAYS, seed: int = 11) -> tuple[pd.DataFrame, GroundTruth, pd.DataFrame]:
    """(canonical demand table, ground truth, catalog) of a small simulated shop; prices only, so it is fast."""
    settings = Settings(seed=seed, sim_items=items, sim_customers=10, sim_days=days, home="/nonexistent-omnicart")
    sim = ShopSimulator(settings)
    prices = pd.concat([sim.day(sim.start + timedelta(days=t)).prices for t in range(days)], ignore_index=True)
    return canonical_prices(prices, sim.catalog()), sim.ground_truth(), sim.catalog()


@lru_cache(maxsize=1)
def fitted() -> DemandModel:
    """A demand model on the small shop (a couple of seconds)."""
    frame, _, _ = simulated()
    return DemandModel(n_estimators=120, max_depth=6, max_train_rows=None, nthread=1, seed=0).fit(frame)
