"""The family contract: the pure promotion decision, the metric names, the lookup, and the generic runner driving
the worked example of docs/adding-a-family.md end to end on a real MLflow store."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

from omnicart import lake, registry, schemas
from omnicart.datasets.simulator import ShopSimulator
from omnicart.settings import Settings
from training import family as contract
from training.family import Decision, decide, flatten

DOC = Path(__file__).resolve().parents[3] / "docs" / "adding-a-family.md"


# --- decide: a pure function ----------------------------------------------------------------------------------------
def test_without_a_champion_the_guardrails_alone_decide() -> None:
    assert decide("rmse", 0.5, None, higher_is_better=False).promote
    held = decide("rmse", 0.5, None, higher_is_better=False, guardrail_failures=["elasticity"])
    assert held == Decision(False, "guardrail failed: elasticity")


@pytest.mark.parametrize(
    ("challenger", "champion", "higher", "promote"),
    [(0.31, 0.30, True, True), (0.30, 0.30, True, True), (0.29, 0.30, True, False),
     (0.9, 1.0, False, True), (1.0, 1.0, False, True), (1.1, 1.0, False, False)],
)  # fmt: skip
def test_the_challenger_must_match_or_beat_the_champion_in_the_metrics_direction(
    challenger: float, champion: float, higher: bool, promote: bool
) -> None:
    decision = decide("m", challenger, champion, higher_is_better=higher)
    assert decision.promote is promote
    assert ("beats or ties" if promote else "loses to") in decision.reason


def test_a_guardrail_failure_blocks_even_a_better_challenger() -> None:
    assert not decide("hit@1", 0.9, 0.1, higher_is_better=True, guardrail_failures=["too slow"]).promote


def test_a_challenger_without_a_finite_metric_is_never_promoted() -> None:
    assert not decide("ndcg", math.nan, None, higher_is_better=True).promote
    assert not decide("ndcg", math.nan, 0.2, higher_is_better=True).promote


def test_flatten_gives_mlflow_legal_names_and_drops_what_is_not_a_finite_number() -> None:
    flat = flatten({"model": {"hit@1": 0.5, "acc": math.nan}, "model@50%": {"share": 1}, "bm25+scope": {"x": 2.0}})
    assert flat == {"model.hit_at_1": 0.5, "model_at_50pct.share": 1.0, "bm25_scope.x": 2.0}
    assert all(re.fullmatch(r"[\w.\-/ ]+", k) for k in flat)


# --- lookup ---------------------------------------------------------------------------------------------------------
def test_every_listed_family_implements_the_contract() -> None:
    for name in schemas.FAMILIES:
        family = contract.get(name)
        assert family.name == name and family.gate_metric and family.predictor_type is not None


def test_an_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown model family 'nope'; known: recommend"):
        contract.get("nope")


# --- the worked example of docs/adding-a-family.md through the generic runner -------------------------------------
@pytest.fixture
def basket_family(tmp_path, monkeypatch):
    """The doc's module, installed as ``training.basket`` and listed as a family for this test only."""
    import training

    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code, f"{DOC} has no python code block"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "basket.py").write_text(code.group(1))
    monkeypatch.setattr(training, "__path__", [*training.__path__, str(tmp_path / "pkg")])
    monkeypatch.setattr(contract, "FAMILIES", (*schemas.FAMILIES, "basket"))
    yield
    sys.modules.pop("training.basket", None)


def test_the_documented_example_family_trains_is_judged_and_promoted_by_the_generic_runner(
    tmp_path, basket_family
) -> None:
    from training.run import train_family

    settings = Settings(home=tmp_path / "home", sim_items=20, sim_customers=40, sim_days=8)
    for day in ShopSimulator(settings).days():
        lake.write_partition(settings.lake_dir, schemas.EVENTS, day.day, day.events)

    first = train_family(settings, "basket", settings.sim_end)
    assert first.promoted and first.champion_metric is None
    assert first.metrics["model.orders"] > 0 and first.metrics["global_mean.mae"] > 0  # model and baseline, flattened
    second = train_family(settings, "basket", settings.sim_end)
    assert second.champion_metric == pytest.approx(first.metrics["model.mae"])  # same data, same model: a tie
    assert second.promoted and registry.champion_version(settings, "basket") == second.version
    assert registry.rollback(settings, "basket") == first.version
    champion = registry.load(settings, "basket")
    assert type(champion).__name__ == "BasketPredictor" and champion.means_["_all"] > 1
