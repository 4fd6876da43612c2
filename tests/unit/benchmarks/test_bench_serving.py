"""benchmarks.serving's measurement: the open-loop schedule, the step summary, and saturation found against real
loopback servers of known capacity (the bench's own trivial server, in a subprocess)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks import serving
from benchmarks.serving import Outcome, Plan, Step, saturation, schedule, summarise

PLAN = Plan(step_seconds=1.5, timeout_s=1.0, max_inflight=64)


def test_schedule_is_evenly_spaced_at_the_rate():
    times = schedule(20, 2.0)
    assert len(times) == 40
    assert times[0] == 0.0 and np.allclose(np.diff(times), 0.05)
    assert len(schedule(0, 2.0)) == 0 and len(schedule(10, 0)) == 0


def test_a_server_that_keeps_up_achieves_the_offered_rate():
    # 10 req/s for 2 s, each answered in 5 ms
    outcomes = [Outcome(t, t + 0.005, 200) for t in schedule(10, 2.0)]
    step = summarise(10, outcomes)
    assert step.achieved == pytest.approx(10.0)
    assert step.kept_up and step.errors == {}
    assert step.p50_ms == pytest.approx(5.0) and step.p99_ms == pytest.approx(5.0)


def test_a_queue_behind_the_server_shows_as_latency_and_a_lower_rate():
    # offered 100 req/s for 1 s, served one at a time at 50 req/s: each waits for the ones before it
    times = schedule(100, 1.0)
    done = 0.02 * np.arange(1, len(times) + 1)
    step = summarise(100, [Outcome(t, d, 200) for t, d in zip(times, done, strict=True)])
    assert step.achieved == pytest.approx(50.0, rel=0.02)
    assert not step.kept_up
    # latency counts from the scheduled send time, so the queue is in it: the last waits about a second
    assert step.p99_ms > 900 and step.p50_ms > 400


def test_errors_are_counted_by_status_and_fail_the_step():
    outcomes = [Outcome(0.0, 0.01, 200), Outcome(0.1, 0.11, 503), Outcome(0.2, 2.2, 0), Outcome(0.3, 0.31, 200)]
    step = summarise(10, outcomes)
    assert step.errors == {"503": 1, "timeout": 1}
    assert (step.sent, step.ok) == (4, 2)
    assert not step.kept_up
    assert step.max_ms == pytest.approx(2000.0)  # the timeout's wait is the longest


def test_no_answer_at_all_achieves_nothing():
    step = summarise(10, [Outcome(0.0, 2.0, 0)])
    assert (step.achieved, step.p99_ms, step.kept_up) == (0.0, None, False)


def test_saturation_is_the_highest_rate_sustained():
    steps = [Step(10, 10, 10, 10.0), Step(20, 20, 20, 19.8), Step(40, 40, 30, 31.0, {"timeout": 10})]
    assert saturation(steps) == 19.8  # the overloaded step answered more, but not without failing
    assert saturation(steps[2:]) == 31.0  # nothing kept up: what the overloaded server still answered
    assert saturation([]) == 0.0


def _server(tmp_path: Path, *args: str) -> Iterator[str]:
    port = serving.free_port()
    process = serving.start_subprocess(["trivial", str(port), *args], tmp_path / "server.log")
    try:
        url = f"http://127.0.0.1:{port}/"
        serving.wait_http(url, 30, process)
        yield url
    finally:
        serving.stop(process)


@pytest.fixture
def fast_server(tmp_path: Path) -> Iterator[str]:
    yield from _server(tmp_path)


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[str]:
    """One request at a time, 25 ms each: 40 req/s at most."""
    yield from _server(tmp_path, "25")


def test_open_loop_against_a_fast_server_keeps_up(fast_server):
    step = serving.open_loop(fast_server, [{"q": 1}], 50, 1.0, {}, PLAN)
    assert step.sent == 50 and step.ok == 50
    assert step.kept_up and step.achieved == pytest.approx(50.0, rel=0.05)


def test_saturation_of_a_server_of_known_capacity(slow_server):
    steps = serving.find_saturation(slow_server, [], {}, PLAN, rates=(10, 20, 80, 160))
    # 10 and 20 req/s are within its 40 req/s; 80 is not: the search stops there and bisects 20..80 twice
    assert [s.offered for s in steps[:3]] == [10, 20, 80]
    assert steps[0].kept_up and steps[1].kept_up and not steps[2].kept_up
    assert len(steps) == 3 + PLAN.refine
    assert steps[3].offered == pytest.approx(40.0)  # the geometric middle of 20 and 80
    assert 0.65 * 40 <= saturation(steps) <= 1.05 * 40
    # at half of it the latency is about one service time; the overloaded step queued for far longer
    half = serving.open_loop(slow_server, [], saturation(steps) / 2, 1.5, {}, PLAN)
    assert half.kept_up and half.p50_ms < 100
    assert steps[2].p99_ms > 5 * half.p50_ms


def test_closed_loop_runs_the_action_once_while_clients_keep_sending(fast_server):
    import asyncio

    fired = []
    outcomes = asyncio.run(
        serving._closed_loop(fast_server, [{"q": 1}], {}, 4, 1.0, 1.0, 0.3, lambda: fired.append(True))
    )
    assert fired == [True]
    assert len(outcomes) > 20 and all(o.ok for o in outcomes)
    assert max(o.done for o in outcomes) >= 0.9  # the clients kept going for the whole second


def test_a_first_rate_too_high_is_halved_until_one_keeps_up(slow_server):
    steps = serving.find_saturation(slow_server, [], {}, PLAN, rates=(160, 320))
    assert [s.offered for s in steps[:2]] == [160, 80]  # 160 is four times its capacity: halve
    assert not steps[0].kept_up and any(s.kept_up for s in steps)
    assert 0.5 * 40 <= saturation(steps) <= 1.05 * 40


def test_unloaded_latency_is_one_service_time(slow_server):
    alone = serving.unloaded(slow_server, [], {}, 10, 1.0)
    assert (alone.sent, alone.ok) == (10, 10)
    assert 24 <= alone.p50_ms < 100
