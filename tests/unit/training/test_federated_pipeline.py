"""The train_federated steps without Flower: what a run's date makes training data, shards from each owner's file
alone, and the gate and registration against a real MLflow (SQLite) in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from omnicart import registry
from omnicart.federated import linear
from omnicart.federated.owners import write_owner_files
from omnicart.federated.predictor import FederatedDemandPredictor, save
from omnicart.federated.silos import COLUMNS, Silo
from omnicart.pricing.features import PRICE_INDEX
from omnicart.schemas import C
from omnicart.settings import Settings
from tests.unit.omnicart.federated.federated_data import stores_table
from training import federated

AS_OF = pd.Timestamp("2024-10-03", tz="UTC")  # week 40 of the tables (weeks start on Thursdays from 2024-01-04)
HOLDOUT = 4


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", federated_holdout_weeks=HOLDOUT)


@pytest.fixture
def frame() -> pd.DataFrame:
    return stores_table(stores=4, products=3, weeks=60)


def test_the_run_date_decides_what_is_known_and_what_is_held_out():
    split, known_until = federated.window(AS_OF, HOLDOUT)
    assert known_until == pd.Timestamp("2024-09-26")  # the week starting then ended at the run's date
    weeks = pd.date_range("2024-01-04", periods=60, freq="7D")
    train = weeks[weeks < split]
    test = weeks[(weeks >= split) & (weeks <= known_until)]
    assert train.max() == pd.Timestamp("2024-08-29")
    assert list(test) == list(pd.date_range("2024-09-05", periods=HOLDOUT, freq="7D"))
    with pytest.raises(ValueError):
        federated.window(AS_OF, 0)


def test_a_shard_is_its_owner_rows_known_at_the_run_date(settings, frame):
    write_owner_files(frame, settings.owners_dir)
    files = federated.owners(settings)
    shard = federated.build_shard(settings, files[1], AS_OF)
    mine = frame[frame[C.store_id] == "1"]
    split, known_until = federated.window(AS_OF, HOLDOUT)
    assert shard["owner"] == "1"
    assert shard["train_rows"] == int((mine[C.period] < split).sum())
    assert shard["test_rows"] == int(((mine[C.period] >= split) & (mine[C.period] <= known_until)).sum())
    silo = Silo.load(Path(shard["shard"]))
    assert silo.A_train.shape == (shard["train_rows"], len(COLUMNS))
    # a later week changed after the run date leaves the shard as it was: a backfill sees what was known then
    later = frame.copy()
    late = later[C.period] > known_until
    later.loc[late, C.units] *= 10
    write_owner_files(later, settings.owners_dir)
    again = Silo.load(Path(federated.build_shard(settings, files[1], AS_OF)["shard"]))
    np.testing.assert_array_equal(silo.A_train, again.A_train)
    np.testing.assert_array_equal(silo.y_test, again.y_test)


def test_an_owner_without_training_weeks_sits_the_run_out(settings, frame):
    write_owner_files(frame[frame[C.period] >= pd.Timestamp("2024-09-05")], settings.owners_dir)
    out = federated.build_shard(settings, federated.owners(settings)[0], AS_OF)
    assert out == {"owner": "0", "shard": None, "train_rows": 0, "test_rows": 0}
    assert federated.taking_part([out, {"owner": "1", "shard": "1.npz"}]) == [{"owner": "1", "shard": "1.npz"}]


def test_too_few_owners_is_a_clear_error(settings, frame):
    write_owner_files(frame, settings.owners_dir, owners=["0", "1"])
    with pytest.raises(ValueError, match="at least 3"):
        federated.owners(settings)
    with pytest.raises(ValueError, match="secure aggregation"):
        federated.train(settings, [{"owner": "1", "shard": None}, {"shard": "x", "train_rows": 1, "owner": "0"}], AS_OF)


def _trained(settings, shards, weights, name: str) -> dict:
    """What the train step returns, for weights computed here instead of by a Flower run."""
    info = {
        "as_of": AS_OF.isoformat(),
        "train_until": "2024-08-29T00:00:00",
        "known_until": "2024-09-26T00:00:00",
        "rounds": 2,
        "owners": [s["owner"] for s in shards],
        "dp": True,
        "epsilon": 4.0,
        "delta": 1e-5,
        "noise_multiplier": 1.3,
        "clipping_norm": 1.0,
        "bytes_per_client": 5000.0,
        "bytes_per_client_max": 5100.0,
        "seconds": 3.0,
    }
    path = save(settings.federated_dir / name / "model.json", weights, **info)
    return {"model": str(path), **info}


def test_first_model_becomes_champion_a_worse_one_is_registered_but_not_promoted(settings, frame):
    write_owner_files(frame, settings.owners_dir)
    shards = [federated.build_shard(settings, f, AS_OF) for f in federated.owners(settings)]
    silos = [Silo.load(Path(s["shard"])) for s in shards]
    good = linear.fit(np.vstack([s.A_train for s in silos]), np.concatenate([s.y_train for s in silos]))

    first = _trained(settings, shards, good, "good")
    judged = federated.evaluate(settings, shards, first)
    assert judged["promote"] and judged["champion_metric"] is None and "no champion" in judged["reason"]
    out = federated.register(settings, first, judged)
    assert out["promoted"] and out["version"] == "1"
    assert registry.champion_version(settings, federated.FAMILY) == "1"
    assert registry.model_name(federated.FAMILY) == "omnicart-pricing-federated"
    logged = registry.version_metrics(settings, federated.FAMILY, "1")
    assert logged["model.rmse"] == pytest.approx(judged["evaluation"]["model"]["rmse"])
    assert logged["model.rmse"] < 0.5  # the tables' noise is 0.2 in log units
    assert logged["dp.epsilon"] == 4.0 and logged["bytes_per_client"] == 5000.0
    run = registry.client(settings).get_run(
        registry.client(settings).get_model_version("omnicart-pricing-federated", "1").run_id
    )
    assert run.data.params["rounds"] == "2" and run.data.params["columns"] == ",".join(COLUMNS)
    champion = registry.load(settings, federated.FAMILY)
    assert isinstance(champion, FederatedDemandPredictor)
    np.testing.assert_allclose(champion.weights_, good)
    table = pd.DataFrame(silos[0].A_test, columns=list(COLUMNS))
    np.testing.assert_allclose(champion.predict(None, table), silos[0].A_test @ good, rtol=1e-6)

    worse = good.copy()
    worse[COLUMNS.index("intercept")] += 0.5  # every prediction half a log unit off; the elasticity unchanged
    second = _trained(settings, shards, worse, "worse")
    judged = federated.evaluate(settings, shards, second)
    assert not judged["promote"] and "loses to the champion" in judged["reason"]
    assert judged["champion_metric"] == pytest.approx(logged["model.rmse"])
    assert judged["evaluation"]["model"]["rmse"] > judged["champion_metric"]
    out = federated.register(settings, second, judged)
    assert out["version"] == "2" and not out["promoted"] and out["champion_version"] == "1"
    assert registry.champion_version(settings, federated.FAMILY) == "1"
    assert registry.version_metrics(settings, federated.FAMILY, "2")["gate.champion"] == pytest.approx(
        judged["champion_metric"]
    )
    assert json.loads(Path(second["model"]).read_text())["columns"] == list(COLUMNS)


def test_a_model_whose_demand_rises_with_price_is_never_promoted(settings, frame):
    write_owner_files(frame, settings.owners_dir)
    shards = [federated.build_shard(settings, f, AS_OF) for f in federated.owners(settings)]
    weights = np.zeros(len(COLUMNS))
    weights[COLUMNS.index(PRICE_INDEX)] = 1.0
    judged = federated.evaluate(settings, shards, _trained(settings, shards, weights, "rising"))
    assert not judged["promote"] and "elasticity" in judged["reason"]


def test_the_cli_lists_and_rolls_back_the_federated_model(tmp_path, monkeypatch, frame):
    import socket

    from typer.testing import CliRunner

    from edge.cli import app
    from omnicart.settings import get_settings

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("OMNICART_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNICART_SERVE_PORT", str(port))  # nothing serves there: a rollback redeploys nothing
    get_settings.cache_clear()
    try:
        settings = get_settings()
        write_owner_files(frame, settings.owners_dir)
        shards = [federated.build_shard(settings, f, AS_OF) for f in federated.owners(settings)]
        for name in ("first", "second"):
            trained = _trained(settings, shards, np.full(len(COLUMNS), -0.1), name)
            out = federated.register(settings, trained, {**federated.evaluate(settings, shards, trained)})
            assert out["promoted"]  # the same weights tie the champion, and a tie promotes the newer model
        assert registry.champion_version(settings, federated.FAMILY) == "2"
        listed = CliRunner().invoke(app, ["models", "list", "pricing-federated"])
        assert listed.exit_code == 0, listed.output
        assert "omnicart-pricing-federated" in listed.output and "champion" in listed.output
        rolled = CliRunner().invoke(app, ["models", "rollback", "pricing-federated"])
        assert rolled.exit_code == 0, rolled.output
        assert registry.champion_version(settings, federated.FAMILY) == "1"
        assert CliRunner().invoke(app, ["models", "list", "nonsense"]).exit_code == 2
    finally:
        get_settings.cache_clear()
