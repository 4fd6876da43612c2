"""Support loaders: the original file formats (Python-literal lines, multi-line CSV), canonical pairs, the split."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from benchmarks.runner import datasets_dir
from omnicart.datasets import support_data
from omnicart.schemas import INPUT_TIMESTAMP, C

AMAZON_LINES = [
    # Python dict literals with single quotes, as the McAuley file has them; not JSON
    "{'questionType': 'yes/no', 'asin': 'B001', 'answerTime': 'Jun 27, 2014', 'unixTime': 1403852400, "
    "'question': 'Does it fit a 24&quot; opening?', 'answerType': 'Y', 'answer': 'Yes, it fits.'}",
    "{'questionType': 'open-ended', 'asin': 'B001', 'answerTime': 'Apr 28, 2014', "
    "'question': \"What's the model number?\", 'answer': 'BADGER-1'}",  # no unixTime
    "{'questionType': 'yes/no', 'asin': 'B001', 'answerTime': 'Jun 27, 2014', 'unixTime': 1403852400, "
    "'question': 'Does it fit a 24&quot; opening?', 'answerType': 'Y', 'answer': 'Yes, it fits.'}",  # exact repeat
    "this line is broken {",
    "{'asin': 'B002', 'question': 'Is it loud?', 'answer': ''}",  # no answer
    "{'asin': 'B002', 'question': 'Is it loud?', 'answer': 'Quiet enough'}",
]


def test_amazon_qa_parses_python_literals_drops_repeats_and_decodes_entities(tmp_path):
    path = tmp_path / "qa.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(AMAZON_LINES) + "\n")
    df = support_data.load_amazon_qa(path)
    assert list(df.columns) == list(support_data.PAIR_COLUMNS)
    assert df[C.question].tolist() == ['Does it fit a 24" opening?', "What's the model number?", "Is it loud?"]
    assert df[C.product_id].tolist() == ["B001", "B001", "B002"]
    assert df[INPUT_TIMESTAMP].iloc[0] == pd.Timestamp(1403852400, unit="s", tz="UTC")
    assert pd.isna(df[INPUT_TIMESTAMP].iloc[1])
    assert df[C.intent].isna().all()
    assert len(support_data.load_amazon_qa(path, limit=2)) == 2


def test_bitext_reads_multiline_quoted_responses(tmp_path):
    path = tmp_path / "bitext.csv"
    path.write_text(
        "flags,instruction,category,intent,response\n"
        'B,cancel order 123,ORDER,cancel_order,"Sure.\r\n\r\n1. Log in to {{Website URL}}.\r\n2. Cancel."\n'
        'B,"where is my refund, please",REFUND,track_refund,"Let me check, {{Customer Name}}."\n'
    )
    df = support_data.load_bitext(path)
    assert df[C.intent].tolist() == ["cancel_order", "track_refund"]
    assert df[C.answer].iloc[0] == "Sure. 1. Log in to {{Website URL}}. 2. Cancel."
    assert df[C.question].iloc[1] == "where is my refund, please"
    assert len(support_data.load_bitext(path, limit=1)) == 1


def test_canonical_pairs_name_a_missing_column_and_keep_optional_ones(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,reply\nhi,hello\n")
    with pytest.raises(ValueError, match="answer"):
        support_data.load_pairs(bad)
    good = tmp_path / "good.parquet"
    pd.DataFrame({"question": ["a?", " "], "answer": ["b", "c"], "product_id": ["P1", "P2"]}).to_parquet(good)
    df = support_data.load_pairs(good)
    assert df[C.question].tolist() == ["a?"] and df[C.product_id].tolist() == ["P1"]
    assert df[C.intent].isna().all()


def test_protocol_split_is_the_seeded_twenty_percent():
    mask = support_data.protocol_split(10_000)
    assert np.array_equal(mask, np.random.default_rng(0).random(10_000) < 0.2)
    assert 0.18 < mask.mean() < 0.22


@pytest.mark.skipif(
    not (datasets_dir() / support_data.AMAZON_QA).exists(), reason="../shared/datasets/amazon_qa_appliances is absent"
)
def test_real_amazon_qa_has_the_documented_counts():
    df = support_data.load_amazon_qa(datasets_dir() / support_data.AMAZON_QA)
    assert len(df) == 9008  # 9,011 pairs less 3 exact repeats (PROVENANCE.md)
    assert df[C.product_id].nunique() == 1153


@pytest.mark.skipif(
    not (datasets_dir() / support_data.BITEXT).exists(), reason="../shared/datasets/bitext_customer_support is absent"
)
def test_real_bitext_has_the_documented_counts():
    df = support_data.load_bitext(datasets_dir() / support_data.BITEXT)
    assert len(df) == 4514
    assert df[C.intent].nunique() == 27


def test_pairs_dataset_follows_the_protocol_pools_and_scrubs_pii():
    from omnicart.support.dataset import dataset_from_pairs

    pairs = pd.DataFrame(
        {
            C.question: [f"question {i}, mail me at ann{i}@example.com" for i in range(50)],
            C.answer: [f"answer {i}" for i in range(50)],
            C.intent: ["a", "b"] * 25,
        }
    )
    reqa = dataset_from_pairs(pairs, "reqa", "k")
    test_mask = support_data.protocol_split(50)
    assert len(reqa.test) == test_mask.sum() and len(reqa.train) == (~test_mask).sum()
    # reqa: the pool holds every answer, the test answers without their questions
    assert sorted(reqa.kb[C.answer]) == sorted(pairs[C.answer])
    assert reqa.extra_kb[C.question].isna().all()
    intent = dataset_from_pairs(pairs, "intent", "k")
    assert intent.extra_kb.empty and len(intent.kb) == len(intent.train)  # pool = training rows
    text = " ".join(pd.concat([reqa.train, reqa.test])[C.question])
    assert "@example.com" not in text and "tok_" in text
    with pytest.raises(ValueError, match="protocol"):
        dataset_from_pairs(pairs, "nope", "k")


def test_shop_dataset_reads_the_lake_point_in_time_with_the_catalog_scrubbed(tmp_path):
    import datetime as dt

    from omnicart import lake, schemas
    from omnicart.settings import Settings
    from training.support import build_dataset

    settings = Settings(home=tmp_path, pseudonym_key="k")
    days = [dt.date(2026, 1, d) for d in (1, 2, 3)]
    for n, day in enumerate(days):
        tickets = pd.DataFrame(
            {
                C.ticket_id: [f"T{n}a", f"T{n}b"],
                C.event_timestamp: pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=10),
                C.customer_id: ["c1", "c2"],
                C.channel: "service",
                C.question: [f"Where is order {n}? Call +44 20 7946 095{n}", "Is the kettle any good?"],
                C.answer: ["On its way.", "It boils 1.7 l in 3 minutes."],
                C.intent: ["order_status", "product_question"],
                C.item_id: [None, "I1"],
            }
        )
        lake.write_partition(settings.lake_dir, schemas.SUPPORT, day, tickets)
    items = pd.DataFrame({C.item_id: ["I1", "I2"], C.title: ["Kettle", "Toaster"], C.description: ["1.7 l", "2 slots"]})
    lake.write_partition(settings.lake_dir, schemas.ITEMS, days[0], items)
    ds = build_dataset(settings, days[2])
    assert len(ds.train) == 4 and len(ds.test) == 2  # tickets before as_of learn, tickets of as_of evaluate
    assert ds.train[C.product_id].tolist().count("I1") == 2
    assert set(ds.extra_kb[C.kb_source]) == {"catalog"} and "About the Kettle: 1.7 l" in set(ds.extra_kb[C.answer])
    assert "7946" not in " ".join(ds.train[C.question]) + " ".join(ds.test[C.question])
