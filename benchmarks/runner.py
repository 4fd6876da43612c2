"""Benchmark dispatch and the PROTOCOLS.md result format shared by every family."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from omnicart.settings import Settings

# Each benchmark is a module ``benchmarks/<family>.py`` with
#   run(settings, *, dataset, input, items, split, protocol, seed) -> (dataset_name, protocol, rows, gates)


class NotAvailable(RuntimeError):
    """The benchmark (or its dataset) is not available here."""


def gate(metric: str, model: float, baseline: float, target: float, higher_is_better: bool = True) -> dict[str, Any]:
    """One gate row; ``pass`` is computed from the numbers, never written by hand."""
    ratio = model / baseline if baseline else float("inf")
    ok = ratio >= target if higher_is_better else ratio <= target
    return {"metric": metric, "model": model, "baseline": baseline, "ratio": ratio, "target": target, "pass": bool(ok)}


def run(settings: Settings, family: str, **options: Any) -> dict[str, Any]:
    try:
        module = importlib.import_module(f"benchmarks.{family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"benchmarks.{family}":
            raise
        raise NotAvailable(f"`omnicart bench {family}` is not implemented yet (its issue is still open).") from exc
    started = time.perf_counter()
    dataset, protocol, rows, gates = module.run(settings, **options)
    return {
        "benchmark": family,
        "dataset": dataset,
        "protocol": protocol,
        "rows": rows,
        "gates": gates,
        "seconds": round(time.perf_counter() - started, 3),
    }


def print_result(result: dict[str, Any], console: Console) -> None:
    columns = sorted({k for row in result["rows"] for k in row} - {"model"})
    table = Table(title=f"{result['benchmark']} — {result['dataset']} ({result['protocol']})")
    table.add_column("model")
    for column in columns:
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(str(row["model"]), *(_fmt(row.get(c)) for c in columns))
    console.print(table)
    for g in result["gates"]:
        mark = "[green]PASS[/]" if g["pass"] else "[red]FAIL[/]"
        console.print(
            f"{mark} {g['metric']}: {g['model']:.4f} vs {g['baseline']:.4f} = {g['ratio']:.3f}× (target {g['target']})"
        )
    console.print(f"{result['seconds']:.1f} s")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def datasets_dir() -> Path:
    """../shared/datasets relative to the project root."""
    return Path(__file__).resolve().parents[2] / "shared" / "datasets"
