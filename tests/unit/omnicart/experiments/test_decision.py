"""The daily decision: guardrails, sample-ratio check, harm, efficacy, canary widening; and sticky assignment."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from omnicart.experiments import config as xconfig
from omnicart.experiments.config import CHALLENGER, CHAMPION, Experiment
from omnicart.experiments.decision import Observation, decide

DAY = dt.date(2026, 3, 1)


def experiment(**options) -> Experiment:
    return xconfig.start("recommend", "7", DAY, **options)


def arms(rng, n_champ: int, n_chall: int, effect: float, mean: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(mean, 1.0, n_champ), rng.normal(mean * (1 + effect), 1.0, n_chall)


def test_assignment_is_sticky_and_widening_only_moves_units_to_the_challenger() -> None:
    exp = experiment()
    ids = [f"C{i:05d}" for i in range(20_000)]
    first = {i: exp.variant(i) for i in ids}
    assert np.mean([v == CHALLENGER for v in first.values()]) == pytest.approx(0.05, abs=0.005)
    assert all(exp.variant(i) == first[i] for i in ids[:500])  # sticky
    wider = Experiment(exp.config, xconfig.ExperimentState(started=DAY, stage=2))
    second = {i: wider.variant(i) for i in ids}
    assert np.mean([v == CHALLENGER for v in second.values()]) == pytest.approx(0.25, abs=0.01)
    assert all(second[i] == CHALLENGER for i in ids if first[i] == CHALLENGER)
    assert exp.variant(None) == CHAMPION


def test_state_round_trips_through_its_file(tmp_path) -> None:
    exp = experiment(stages=(0.1, 0.5), mde=0.05)
    exp.state.history.append({"action": "continue"})
    xconfig.save(tmp_path, exp)
    again = xconfig.load(tmp_path, "recommend")
    assert again == exp and xconfig.running(tmp_path, "pricing") is None
    (tmp_path / "experiments" / "pricing.json").write_text('{"config": {"family": "pricing"}}')
    with pytest.raises(ValueError, match="not a valid experiment"):
        xconfig.load(tmp_path, "pricing")


@pytest.mark.parametrize(
    "options", [{"stages": (0.5, 0.1)}, {"stages": (0.0, 0.5)}, {"mde": 0.0}, {"alpha": 0.6}, {"power": 0.3}]
)
def test_invalid_configs_are_refused(options) -> None:
    with pytest.raises(ValueError):
        experiment(**options)


def test_a_clearly_better_challenger_is_promoted() -> None:
    rng = np.random.default_rng(0)
    exp = experiment(stages=(0.5,))
    champ, chall = arms(rng, 20_000, 20_000, 0.10)
    decision, after = decide(exp, Observation(DAY, champ, chall, stage_units=(20_000, 20_000)))
    assert decision.action == "promote" and after.state.status == "promoted" and after.share == 0
    assert decision.uplift.relative == pytest.approx(0.10, abs=0.03)
    assert decision.z > decision.efficacy_boundary
    assert after.state.history[-1]["action"] == "promote"


def test_a_clearly_worse_challenger_is_rolled_back() -> None:
    rng = np.random.default_rng(1)
    champ, chall = arms(rng, 19_000, 1_000, -0.3)
    decision, after = decide(experiment(), Observation(DAY, champ, chall, stage_units=(19_000, 1_000)))
    assert decision.action == "rollback" and "worse" in decision.reason
    assert after.state.status == "rolled_back"


def test_sample_ratio_mismatch_rolls_back_whatever_the_uplift() -> None:
    rng = np.random.default_rng(2)
    champ, chall = arms(rng, 1_000, 1_000, 0.5)
    decision, _ = decide(experiment(), Observation(DAY, champ, chall, stage_units=(1_000, 1_000)))
    assert decision.action == "rollback" and "sample ratio mismatch" in decision.reason
    assert decision.srm_p_value < 1e-6


def test_operational_guardrails_roll_back() -> None:
    rng = np.random.default_rng(3)
    champ, chall = arms(rng, 950, 50, 0.0)
    errors = {CHAMPION: (950, 9), CHALLENGER: (50, 5)}
    decision, _ = decide(experiment(), Observation(DAY, champ, chall, requests=errors))
    assert decision.action == "rollback" and "error rate" in decision.reason
    slow = {CHAMPION: 10.0, CHALLENGER: 40.0}
    decision, _ = decide(experiment(), Observation(DAY, champ, chall, latency_p95_ms=slow))
    assert decision.action == "rollback" and "latency" in decision.reason


def test_canary_widens_below_the_guard_share_and_waits_for_harm_power_before_it() -> None:
    rng = np.random.default_rng(4)
    exp = experiment()
    champ, chall = arms(rng, 950, 50, 0.0)
    decision, exp = decide(exp, Observation(DAY, champ, chall))
    assert decision.action == "widen" and exp.share == 0.10
    assert exp.state.stage_started == DAY + dt.timedelta(days=1)
    # the next share is 25 % (the guard share): with little information the canary holds at 10 %
    champ, chall = arms(rng, 900, 100, 0.0)
    decision, exp = decide(exp, Observation(DAY + dt.timedelta(days=1), champ, chall))
    assert decision.action == "continue" and "harm test" in decision.reason and exp.share == 0.10
    assert len(exp.state.harm_looks) == 2 and exp.state.harm_looks[1] > exp.state.harm_looks[0]


def test_too_few_units_continue_and_the_planned_end_stops() -> None:
    rng = np.random.default_rng(5)
    champ, chall = arms(rng, 100, 5, 0.0)
    decision, _ = decide(experiment(), Observation(DAY, champ, chall))
    assert decision.action == "continue" and "too few" in decision.reason
    champ, chall = arms(rng, 200_000, 200_000, 0.0)
    decision, after = decide(experiment(stages=(0.5,)), Observation(DAY, champ, chall))
    assert decision.action == "stop" and "planned sample size" in decision.reason
    assert after.state.status == "stopped"
    with pytest.raises(ValueError, match="ended"):
        decide(after, Observation(DAY, champ, chall))
