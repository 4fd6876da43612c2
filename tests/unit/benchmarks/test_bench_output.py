"""How a benchmark result reads in a terminal and in a log (benchmarks.runner.print_result)."""

from rich.console import Console

from benchmarks import runner

RESULT = {
    "benchmark": "support",
    "dataset": "demo",
    "protocol": "reqa",
    "rows": [
        {"model": "omnicart", "hit@1": 0.25, "mrr@10": 0.3, "fusion": "dense_a=1 bm25_a=0.2", "steps": 64},
        {"model": "minilm", "hit@1": 0.2, "mrr@10": 0.26},
    ],
    "gates": [{"metric": "hit@1", "model": 0.25, "baseline": 0.2, "ratio": 1.25, "target": 1.25, "pass": True}],
    "seconds": 12.0,
}


def _printed(width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    runner.print_result(RESULT, console)
    return console.export_text()


def test_shared_metrics_form_a_table_and_one_model_s_fields_are_detail_lines() -> None:
    out = _printed(120)
    header = next(line for line in out.splitlines() if "model" in line and "hit@1" in line)
    assert "mrr@10" in header and "fusion" not in header  # only omnicart has a fusion: not a column
    assert "omnicart: fusion=dense_a=1 bm25_a=0.2, steps=64" in out
    assert "PASS hit@1: 0.2500 vs 0.2000 = 1.250× (target 1.25)" in out


def test_a_narrow_log_gets_one_line_per_model_instead_of_a_crushed_table() -> None:
    wide_rows = [{**row, "model": row["model"] + " with a long descriptive name" * 3} for row in RESULT["rows"]]
    console = Console(width=60, record=True, color_system=None)
    runner.print_result({**RESULT, "rows": wide_rows}, console)
    out = console.export_text()
    assert "┃" not in out  # no table
    assert any(line.strip().startswith("minilm") and "hit@1=0.2000, mrr@10=0.2600" in line for line in out.splitlines())


def test_a_gate_decided_by_its_floor_says_so() -> None:
    floor_gate = {**RESULT["gates"][0], "baseline": 0.0, "ratio": None, "floor": 0.069, "rule": "floor"}
    console = Console(width=120, record=True, color_system=None)
    runner.print_result({**RESULT, "gates": [floor_gate]}, console)
    assert "PASS hit@1: 0.2500 vs 0.0000 (baseline ≤ 0: against the absolute floor 0.0690)" in console.export_text()
