"""The benchmarks' peak memory of the whole process tree (benchmarks.runner.PeakMemory)."""

from __future__ import annotations

import subprocess
import sys

from benchmarks import runner

CHILD = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(range(0, len(b), 4096)); time.sleep(1.5)"


def test_a_child_process_memory_counts_in_the_peak_and_take_starts_a_new_period():
    with runner.PeakMemory(interval=0.05) as memory:
        before = memory.take()
        subprocess.run([sys.executable, "-c", CHILD], check=True)  # 300 MiB touched in a child
        during = memory.take()
        after = memory.take()  # the child is gone: the next period sees only this process
    assert during - before > 0.25, (before, during)
    assert after < during - 0.25, (during, after)
    assert memory.peak_gb >= during
