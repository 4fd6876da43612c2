"""The small simulated shop and the two-stage recommender fitted on it once, shared by the test_recsys_* and
test_recommend_* modules (fitting it takes most of their time)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

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
