"""benchmarks.runner.gate: a ratio to a positive baseline, an absolute floor when the baseline is zero or less."""

import json

import pytest

from benchmarks.runner import gate
from omnicart.metrics import chance_at_k


def test_zero_baseline_and_zero_model_fails_on_the_floor():
    row = gate("cold_recall@10", 0.0, 0.0, 1.10, floor=0.069)
    assert (row["rule"], row["ratio"], row["pass"]) == ("floor", None, False)
    assert json.loads(json.dumps(row, allow_nan=False)) == row  # valid JSON: no Infinity


def test_zero_baseline_and_model_above_the_floor_passes():
    row = gate("cold_recall@10", 0.225, 0.0, 1.10, floor=0.069)
    assert (row["rule"], row["floor"], row["pass"]) == ("floor", 0.069, True)
    assert gate("cold_recall@10", 0.042, 0.0, 1.10, floor=0.069)["pass"] is False  # brand popularity's score


def test_zero_baseline_without_a_floor_fails():
    row = gate("hit@1", 0.9, 0.0, 1.10)
    assert (row["rule"], row["floor"], row["pass"]) == ("floor", None, False)
    assert gate("profit", 5.0, -2.0, 1.10)["rule"] == "floor"  # a negative baseline: no meaningful ratio either


def test_positive_baselines_keep_the_ratio_rule():
    assert gate("ndcg@10", 0.33, 0.30, 1.10, floor=0.9) == {
        "metric": "ndcg@10",
        "model": 0.33,
        "baseline": 0.30,
        "ratio": pytest.approx(1.1),
        "target": 1.10,
        "floor": 0.9,
        "rule": "ratio",
        "pass": True,
    }  # the floor only decides when the baseline is not positive
    assert gate("ndcg@10", 0.32, 0.30, 1.10)["pass"] is False


def test_lower_is_better_ratio_and_ceiling():
    assert gate("rmse", 0.45, 0.5, 0.90, higher_is_better=False)["pass"] is True
    assert gate("rmse", 0.46, 0.5, 0.90, higher_is_better=False)["pass"] is False
    ceiling = gate("seconds", 0.2, 0.0, 0.90, higher_is_better=False, floor=0.25)
    assert (ceiling["rule"], ceiling["pass"]) == ("floor", True)
    assert gate("seconds", 0.3, 0.0, 0.90, higher_is_better=False, floor=0.25)["pass"] is False


def test_chance_level_of_a_random_ranking():
    # one relevant item among 100: a random top 10 holds it with probability 0.1
    assert chance_at_k({"u": {"a"}}, 100, 10)["recall@10"] == pytest.approx(0.1)
    # 20 relevant among 100: 2 expected hits over min(10, 20) = 10; each position relevant with probability 0.2
    both = chance_at_k({"u": set(range(20))}, 100, 10)
    assert both["recall@10"] == pytest.approx(0.2) and both["ndcg@10"] == pytest.approx(0.2)
    # per-user pools (the novel metric ranks everything but the user's own items)
    assert chance_at_k({"u": {"a"}, "v": {"b"}}, {"u": 10, "v": 100}, 10)["recall@10"] == pytest.approx(0.55)
    with pytest.raises(ValueError):
        chance_at_k({"u": {"a", "b"}}, 1, 10)


def test_recommend_floor_is_ten_times_chance_and_stays_below_a_perfect_score():
    from benchmarks.recommend import chance_floor

    assert chance_floor(10 / 1441) == pytest.approx(0.0694, abs=1e-4)  # the cold-item bench's pool
    assert chance_floor(0.2) == pytest.approx(0.6)  # 40 items: halfway from chance to 1, not an unreachable 2.0
