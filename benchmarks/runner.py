"""Benchmark dispatch and the PROTOCOLS.md result format shared by every family."""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from omnicart.settings import Settings

# Each benchmark is a module ``benchmarks/<family>.py`` with ``run(settings, options) -> BenchResult``.
BenchResult = tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]  # dataset name, protocol, rows, gates


@dataclass(frozen=True)
class BenchOptions:
    """What ``omnicart bench`` was asked for; a family rejects (``NotAvailable``) what it cannot honour."""

    dataset: str | None = None  # a public dataset in ../shared/datasets
    input: Path | None = None  # a canonical input file
    items: Path | None = None  # a canonical items file (recommend)
    split: str | None = None  # the temporal cut for --input
    protocol: str | None = None  # a protocol variant (reqa / intent, out-of-time / simulator)
    seed: int = 0  # simulator and training seed
    quick: bool = False  # a short smoke run, where the family has one (serving)
    levels: str | None = None  # sizes to run, in millions (scale: purchase events), e.g. "0.05,0.2"
    time_limit: float | None = None  # seconds one family may take at one level (scale); past it, a failed level
    families: str | None = None  # the families to run, comma-separated (scale; default all)


class NotAvailable(RuntimeError):
    """The benchmark (or its dataset) is not available here."""


def gate(
    metric: str,
    model: float,
    baseline: float,
    target: float,
    higher_is_better: bool = True,
    floor: float | None = None,
) -> dict[str, Any]:
    """One gate row; ``pass`` is computed from the numbers, never written by hand.

    The model must reach ``target`` × the baseline (``"rule": "ratio"``). A ratio to a baseline of zero or less means
    nothing (x / 0 would pass any model), so then the model must reach the absolute ``floor`` instead (a ceiling when
    lower is better; ``"rule": "floor"``, ``ratio`` None); a gate without a floor fails on such a baseline."""
    if baseline > 0:
        rule, ratio = "ratio", model / baseline
        ok = ratio >= target if higher_is_better else ratio <= target
    else:
        rule, ratio = "floor", None
        ok = floor is not None and (model >= floor if higher_is_better else model <= floor)
    return {
        "metric": metric,
        "model": model,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "floor": floor,
        "rule": rule,
        "pass": bool(ok),
    }


def run(settings: Settings, family: str, options: BenchOptions) -> dict[str, Any]:
    try:
        module = importlib.import_module(f"benchmarks.{family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"benchmarks.{family}":
            raise
        raise NotAvailable(f"`omnicart bench {family}` is not implemented yet (its issue is still open).") from exc
    started = time.perf_counter()
    dataset, protocol, rows, gates = module.run(settings, options)
    return {
        "benchmark": family,
        "dataset": dataset,
        "protocol": protocol,
        "rows": rows,
        "gates": gates,
        "seconds": round(time.perf_counter() - started, 3),
    }


def print_result(result: dict[str, Any], console: Console) -> None:
    """The metrics several models share as a table; a field only one model has (its stage timings, chosen encoder,
    fusion weights...) as a detail line under it, so the table stays readable in an 80-column log."""
    rows = result["rows"]
    counts: dict[str, int] = {}
    for row in rows:
        for k, v in row.items():
            if k != "model" and v is not None:
                counts[k] = counts.get(k, 0) + 1
    shared = sorted(k for k, n in counts.items() if n > 1 or len(rows) == 1)
    title = f"{result['benchmark']} — {result['dataset']} ({result['protocol']})"
    cells = [[str(row["model"]), *(_fmt(row.get(c)) for c in shared)] for row in rows]
    widths = [max(len(h), *(len(r[n]) for r in cells)) for n, h in enumerate(["model", *shared])]
    if sum(widths) + 3 * len(widths) + 1 <= console.width:
        table = Table(title=title)
        table.add_column("model")
        for column in shared:
            table.add_column(column, justify="right")
        for cell in cells:
            table.add_row(*cell)
        console.print(table)
    else:  # too wide to read as a table here (a log, a narrow terminal): one line per model
        console.print(title, markup=False)
        for cell in cells:
            console.print(
                f"  {cell[0]}: " + ", ".join(f"{c}={v}" for c, v in zip(shared, cell[1:], strict=True) if v),
                soft_wrap=True,
                markup=False,
            )
    for row in rows:
        details = [f"{k}={_fmt(v)}" for k, v in row.items() if k not in shared and k != "model" and v is not None]
        if details:
            console.print(f"  {row['model']}: " + ", ".join(details), soft_wrap=True, markup=False)
    for g in result["gates"]:
        mark = "[green]PASS[/]" if g["pass"] else "[red]FAIL[/]"
        if g.get("rule") == "failed":  # not measurable: its run failed
            console.print(f"{mark} {escape(g['metric'])}: {escape(g['error'])}", soft_wrap=True)
            continue
        if g.get("rule", "ratio") == "ratio":
            verdict = f"= {g['ratio']:.3f}× (target {g['target']})"
        else:  # a baseline of zero or less: the absolute floor decided
            floor = "none, so it fails" if g.get("floor") is None else _fmt(g["floor"])
            verdict = f"(baseline ≤ 0: against the absolute floor {floor})"
        console.print(f"{mark} {g['metric']}: {_fmt(g['model'])} vs {_fmt(g['baseline'])} {verdict}", soft_wrap=True)
    console.print(f"{result['seconds']:.1f} s")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return "" if value is None else str(value)


class PeakMemory:
    """Peak resident memory of this process and every process below it (an in-process Ray cluster's raylet and
    workers included), summed over the tree and sampled every ``interval`` seconds in a thread.

    ``with PeakMemory() as mem: ...``; ``mem.take()`` returns the peak (GiB) since the start or the last ``take``, so
    one sampler measures stage after stage. RSS counts shared pages (Ray's object store) in every process that maps
    them: the sum is an upper bound of what the tree holds."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._peak = 0
        self._overall = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @staticmethod
    def tree_rss() -> int:
        """Bytes resident in this process and all its descendants now."""
        import psutil

        root = psutil.Process()
        total = 0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # it ended between the listing and the read
                total += process.memory_info().rss
        return total

    def _sample(self) -> None:
        now = self.tree_rss()
        with self._lock:
            self._peak = max(self._peak, now)
            self._overall = max(self._overall, now)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def take(self) -> float:
        """The peak in GiB since the start or the previous ``take``; the next period starts at the current level."""
        self._sample()
        with self._lock:
            peak, self._peak = self._peak, 0
        return round(peak / 2**30, 3)

    @property
    def peak_gb(self) -> float:
        """The peak in GiB over the whole measurement."""
        with self._lock:
            return round(self._overall / 2**30, 3)


def datasets_dir() -> Path:
    """../shared/datasets relative to the project root."""
    return Path(__file__).resolve().parents[2] / "shared" / "datasets"
