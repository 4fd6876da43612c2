"""Silos are computed by each owner alone; the linear model's local update and FedAvg behave as claimed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from omnicart.federated import linear
from omnicart.federated.silos import COLUMNS, Silo, own_price_elasticity, split_by_owner
from omnicart.schemas import C
from tests.unit.omnicart.federated.federated_data import ELASTICITY, stores_table

SPLIT = pd.Timestamp("2024-09-01")  # week 35 of 60 in the default tables


def test_one_silo_per_store_holding_only_its_rows():
    frame = stores_table()
    silos = split_by_owner(frame, SPLIT)
    assert [s.owner for s in silos] == ["0", "1", "2"]
    for silo in silos:
        mine = frame[frame[C.store_id] == silo.owner]
        assert len(silo.y_train) == int((mine[C.period] < SPLIT).sum())
        assert len(silo.y_test) == int((mine[C.period] >= SPLIT).sum())
        assert silo.A_train.shape[1] == len(COLUMNS)
        np.testing.assert_allclose(silo.y_train, np.log(mine.loc[mine[C.period] < SPLIT, C.units].sort_index()))


def test_a_store_features_do_not_depend_on_other_stores_rows():
    frame = stores_table()
    alone = split_by_owner(frame[frame[C.store_id] == "1"], SPLIT)[0]
    others = frame[C.store_id] != "1"
    changed = frame.copy()
    changed.loc[others, C.price] *= 3.0
    changed.loc[others, C.units] += 50
    together = {s.owner: s for s in split_by_owner(changed, SPLIT)}["1"]
    np.testing.assert_array_equal(alone.A_train, together.A_train)
    np.testing.assert_array_equal(alone.A_test, together.A_test)


def test_a_silo_survives_its_file(tmp_path):
    silo = split_by_owner(stores_table(), SPLIT)[0]
    back = Silo.load(silo.save(tmp_path / "s.npz"))
    assert back.owner == silo.owner
    np.testing.assert_allclose(back.A_train, silo.A_train, rtol=1e-6)


def test_local_update_without_prox_is_least_squares():
    rng = np.random.default_rng(0)
    A = np.column_stack([rng.normal(size=(500, 3)), np.ones(500)])
    y = A @ np.array([0.5, -1.0, 2.0, 3.0]) + rng.normal(0, 0.1, 500)
    w = linear.local_update(A, y, np.full(4, 10.0), prox=0.0, ridge=0.0)
    np.testing.assert_allclose(w, np.linalg.lstsq(A, y, rcond=None)[0], atol=1e-10)
    # a strong proximal term keeps the update near the global weights
    near = linear.local_update(A, y, np.full(4, 10.0), prox=1e6, ridge=0.0)
    np.testing.assert_allclose(near, 10.0, atol=1e-3)


def test_averaging_store_optima_recovers_the_pooled_fit_and_a_negative_elasticity():
    # stores alike (the same demand curve): then averaging their optima lands on the pooled fit
    silos = split_by_owner(stores_table(stores=4, products=8, weeks=200, level_step=0.0), SPLIT)
    pooled = linear.fit(np.vstack([s.A_train for s in silos]), np.concatenate([s.y_train for s in silos]))
    w = np.zeros(len(COLUMNS))
    for _ in range(3):  # FedAvg rounds by rows, as the federated run weighs clients without DP
        updates = [linear.local_update(s.A_train, s.y_train, w) for s in silos]
        w = np.average(updates, axis=0, weights=[len(s.y_train) for s in silos])
    test = [(s.A_test, s.y_test) for s in silos]
    rmse = {
        k: np.sqrt(np.mean(np.concatenate([linear.predict(A, v) - y for A, y in test]) ** 2))
        for k, v in {"fed": w, "pooled": pooled}.items()
    }
    assert rmse["fed"] <= 1.05 * rmse["pooled"]
    assert own_price_elasticity(w) == pytest.approx(ELASTICITY, abs=0.3)
