"""The support bench's output rows: the family's own figures appear as omnicart's rows, baselines by name."""

from __future__ import annotations

import math

from benchmarks.support import bench_rows


def test_the_models_figures_are_omnicarts_rows_and_baselines_keep_their_names() -> None:
    evaluation = {
        "model": {"hit@1": 0.3, "answered_accuracy": math.nan, "questions": 10.0},
        "model-dense": {"hit@1": 0.2},
        "model@50%": {"answered_share": 0.5},
        "minilm": {"hit@1": 0.25},
        "bm25+scope": {"hit@1": 0.1},
    }
    rows = bench_rows(evaluation, {"model": 120.0, "minilm": 80.5})

    assert [r["model"] for r in rows] == ["omnicart", "omnicart-dense", "omnicart@50%", "minilm", "bm25+scope"]
    assert rows[0] == {"model": "omnicart", "hit@1": 0.3, "answered_accuracy": None, "sentences_per_s": 120.0}
    assert rows[3]["sentences_per_s"] == 80.5 and "sentences_per_s" not in rows[1]
