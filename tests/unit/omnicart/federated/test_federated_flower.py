"""A real Flower run (SecAgg+) over four small stores, inspected from the server's side.

What the server received is recorded by the run itself (``record``): every numeric array in every reply that reached
the server. Needs the Flower environment (``make flower``); skips without it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from omnicart.federated import runner
from omnicart.federated.silos import COLUMNS, split_by_owner
from omnicart.schemas import C
from omnicart.settings import Settings
from tests.unit.omnicart.federated.federated_data import stores_table

SPLIT = pd.Timestamp("2025-10-01")
ROUNDS = 2
QUANTISED = 2**22  # SecAgg+ quantises a plain weight into [0, 2^22); a masked one is uniform on [0, 2^32)


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    try:
        runner.flower_python(settings)
    except runner.FlowerUnavailable as exc:
        pytest.skip(f"Flower environment absent ({exc})")
    frame = stores_table(stores=4, products=6, weeks=120, level_step=0.0)
    # store 0 holds half the rows of the others: what it sends must not grow or shrink with its data
    frame = frame[~((frame[C.store_id] == "0") & frame[C.product_id].isin(["0", "1", "2"]))]
    silos = split_by_owner(frame, SPLIT)
    tmp = tmp_path_factory.mktemp("federated")
    shards = [s.save(tmp / f"store-{s.owner}.npz") for s in silos]
    config = runner.FederatedConfig(rounds=ROUNDS)
    run = runner.run(settings, shards, [len(s.y_train) for s in silos], len(COLUMNS), tmp / "out", config, record=True)
    with np.load(run.out_dir / "received.npz") as z:
        kinds = list(z["kinds"])
        received = [z[f"a{i}"] for i in range(len(kinds))]
    updates = [np.load(run.out_dir / "updates" / f"{i}.npz")["updates"] for i in range(len(silos))]
    return silos, shards, run, kinds, received, updates


def test_the_server_is_never_told_where_the_rows_are(flower_run):
    silos, shards, run, *_ = flower_run
    spec = json.loads((run.out_dir / "run.json").read_text())
    server_part = json.dumps(spec["server"])
    assert all(str(path.name) not in server_part and str(path.parent) not in server_part for path in shards)
    assert spec["clients"]["shards"] == [str(p.resolve()) for p in shards]


def test_raw_rows_never_reach_the_server(flower_run):
    silos, _, run, kinds, received, _ = flower_run
    assert received, "the server received nothing: the inspection would prove nothing"
    for silo in silos:
        rows = np.vstack([silo.A_train, silo.A_test])
        for array in received:
            assert array.size <= len(COLUMNS), "an array as long as a table reached the server"
            if array.size == rows.shape[1]:
                assert np.abs(rows - array.astype(np.float64)).max(axis=1).min() > 1e-3
    # what a client sends is the protocol's, whatever its data: the small store sends what the large ones send
    sent = run.bytes_per_client
    assert len(sent) == len(silos)
    assert len(silos[0].y_train) < 0.6 * len(silos[1].y_train)
    assert max(sent.values()) - min(sent.values()) <= 0.02 * max(sent.values())
    assert all(sent[i] < silos[i].A_train.nbytes for i in range(len(silos)))


def test_secure_aggregation_hides_each_update_but_sums_them_right(flower_run):
    silos, _, run, kinds, received, updates = flower_run
    masked = [a for a, k in zip(received, kinds, strict=True) if k.endswith("masked_params") and a.size == len(COLUMNS)]
    assert len(masked) == len(silos) * ROUNDS  # one masked vector per client per round, and nothing else of size d
    assert not any(k.startswith("array:") for k in kinds)  # no plain parameters in any reply
    for vector in masked:
        # masked: uniform on [0, 2^32); a plain quantised update would sit below 2^22 in every entry
        assert np.mean(vector >= QUANTISED) > 0.5
    plain = np.vstack([u for u in updates])  # every client's weights before masking, kept on the client's side
    assert plain.shape == (len(silos) * ROUNDS, len(COLUMNS))
    for vector in masked:
        assert not np.isclose(plain, vector.astype(np.float64), atol=1e-3).all(axis=1).any()
    # the unmasked aggregate is the row-weighted mean of the last round's plain updates (up to quantisation)
    last = np.vstack([u[-1] for u in updates])
    expected = np.average(last, axis=0, weights=[len(s.y_train) for s in silos])
    np.testing.assert_allclose(run.weights, expected, atol=1e-4)
    assert np.abs(last - expected).max() > 1e-3  # the clients did differ: the sum hid something


def test_dp_run_reports_its_guarantee_and_noises_the_sum(flower_run, tmp_path):
    silos, shards, run, *_ = flower_run
    dp = runner.DPConfig(epsilon=4.0, delta=1e-5, clipping_norm=1.0)
    config = runner.FederatedConfig(rounds=ROUNDS, dp=dp, seed=3)
    settings = Settings(home=tmp_path / "home")
    noisy = runner.run(settings, shards, [len(s.y_train) for s in silos], len(COLUMNS), tmp_path / "dp", config)
    assert noisy.guarantee is not None
    assert noisy.guarantee.epsilon == pytest.approx(4.0, abs=1e-6) and noisy.guarantee.delta == 1e-5
    # Gaussian noise of σ·C/n per weight and round (σ ≈ 1.5 here): the model moves, but not by more than ~6 sd
    sd = noisy.noise_multiplier * dp.clipping_norm / len(silos)
    assert np.abs(noisy.weights - run.weights).max() > 1e-3
    assert np.abs(noisy.weights - run.weights).max() < 6 * sd * np.sqrt(ROUNDS) + 2 * dp.clipping_norm
