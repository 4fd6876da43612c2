"""Pricing end to end on the real services: simulated prices in the lake → Ray Train job → evaluation beside the
baselines → MLflow registry (champion alias) → the registry's predictor answering POST /price logic."""

from __future__ import annotations

import pytest

from omnicart import lake, registry, schemas
from omnicart.datasets.simulator import ShopSimulator
from omnicart.settings import Settings


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_train_register_and_serve_pricing(tmp_path) -> None:
    import ray

    from serving.pricing import PricingService
    from training.run import train_family

    settings = Settings(home=tmp_path, sim_items=20, sim_customers=10, sim_days=40)
    for day in ShopSimulator(settings).days():
        lake.write_partition(settings.lake_dir, schemas.PRICES, day.day, day.prices)
        lake.write_partition(settings.lake_dir, schemas.ITEMS, day.day, day.items)
    try:
        first = train_family(settings, "pricing", settings.sim_end, params={"n_estimators": 40})
        assert first.promoted and registry.champion_version(settings, "pricing") == first.version
        assert first.metrics["model.rmse"] < first.metrics["series_mean.rmse"]
        second = train_family(settings, "pricing", settings.sim_end, params={"n_estimators": 40})
        assert second.champion_metric is not None  # judged against the champion on the same evaluation data
    finally:
        ray.shutdown()

    catalog = lake.read_table(settings.lake_dir, schemas.ITEMS)
    service = PricingService(load_model=lambda: registry.load(settings, "pricing"), catalog=catalog)
    answer = service.price({"product_id": "I00003", "competitor_price": 30.0})
    assert answer.reason and answer.drivers and answer.elasticity is not None
