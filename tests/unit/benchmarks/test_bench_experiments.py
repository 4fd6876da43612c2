"""The experiments benchmark's world: exact true effects, a decisive run, and off-policy estimates near the truth."""

from __future__ import annotations

import pytest

from benchmarks import experiments as bench


@pytest.fixture(scope="module")
def world() -> bench.World:
    return bench.build_world(3, customers=4000)


def test_challengers_have_exactly_the_uplift_they_are_built_for(world) -> None:
    for effect in bench.SCENARIOS:
        p1, mix = bench.challenger_rates(world, effect)
        assert p1.mean() / world.p_champion.mean() - 1 == pytest.approx(effect, abs=1e-12)
        assert 0 <= mix <= 1
    assert world.p_worse.mean() < world.p_champion.mean() < world.p_better.mean()
    with pytest.raises(ValueError, match="out of this world's reach"):
        bench.challenger_rates(world, 5.0)


def test_a_much_better_challenger_is_promoted_and_a_much_worse_one_rolled_back_in_the_canary(world) -> None:
    better, _ = bench.challenger_rates(world, 0.3)
    run = bench.simulate(world, better, 1, "omnicart")
    assert run.outcome == "promote" and run.information <= 1
    worse = world.p_champion * 0.5
    run = bench.simulate(world, worse, 1, "omnicart")
    assert run.outcome == "rollback" and run.max_share < bench.GUARD_SHARE


def test_off_policy_estimators_beat_the_logged_rate() -> None:
    rows = {r["model"]: r for r in bench.off_policy(3, visits=100_000)}
    naive = rows["naive (logged rate)"]["relative_error"]
    for name in ("ips", "snips", "doubly robust"):
        assert rows[name]["relative_error"] < 0.1 < naive
