import numpy as np

from benchmarks.feast_online import latencies_ms, summary


def test_latencies_count_the_timed_reads_and_the_share_that_found_the_entity():
    calls = []

    def read(n: int) -> bool:
        calls.append(n)
        return n % 4 != 0

    ms, found = latencies_ms(read, reads=40, warmup=5)
    assert len(calls) == 45 and len(ms) == 40 and (ms >= 0).all()
    assert found == 30 / 40  # warm-up reads are not counted


def test_summary_reports_percentiles_of_the_timings():
    ms = np.arange(1, 101, dtype=float)
    row = summary("redis", "customer", (ms, 1.0))
    assert row["model"] == "redis/customer"
    assert row["p50_ms"] == 50.5 and round(row["p99_ms"], 2) == 99.01 and row["reads"] == 100 and row["found"] == 1.0
