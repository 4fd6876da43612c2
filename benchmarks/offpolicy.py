"""``omnicart bench offpolicy``: the off-policy protocol of ``benchmarks.experiments`` alone (IPS, SNIPS, doubly
robust against the naive logged rate and the direct method, on the simulator's exact value of a new ranker)."""

from __future__ import annotations

import dataclasses

from benchmarks import experiments
from benchmarks.runner import BenchOptions, BenchResult
from omnicart.settings import Settings


def run(settings: Settings, options: BenchOptions) -> BenchResult:
    return experiments.run(settings, dataclasses.replace(options, protocol="offpolicy"))
