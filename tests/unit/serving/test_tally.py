"""The replica counters behind /health: summed over replicas, reported when they change, never lost to one failure."""

from __future__ import annotations

import time

from serving.tally import Reporter, Tally, sum_snapshots


def test_snapshots_are_summed_per_group_and_counter() -> None:
    a = {"fallbacks.recommend": {"unknown_customer": 2}, "prediction_log": {"logged": 5}}
    b = {"fallbacks.recommend": {"unknown_customer": 1, "model_error": 3}}
    assert sum_snapshots([a, b]) == {
        "fallbacks.recommend": {"unknown_customer": 3, "model_error": 3},
        "prediction_log": {"logged": 5},
    }
    assert sum_snapshots([]) == {}


def test_tally_keeps_the_latest_snapshot_of_each_replica() -> None:
    tally = Tally()
    tally.put("r1", {"prediction_log": {"logged": 1}})
    tally.put("r1", {"prediction_log": {"logged": 4}})  # a later report replaces, it does not add
    tally.put("r2", {"prediction_log": {"logged": 2}})
    assert tally.totals() == {"prediction_log": {"logged": 6}}


def test_reporter_sends_only_changes_and_retries_a_failed_send() -> None:
    counts = {"logged": 0}
    sent: list[tuple[str, dict]] = []
    failing = [True]

    def send(replica: str, snapshot: dict) -> None:
        if failing[0]:
            failing[0] = False
            raise ConnectionError("actor unreachable")
        sent.append((replica, snapshot))

    reporter = Reporter("r1", lambda: {"prediction_log": dict(counts)}, send, period=3600)
    reporter.flush()  # fails: nothing recorded as sent
    reporter.flush()
    reporter.flush()  # unchanged: not sent again
    counts["logged"] = 2
    reporter.flush()
    assert sent == [("r1", {"prediction_log": {"logged": 0}}), ("r1", {"prediction_log": {"logged": 2}})]


def test_reporter_thread_reports_a_change_within_its_period_and_the_last_on_close() -> None:
    counts = {"logged": 1}
    sent: list[dict] = []
    reporter = Reporter("r1", lambda: {"prediction_log": dict(counts)}, lambda r, s: sent.append(s), period=0.01)
    reporter.start()
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent == [{"prediction_log": {"logged": 1}}]
    reporter._stop.set()  # the thread stops; a change after it is still reported by close
    reporter._thread.join(timeout=5)
    counts["logged"] = 9
    reporter.close()
    assert sent[-1] == {"prediction_log": {"logged": 9}}


def test_a_poke_reports_at_once_not_after_the_period() -> None:
    counts = {"unknown_customer": 0}
    sent: list[dict] = []
    reporter = Reporter("r1", lambda: {"fallbacks.recommend": dict(counts)}, lambda r, s: sent.append(s), period=3600)
    reporter.start()
    counts["unknown_customer"] = 1
    reporter.poke()
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    reporter.close()
    assert sent[0] == {"fallbacks.recommend": {"unknown_customer": 1}}
