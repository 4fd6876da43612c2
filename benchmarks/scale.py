"""`omnicart bench scale`: PROTOCOLS.md "scale — growth", every family trained end to end on ever larger shops.

Each level is one simulated shop on a fresh home, sized by its purchase events N with one ratio rule:
``N / 20`` customers, ``N / 80`` catalog items, 56 days, and events per customer-day set so that the shop makes
about N purchases (4 M: 200,000 customers and 50,000 items). The simulator's days are written one at a time into the
lake of that home (the catalog; the purchase lines, the only events a family reads without Feast; each item's daily
price and units; the service conversations), so generating a level holds one day in memory, never the shop.

Then each family, in a child process of its own, goes ``build_dataset`` → ``train`` (Ray Train) → ``evaluate`` at the
shop's last day, as ``training.run`` would (without the registry): recommend on the purchases, pricing on the
item-day sales, support on the simulator's service conversations (question, answer, intent, item), so all three
grow with the shop. A thread samples the resident memory of the child's whole process tree (the driver, the Ray
head it starts and every Ray worker) every 0.2 s; a family that outgrows ``kill_gb`` is stopped and recorded as a
failed level, like one that raises, and the run goes on.

Gates: peak memory at the top level ≤ 10 GB per family; time growth exponent between the two top levels
(Δlog seconds / Δlog purchases) ≤ 1.15 per family; the family's quality metric at the top level ≥ 0.97 × the level
below (for pricing's RMSE, lower is better: RMSE ≤ RMSE below / 0.97).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import runner
from omnicart.settings import Settings

PROTOCOL = "growth"
LEVELS: tuple[int, ...] = (250_000, 1_000_000, 4_000_000)  # purchase events
FAMILIES: tuple[str, ...] = ("recommend", "pricing", "support")
QUALITY: dict[str, tuple[str, bool, tuple[str, ...]]] = {  # family: gate metric, higher is better, baselines
    "recommend": ("ndcg_at_10", True, ("popularity", "repeat")),
    "pricing": ("rmse", False, ("series_mean", "log_log")),
    "support": ("hit@1", True, ("bm25", "minilm")),
}
DAYS = 56
PURCHASES_PER_CUSTOMER = 20
PURCHASES_PER_ITEM = 80
# Purchases per active customer-day of the simulator ≈ 0.026 (repeat buys) + 0.1267 × events per customer-day,
# measured on its funnel (17 % of event rows are purchases).
_REPEAT_BUYS, _BUYS_PER_EVENT_RATE = 0.026, 0.1267

MEMORY_LIMIT_GB = 10.0
GROWTH_TARGET = 1.15
QUALITY_TARGET = 0.97
KILL_GB = 14.0  # a family past this is stopped: it has failed the memory gate, and the machine is shared
SAMPLE_SECONDS = 0.2

_console = Console(stderr=True)


def _say(message: str) -> None:
    _console.log(message)


# --- sizing -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Level:
    """One shop size: its purchase events and the simulator settings that make about that many."""

    purchases: int
    customers: int
    items: int
    days: int
    events_per_customer_day: float

    @property
    def label(self) -> str:
        return f"{self.purchases / 1e6:g}M"


def level(purchases: int, days: int = DAYS) -> Level:
    """The shop of ``purchases`` purchase events by the ratio rule (customers N/20, items N/80, ``days`` days)."""
    if purchases < 2_000:
        raise ValueError(f"a level needs at least 2,000 purchase events, got {purchases}")
    customers = max(purchases // PURCHASES_PER_CUSTOMER, 10)
    per_day = PURCHASES_PER_CUSTOMER / days
    epcd = max((per_day - _REPEAT_BUYS) / _BUYS_PER_EVENT_RATE, 0.1)
    return Level(purchases, customers, max(purchases // PURCHASES_PER_ITEM, 10), days, round(epcd, 3))


def parse_families(text: str | None) -> tuple[str, ...]:
    """``--families recommend,support`` → those families, in the benchmark's order; None: all of them."""
    if text is None:
        return FAMILIES
    asked = {f.strip() for f in text.split(",") if f.strip()}
    unknown = sorted(asked - set(FAMILIES))
    if unknown or not asked:
        raise runner.NotAvailable(f"--families takes some of {', '.join(FAMILIES)} (got {text!r})")
    return tuple(f for f in FAMILIES if f in asked)


def parse_levels(text: str | None) -> list[int]:
    """``--levels 0.05,0.2`` (millions of purchase events) → [50000, 200000]; None: the default levels."""
    if not text:
        return list(LEVELS)
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise runner.NotAvailable(f"--levels takes millions of purchase events, e.g. 0.05,0.2 (got {text!r})") from exc
    out = sorted({int(round(v * 1e6)) for v in values})
    if len(out) < 2 or out[0] < 2_000:
        raise runner.NotAvailable(f"--levels needs two or more distinct sizes of at least 0.002 M (got {text!r})")
    return out


def shop_settings(settings: Settings, lvl: Level, home: Path, seed: int) -> Settings:
    """``settings`` with a fresh home and the simulator sized for ``lvl`` (no drift)."""
    return settings.model_copy(
        update={
            "home": home,
            "seed": seed,
            "sim_customers": lvl.customers,
            "sim_items": lvl.items,
            "sim_days": lvl.days,
            "sim_events_per_customer_day": lvl.events_per_customer_day,
            "drift_kind": "none",
            "drift_day": None,
        }
    )


# --- memory -----------------------------------------------------------------------------------------------------
def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (0 when it is gone). Shared pages (Ray's object
    store) count in every process that maps them, so this errs on the high side."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


class MemorySampler:
    """A thread that samples ``tree_rss(pid)`` every ``interval`` s, keeping the peak since the last ``mark``;
    ``on_sample(bytes)`` sees every sample (the parent uses it to stop a family that outgrows the machine)."""

    def __init__(
        self, pid: int, interval: float = SAMPLE_SECONDS, on_sample: Callable[[int], None] | None = None
    ) -> None:
        self.pid, self.interval, self.on_sample = pid, interval, on_sample
        self.peak = 0
        self.overall = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> int:
        rss = tree_rss(self.pid)
        self.peak, self.overall = max(self.peak, rss), max(self.overall, rss)
        self.samples += 1
        if self.on_sample is not None:
            self.on_sample(rss)
        return rss

    def mark(self) -> int:
        """The peak since the previous mark; the next peak starts from the present sample."""
        peak = max(self.peak, self.sample())
        self.peak = tree_rss(self.pid)
        return peak

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# --- one family (or the shop itself) in a child process -----------------------------------------------------------
class _Stages:
    """Per-stage wall time and peak memory, written to ``path`` after every stage (a killed child leaves the
    stages it finished)."""

    def __init__(self, path: Path, sampler: MemorySampler) -> None:
        self.path, self.sampler = path, sampler
        self.record: dict[str, Any] = {"stages": {}, "rows": None, "metrics": None, "error": None}
        self.write()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.sampler.mark()
        self.record["running"] = name
        self.write()
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.record["stages"][name] = {"seconds": seconds, "peak_bytes": self.sampler.mark()}
        self.record["running"] = None
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, default=float))
        os.replace(tmp, self.path)


def _child(job: str, settings_json: str, out: str) -> None:
    """The child process: run ``job`` ("shop" or a family) on the level's home, recording stage by stage."""
    settings = Settings.model_validate_json(settings_json)
    with MemorySampler(os.getpid()) as sampler:
        stages = _Stages(Path(out), sampler)
        try:
            if job == "shop":
                with stages.stage("simulate"):
                    stages.record["rows"] = write_shop(settings)
            else:
                run_family(settings, job, stages)
        except BaseException as exc:  # recorded for the parent, which reports a failed level
            stages.record["error"] = f"{type(exc).__name__}: {exc}"
            stages.record["traceback"] = traceback.format_exc(limit=8)
            stages.write()
        finally:
            from omnicart import raycluster

            raycluster.shutdown()


def _purchase_days(sim: Any) -> Iterator[tuple[Any, Any]]:
    """The simulator's days, each with its purchase lines (what both the lake and the canonical file hold)."""
    from omnicart.schemas import C

    for day in sim.days():
        yield day, day.events[day.events[C.event_type] == "purchase"].reset_index(drop=True)


def write_shop(settings: Settings) -> dict[str, int]:
    """Simulate the shop day by day into the lake: catalog, purchase lines, item-day prices, service tickets."""
    from omnicart import lake, schemas
    from omnicart.datasets.simulator import ShopSimulator

    sim = ShopSimulator(settings)
    lake.write_partition(settings.lake_dir, schemas.ITEMS, settings.sim_start, sim.catalog())
    rows = {"purchases": 0, "prices": 0, "tickets": 0, "customers": len(sim.customers()), "items": len(sim.catalog())}
    for day, buys in _purchase_days(sim):
        lake.write_partition(settings.lake_dir, schemas.EVENTS, day.day, buys)
        lake.write_partition(settings.lake_dir, schemas.PRICES, day.day, day.prices)
        lake.write_partition(settings.lake_dir, schemas.SUPPORT, day.day, day.support)
        rows["purchases"] += len(buys)
        rows["prices"] += len(day.prices)
        rows["tickets"] += len(day.support)
    return rows


def write_canonical(settings: Settings, out: Path) -> dict[str, int]:
    """Simulate the shop of ``settings`` and write it in the canonical input format (PROTOCOLS.md), for
    ``bench recommend --input``: ``interactions.parquet`` (user_id, item_id, timestamp, quantity, price, channel; its
    purchase lines, one day at a time, so memory holds one day) and ``items.parquet`` (item_id, title, description,
    category, price). The same shop as ``write_shop`` writes into the lake."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from omnicart.datasets.simulator import ShopSimulator
    from omnicart.schemas import INPUT_TIMESTAMP, INPUT_USER, C

    out.mkdir(parents=True, exist_ok=True)
    sim = ShopSimulator(settings)
    catalog = sim.catalog()[[C.item_id, C.title, C.description, C.category, C.price]]
    catalog.to_parquet(out / "items.parquet", index=False)
    rows = {"lines": 0, "customers": 0, "items": len(catalog)}
    buyers: set[str] = set()
    writer: pq.ParquetWriter | None = None
    try:
        for _, buys in _purchase_days(sim):
            frame = buys[[C.customer_id, C.item_id, C.event_timestamp, C.quantity, C.price, C.channel]].rename(
                columns={C.customer_id: INPUT_USER, C.event_timestamp: INPUT_TIMESTAMP}
            )
            frame = frame.astype({INPUT_USER: str, C.item_id: str, C.channel: str})
            frame[INPUT_TIMESTAMP] = pd.to_datetime(frame[INPUT_TIMESTAMP], utc=True)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(out / "interactions.parquet", table.schema)
            writer.write_table(table.cast(writer.schema))
            rows["lines"] += len(frame)
            buyers.update(frame[INPUT_USER])
    finally:
        if writer is not None:
            writer.close()
    rows["customers"] = len(buyers)
    return rows


def _train_rows(family: str, dataset: Any) -> int:
    """Training rows: purchase lines (recommend), item-days (pricing), tickets (support)."""
    return len(dataset.purchases) if family == "recommend" else len(dataset.train)


def run_family(settings: Settings, family: str, stages: _Stages) -> None:
    """dataset → Ray Train → evaluate for one family at the shop's last day, as ``training.run`` goes."""
    from omnicart.raycluster import ensure_ray
    from training.family import get

    fam = get(family)
    with stages.stage("ray"):  # Ray's start-up, outside the family's own time
        ensure_ray(settings)
    with stages.stage("dataset"):
        dataset = fam.build_dataset(settings, settings.sim_end)
    stages.record["rows"] = _train_rows(family, dataset)
    with stages.stage("train"):
        model = fam.train(settings, dataset)
    stages.record["train_stages"] = fam.stages(model)
    with stages.stage("evaluate"):
        evaluation = fam.evaluate(model, dataset)
    metric, _, baselines = QUALITY[family]
    stages.record["metrics"] = {
        name: float(evaluation[name][metric]) for name in ("model", *baselines) if name in evaluation
    }
    stages.write()


def run_child(job: str, settings: Settings, kill_gb: float, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``job`` in a spawned child; sample its process tree, stop it past ``kill_gb`` or ``timeout_s``; return
    its record with ``peak_bytes`` (the whole tree's peak, seen from outside) and ``error`` when it failed. Every
    process the child started is gone when this returns."""
    import psutil

    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="omnicart-scale-") as tmp:
        out = Path(tmp) / "record.json"
        child = ctx.Process(target=_child, args=(job, settings.model_dump_json(), str(out)), name=f"scale-{job}")
        child.start()
        stopped: list[str] = []
        seen: dict[int, psutil.Process] = {}  # every descendant met, to stop those a dying child leaves behind

        def guard(rss: int) -> None:
            if rss > kill_gb * 1e9 and not stopped:
                stopped.append(f"stopped at {rss / 1e9:.1f} GB of memory (over the {kill_gb:g} GB safety limit)")
                _kill(_descendants(child.pid, seen), child.pid)

        started = time.monotonic()
        with MemorySampler(child.pid, on_sample=guard) as sampler:
            while child.is_alive():
                child.join(1.0)
                _descendants(child.pid, seen)
                if timeout_s is not None and time.monotonic() - started > timeout_s and not stopped:
                    stopped.append(f"stopped after {timeout_s:.0f} s (the level's time limit)")
                    _kill(_descendants(child.pid, seen), child.pid)
        _kill([p for p in seen.values() if p.pid != child.pid and p.is_running()], child.pid)
        record = json.loads(out.read_text()) if out.is_file() else {"stages": {}, "error": None}
    record["peak_bytes"] = sampler.overall
    running = f" in stage {record['running']}" if record.get("running") else ""
    if stopped:
        record["error"] = stopped[0] + running
    elif child.exitcode != 0 and not record.get("error"):
        record["error"] = f"the process died with exit code {child.exitcode}{running}"
    elif job in QUALITY and not record.get("metrics") and not record.get("error"):
        record["error"] = f"the process ended (exit code {child.exitcode}) without its evaluation{running}"
    return record


def _descendants(pid: int, seen: dict[int, Any]) -> list[Any]:
    """The process ``pid`` and its descendants now (psutil processes), added to ``seen``; the root last."""
    import psutil

    try:
        root = psutil.Process(pid)
        found = [*root.children(recursive=True), root]
    except psutil.Error:
        return []
    for p in found:
        seen.setdefault(p.pid, p)
    return found


def _kill(processes: list[Any], child_pid: int) -> None:
    """SIGKILL ``processes``; wait for all but the child itself, which ``multiprocessing`` reaps (a wait here would
    reap it first, and ``Process.is_alive`` would then never turn false)."""
    import psutil

    for p in processes:
        try:
            p.kill()
        except psutil.Error:
            continue
    psutil.wait_procs([p for p in processes if p.pid != child_pid], timeout=10)


# --- the benchmark ------------------------------------------------------------------------------------------------
def growth_exponent(size_small: float, seconds_small: float, size_big: float, seconds_big: float) -> float:
    """Δlog seconds / Δlog size: 1 is linear, 2 quadratic."""
    if min(size_small, seconds_small, size_big, seconds_big) <= 0 or size_big == size_small:
        raise ValueError("growth needs two different positive sizes and positive times")
    return math.log(seconds_big / seconds_small) / math.log(size_big / size_small)


def family_seconds(record: dict[str, Any]) -> float:
    """The family's own time: dataset, train and evaluate (Ray's start-up is reported, not counted)."""
    return sum(record["stages"].get(s, {}).get("seconds", 0.0) for s in ("dataset", "train", "evaluate"))


def failed_gate(metric: str, reason: str) -> dict[str, Any]:
    """A gate that could not be measured (its level failed): it fails, and says why."""
    return {
        "metric": metric,
        "model": None,
        "baseline": None,
        "ratio": None,
        "target": None,
        "floor": None,
        "rule": "failed",
        "error": reason,
        "pass": False,
    }


def gates_for(family: str, results: dict[int, dict[str, Any]], sizes: dict[int, int]) -> list[dict[str, Any]]:
    """The three gates of ``family`` from its records per level (``sizes``: purchases simulated per level)."""
    levels = sorted(results)
    top, below = levels[-1], levels[-2]
    r_top, r_below = results[top], results[below]
    metric, higher, _ = QUALITY[family]
    out: list[dict[str, Any]] = []
    name = f"{family}: peak memory GB at {top / 1e6:g}M"
    if r_top.get("error"):
        out.append(failed_gate(name, f"the {top / 1e6:g}M level failed: {r_top['error']}"))
    else:
        out.append(runner.gate(name, r_top["peak_bytes"] / 1e9, MEMORY_LIMIT_GB, 1.0, higher_is_better=False))
    name = f"{family}: time growth exponent {below / 1e6:g}M→{top / 1e6:g}M"
    failed = [
        f"{lv / 1e6:g}M: {results[lv].get('error') or 'no quality figures recorded'}"
        for lv in (below, top)
        if results[lv].get("error") or not results[lv].get("metrics")
    ]
    if failed:
        out.append(failed_gate(name, "; ".join(failed)))
    else:
        exponent = growth_exponent(sizes[below], family_seconds(r_below), sizes[top], family_seconds(r_top))
        out.append(runner.gate(name, exponent, 1.0, GROWTH_TARGET, higher_is_better=False))
    name = f"{family}: {metric} at {top / 1e6:g}M vs {below / 1e6:g}M"
    if failed:
        out.append(failed_gate(name, "; ".join(failed)))
    else:
        q_top, q_below = r_top["metrics"]["model"], r_below["metrics"]["model"]
        if higher:
            out.append(runner.gate(name, q_top, q_below, QUALITY_TARGET))
        else:
            out.append(runner.gate(name, q_top, q_below, 1 / QUALITY_TARGET, higher_is_better=False))
    return out


def row_for(lvl: Level, job: str, record: dict[str, Any], purchases: int) -> dict[str, Any]:
    """One table row: the stages' seconds and peak GB, the rows, and the quality beside the baselines."""
    row: dict[str, Any] = {"model": f"{lvl.label} {job}", "purchases": purchases, "rows": record.get("rows")}
    if isinstance(row["rows"], dict):  # the shop: what was simulated
        row.update({k: v for k, v in row.pop("rows").items()})
    for stage, s in record.get("stages", {}).items():
        row[f"{stage}_s"] = round(s["seconds"], 1)
        row[f"{stage}_gb"] = round(s["peak_bytes"] / 1e9, 2)
    if job in QUALITY:
        row["seconds"] = round(family_seconds(record), 1)
        if record.get("train_stages"):
            row["train_stages"] = ", ".join(f"{k} {v:g} s" for k, v in record["train_stages"].items())
        metric, _, baselines = QUALITY[job]
        metrics = record.get("metrics") or {}
        row["metric"] = metric
        row["quality"] = metrics.get("model")
        for name in baselines:
            row[f"baseline {name}"] = metrics.get(name)
    row["peak_gb"] = round(record.get("peak_bytes", 0) / 1e9, 2)
    if record.get("error"):
        row["error"] = record["error"]
    return row


def run(settings: Settings, options: runner.BenchOptions) -> runner.BenchResult:
    if options.protocol not in (None, PROTOCOL):
        raise runner.NotAvailable(f"scale has one protocol, {PROTOCOL!r}")
    if options.dataset is not None or options.input is not None:
        raise runner.NotAvailable("scale runs on the shop simulator only (no --dataset or --input)")
    levels = [level(n) for n in parse_levels(options.levels)]
    families = parse_families(options.families)
    base = settings.home_dir / "bench-scale"
    rows: list[dict[str, Any]] = []
    results: dict[str, dict[int, dict[str, Any]]] = {f: {} for f in families}
    sizes: dict[int, int] = {}
    for lvl in levels:
        home = base / f"level-{lvl.purchases}"
        shutil.rmtree(home, ignore_errors=True)
        shop = shop_settings(settings, lvl, home, options.seed or settings.seed)
        _say(
            f"level {lvl.label}: {lvl.customers:,} customers, {lvl.items:,} items, {lvl.days} days, "
            f"{lvl.events_per_customer_day} events per customer-day — simulating"
        )
        record = run_child("shop", shop, KILL_GB)
        simulated = (record.get("rows") or {}).get("purchases", 0)
        sizes[lvl.purchases] = simulated or lvl.purchases
        rows.append(row_for(lvl, "shop", record, simulated))
        for family in families:
            if record.get("error"):
                results[family][lvl.purchases] = {"error": f"the shop could not be simulated: {record['error']}"}
                continue
            _say(f"level {lvl.label}: {family}")
            fam_record = run_child(family, shop, KILL_GB, options.time_limit)
            results[family][lvl.purchases] = fam_record
            row = row_for(lvl, family, fam_record, simulated)
            rows.append(row)
            failure = f", FAILED: {fam_record['error']}" if fam_record.get("error") else ""
            quality = row.get("quality")
            shown = f", {row['metric']} {quality:.4f}" if isinstance(quality, int | float) else ""
            _say(
                f"level {lvl.label}: {family} {family_seconds(fam_record):.0f} s, "
                f"peak {fam_record['peak_bytes'] / 1e9:.2f} GB{shown}{failure}"
            )
        shutil.rmtree(home, ignore_errors=True)
    gates = [g for family in families for g in gates_for(family, results[family], sizes)]
    label = ", ".join(lv.label for lv in levels)
    return f"shop simulator ({label} purchase events)", PROTOCOL, rows, gates
