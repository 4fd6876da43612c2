"""The small simulated shop and the two-stage recommender fitted on it once, shared by the test_recsys_* and
test_recommend_* modules (fitting it takes most of their time)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from omnicart.datasets.simulator import ShopSimulator
from omnicart.recommend import recsys
from omnicart.recommend.candidates import CandidateParams
from omnicart.recommend.ranker import RankerParams
from omnicart.recommend.two_tower import TwoTowerParams
from omnicart.schemas import C
from omnicart.settings import Settings

PARAMS = recsys.RecSysParams(
    label_days=14,
    n_cuts=2,
    cut_stride_days=7,
    ease_lambda=20.0,
    candidates=CandidateParams(n_history=50, n_ease=20, n_cooc=10, n_two_tower=10, n_text=5, n_popular=10),
    two_tower=TwoTowerParams(dim=16, hidden=32, epochs=3, batch_size=128),
    ranker=RankerParams(max_rounds=60, early_stopping_rounds=20, eval_share=0.3, min_child_weight=2.0),
)


@lru_cache(maxsize=1)
def fitted_shop() -> tuple[recsys.RecSys, pd.DataFrame, pd.DataFrame, object]:
    """(model, purchases, catalog, the simulator's repeat items) of 60 simulated days; callers must not refit it."""
    home = Path(tempfile.mkdtemp(prefix="omnicart-recsys-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    sim = ShopSimulator(Settings(home=home, sim_customers=150, sim_days=60))
    events = pd.concat([d.events for d in sim.days()], ignore_index=True)
    purchases = events[events[C.event_type] == "purchase"].reset_index(drop=True)
    model = recsys.RecSys(PARAMS, cache_dir=home / "cache").fit(purchases, sim.catalog())
    return model, purchases, sim.catalog(), sim.ground_truth().repeat_items


# --- a shop whose customers buy different regulars in different channels (the channel tests) ---
N_CUSTOMERS, N_ITEMS, DAYS = 80, 40, 300
START = pd.Timestamp("2026-01-01", tz="UTC")


def channel_shop(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(purchases, catalog): store items are 0-19, web items 20-39; every 15 to 25 days a customer places one order
    in one channel, of one or two of their regulars for that channel."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(N_CUSTOMERS):
        regulars = {"store": rng.choice(20, 3, replace=False), "web": 20 + rng.choice(20, 3, replace=False)}
        day = float(rng.uniform(0, 20))
        while day < DAYS:
            channel = "store" if rng.random() < 0.5 else "web"
            for item in rng.choice(regulars[channel], size=int(rng.integers(1, 3)), replace=False):
                rows.append((f"c{c}", f"i{item}", START + pd.Timedelta(days=day), channel))
            day += float(rng.uniform(15, 25))
    purchases = pd.DataFrame(rows, columns=[C.customer_id, C.item_id, C.event_timestamp, C.channel])
    catalog = pd.DataFrame(
        {
            C.item_id: [f"i{n}" for n in range(N_ITEMS)],
            C.title: [f"product number {n}" for n in range(N_ITEMS)],
            C.category: [f"range {n % 4}" for n in range(N_ITEMS)],  # ranges mix both channels
            C.price: 5.0 + np.arange(N_ITEMS) % 7,
        }
    )
    return purchases, catalog
