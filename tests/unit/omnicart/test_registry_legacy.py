"""Models pickled before the predictors moved into the core still load where the old modules are gone."""

from __future__ import annotations

import pickle
import sys

from omnicart import registry
from omnicart.pricing.pyfunc import PricingPredictor
from omnicart.recommend.predictor import Recommender
from omnicart.support.predictor import SupportModel


def _pickled_under(obj: object, module: str) -> bytes:
    """``obj`` pickled as if its class still lived in ``module`` (protocol 0 names the class in plain text)."""
    cls = type(obj)
    data = pickle.dumps(obj, protocol=0)
    old = f"{cls.__module__}\n{cls.__qualname__}".encode()
    assert old in data
    return data.replace(old, f"{module}\n{cls.__qualname__}".encode())


def test_a_predictor_pickled_under_its_old_module_loads_without_that_module(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "training" or m.startswith("training.")]:
        monkeypatch.delitem(sys.modules, name)
    old_recommend = _pickled_under(Recommender(), "training.recommend")
    old_support = _pickled_under(SupportModel(), "training.support")

    with registry.legacy_modules(importable=lambda name: False) as aliased:
        assert sorted(aliased) == ["training.recommend", "training.support"]
        assert type(pickle.loads(old_recommend)) is Recommender
        assert type(pickle.loads(old_support)) is SupportModel

    assert "training.recommend" not in sys.modules and "training" not in sys.modules  # the stand-ins are gone


def test_nothing_is_aliased_where_the_old_modules_still_import(monkeypatch) -> None:
    with registry.legacy_modules(importable=lambda name: True) as aliased:
        assert aliased == []
    assert type(pickle.loads(pickle.dumps(PricingPredictor()))) is PricingPredictor  # never moved
