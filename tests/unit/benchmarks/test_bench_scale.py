"""`omnicart bench scale`: the sizing rule, the growth and quality gates, the memory sampler, and a family that
fails (raises, or outgrows its memory) recorded as a failed level instead of ending the run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import runner, scale
from omnicart import lake, schemas
from omnicart.schemas import C
from omnicart.settings import Settings


def test_levels_follow_the_ratio_rule_and_the_top_default_is_a_large_shop() -> None:
    top = scale.level(4_000_000)
    assert top.customers >= 200_000 and top.items >= 50_000
    for n in (250_000, 1_000_000, 4_000_000):
        lvl = scale.level(n)
        assert lvl.customers == n // 20 and lvl.items == n // 80 and lvl.days == scale.DAYS
    assert scale.level(50_000).events_per_customer_day == top.events_per_customer_day  # the same shop, only bigger
    assert scale.parse_levels("0.2,0.05") == [50_000, 200_000]
    assert scale.parse_levels(None) == list(scale.LEVELS)
    for bad in ("0.05", "a,b", "0.001,0.05"):
        with pytest.raises(runner.NotAvailable):
            scale.parse_levels(bad)


def test_growth_exponent_is_log_time_over_log_size() -> None:
    assert scale.growth_exponent(1e6, 100, 4e6, 400) == pytest.approx(1.0)
    assert scale.growth_exponent(1e6, 100, 4e6, 1600) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        scale.growth_exponent(1e6, 100, 1e6, 100)


def _record(seconds: float, peak_gb: float, quality: float, error: str | None = None) -> dict:
    stages = {s: {"seconds": seconds / 3, "peak_bytes": peak_gb * 1e9} for s in ("dataset", "train", "evaluate")}
    stages["ray"] = {"seconds": 50.0, "peak_bytes": 1e8}  # Ray's start-up: reported, not counted
    return {"stages": stages, "peak_bytes": peak_gb * 1e9, "metrics": {"model": quality}, "error": error}


def test_gates_pass_a_linear_family_and_fail_superlinear_time_memory_and_lost_quality() -> None:
    sizes = {1_000_000: 1_000_000, 4_000_000: 4_000_000}
    good = scale.gates_for("recommend", {1_000_000: _record(100, 2, 0.30), 4_000_000: _record(420, 6, 0.30)}, sizes)
    assert [g["pass"] for g in good] == [True, True, True]
    assert good[1]["model"] == pytest.approx(math.log(4.2) / math.log(4))
    bad = scale.gates_for("recommend", {1_000_000: _record(100, 2, 0.30), 4_000_000: _record(900, 11, 0.28)}, sizes)
    assert [g["pass"] for g in bad] == [False, False, False]
    # pricing's RMSE: lower is better, so a lower RMSE at the top passes and a 5 % higher one fails
    better = scale.gates_for("pricing", {1_000_000: _record(10, 1, 0.50), 4_000_000: _record(40, 1, 0.49)}, sizes)
    worse = scale.gates_for("pricing", {1_000_000: _record(10, 1, 0.50), 4_000_000: _record(40, 1, 0.525)}, sizes)
    assert better[2]["pass"] and not worse[2]["pass"]


def test_a_failed_level_fails_its_gates_with_the_reason_and_prints() -> None:
    sizes = {1_000_000: 1_000_000, 4_000_000: 4_000_000}
    failed = _record(0, 14.2, float("nan"), error="stopped at 14.2 GB of memory in stage train")
    gates = scale.gates_for("recommend", {1_000_000: _record(100, 2, 0.3), 4_000_000: failed}, sizes)
    assert not any(g["pass"] for g in gates)
    assert all("14.2 GB" in g["error"] for g in gates)
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    rows = [{"model": "4M recommend", "peak_gb": 14.2}]
    result = {"benchmark": "scale", "dataset": "sim", "protocol": "growth", "rows": rows, "gates": gates, "seconds": 1}
    runner.print_result(result, console)
    assert "FAIL recommend: peak memory GB at 4M: the 4M level failed: stopped at 14.2 GB" in console.export_text()


def test_the_sampler_sees_memory_of_child_processes() -> None:
    code = "import time; b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(3)"
    with scale.MemorySampler(os.getpid(), interval=0.05) as sampler:
        before = sampler.mark()
        child = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(2.0)
        during = sampler.mark()
        child.wait()
    assert during - before > 250e6  # the child's 300 MB, seen through the tree
    assert sampler.samples > 20


def _shop(tmp_path: Path) -> Settings:
    return scale.shop_settings(Settings(home=tmp_path / "home"), scale.level(4_000, days=6), tmp_path / "home", 3)


def test_the_shop_is_written_day_by_day_into_the_lake(tmp_path: Path) -> None:
    settings = _shop(tmp_path)
    rows = scale.write_shop(settings)
    events = lake.read_table(settings.lake_dir, schemas.EVENTS)
    assert len(events) == rows["purchases"] > 1_000 and set(events[C.event_type]) == {"purchase"}
    assert len(lake.partitions(settings.lake_dir, schemas.PRICES)) == 6
    assert rows["prices"] == 6 * rows["items"] and rows["items"] == 4_000 // 80
    assert len(lake.read_table(settings.lake_dir, schemas.SUPPORT)) == rows["tickets"] > 0
    assert pd.api.types.is_datetime64_any_dtype(events[C.event_timestamp])


def test_the_canonical_export_is_the_lake_s_shop_and_reads_back_as_recommend_input(tmp_path: Path) -> None:
    """``write_canonical`` writes the same purchase lines ``write_shop`` puts into the lake, in the canonical format
    that ``bench recommend --input`` reads; and ``omnicart simulate`` writes it from the command line."""
    from typer.testing import CliRunner

    from benchmarks.recommend import read_canonical
    from edge.cli import app

    settings = _shop(tmp_path)
    scale.write_shop(settings)
    lake_lines = lake.read_table(settings.lake_dir, schemas.EVENTS)
    rows = scale.write_canonical(settings, tmp_path / "files")
    interactions, catalog = read_canonical(
        tmp_path / "files" / "interactions.parquet", tmp_path / "files" / "items.parquet"
    )
    assert rows["lines"] == len(interactions) == len(lake_lines) > 1_000
    assert rows["customers"] == interactions[C.customer_id].nunique() and rows["items"] == len(catalog) == 50
    assert set(interactions[C.item_id]) <= set(catalog[C.item_id])
    key = [C.customer_id, C.item_id, C.event_timestamp, C.quantity]
    exported = interactions[key].astype(str).sort_values(key).reset_index(drop=True)
    in_lake = lake_lines[key].astype({C.event_timestamp: "datetime64[ns, UTC]"}).astype(str)
    pd.testing.assert_frame_equal(exported, in_lake.sort_values(key).reset_index(drop=True))

    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "cli"), "--purchases", "0.004"])
    assert result.exit_code == 0, result.output
    assert "purchase lines" in result.output and "2026-01-01 to 2026-02-25" in result.output
    assert len(pd.read_parquet(tmp_path / "cli" / "interactions.parquet")) > 1_000
    refused = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "tiny"), "--purchases", "0.0001"])
    assert refused.exit_code == 2 and "at least 2,000" in refused.output


def test_a_family_that_fails_or_outgrows_its_memory_is_recorded_not_raised(tmp_path: Path) -> None:
    settings = _shop(tmp_path)
    unknown = scale.run_child("no-such-family", settings, kill_gb=8.0)
    assert "unknown model family" in unknown["error"]
    killed = scale.run_child("shop", settings, kill_gb=0.02)  # any Python is larger than 20 MB
    assert killed["error"].startswith("stopped at") and "safety limit" in killed["error"]
    done = scale.run_child("shop", settings, kill_gb=8.0)
    assert done["error"] is None and done["rows"]["purchases"] > 1_000
    assert done["stages"]["simulate"]["seconds"] > 0 and done["peak_bytes"] > 50e6


def test_a_family_s_metrics_reach_the_record_file_the_parent_reads(tmp_path: Path, monkeypatch) -> None:
    """The parent only sees what the child wrote: the evaluation's figures must be in the file, not just in memory."""
    import json
    from types import SimpleNamespace

    import omnicart.raycluster
    import training.family

    fake = SimpleNamespace(
        build_dataset=lambda settings, as_of: SimpleNamespace(train=[1, 2, 3]),
        train=lambda settings, dataset: "model",
        evaluate=lambda model, dataset: {
            "model": {"rmse": 1.5},
            "series_mean": {"rmse": 2.0},
            "log_log": {"rmse": 1.8},
        },
        stages=lambda model: {"fit": 1.0},
    )
    monkeypatch.setattr(training.family, "get", lambda name: fake)
    monkeypatch.setattr(omnicart.raycluster, "ensure_ray", lambda settings: None)
    out = tmp_path / "record.json"
    with scale.MemorySampler(os.getpid()) as sampler:
        scale.run_family(_shop(tmp_path), "pricing", scale._Stages(out, sampler))
    written = json.loads(out.read_text())
    assert written["metrics"] == {"model": 1.5, "series_mean": 2.0, "log_log": 1.8}
    assert written["rows"] == 3 and set(written["stages"]) == {"ray", "dataset", "train", "evaluate"}
    assert written["train_stages"] == {"fit": 1.0}


def test_train_stages_come_from_each_family_s_own_timings() -> None:
    from types import SimpleNamespace

    from training.family import get

    recommend = SimpleNamespace(model_=SimpleNamespace(timings_={"two_tower": 71.04, "ranker": 450}))
    support = SimpleNamespace(meta_={"seconds": {"fine_tune": 68.66, "validate": 146.0}})
    assert get("recommend").stages(recommend) == {"two_tower": 71.0, "ranker": 450.0}
    assert get("support").stages(support) == {"fine_tune": 68.7, "validate": 146.0}
    assert get("pricing").stages(SimpleNamespace()) == {}
    row = scale.row_for(scale.level(250_000), "support", {"stages": {}, "train_stages": {"fine_tune": 68.7}}, 1)
    assert row["train_stages"] == "fine_tune 68.7 s"


def test_families_pick_which_ones_run_in_the_benchmark_s_order() -> None:
    assert scale.parse_families(None) == scale.FAMILIES
    assert scale.parse_families("support, recommend") == ("recommend", "support")
    for bad in ("ranker", ","):
        with pytest.raises(runner.NotAvailable, match="--families"):
            scale.parse_families(bad)
