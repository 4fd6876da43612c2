"""Small weekly demand tables with stores, for the federated tests: log units = store level − 2 × log price + noise."""

from __future__ import annotations

import numpy as np
import pandas as pd

from omnicart.schemas import C

ELASTICITY = -2.0


def stores_table(
    stores: int = 3, products: int = 4, weeks: int = 60, seed: int = 0, level_step: float = 0.3
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(stores):
        level = 3.0 + level_step * s
        for p in range(products):
            base = 2.0 + 0.5 * p
            price = base * np.exp(rng.normal(0, 0.15, weeks))
            log_units = level + ELASTICITY * np.log(price / base) + rng.normal(0, 0.2, weeks)
            for w in range(weeks):
                rows.append(
                    {
                        C.series_id: f"{s}:{p}",
                        C.product_id: str(p),
                        C.store_id: str(s),
                        C.period: pd.Timestamp("2024-01-04") + pd.Timedelta(weeks=w),
                        C.price: round(float(price[w]), 2),
                        C.units: float(max(1, round(np.exp(log_units[w])))),
                    }
                )
    return pd.DataFrame(rows)
