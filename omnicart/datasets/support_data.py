"""Support question–answer pairs in the canonical form ``question, answer, intent, product_id, timestamp``.

Loaders read the ORIGINAL public files (see ../shared/datasets/*/PROVENANCE.md): the McAuley Amazon Q&A file is one
Python dict literal per line (single quotes, not JSON), the Bitext file an RFC-4180 CSV with multi-line quoted
responses. ``load_pairs`` reads any shop's canonical CSV or Parquet file. ``protocol_split`` is the PROTOCOLS.md cut.
"""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart.datasets.amazon import records, resolve
from omnicart.schemas import INPUT_TIMESTAMP, C

AMAZON_QA = "amazon_qa_appliances"
AMAZON_QA_FILE = Path("raw") / "qa_Appliances.json.gz"
BITEXT = "bitext_customer_support"
BITEXT_FILE = Path("raw") / "Bitext_Sample_Customer_Support_Training_Dataset.csv"

PAIR_COLUMNS = (C.question, C.answer, C.intent, C.product_id, INPUT_TIMESTAMP)
TEST_SHARE = 0.2

_SPACE = re.compile(r"\s+")


def clean(value: Any) -> str:
    """Plain text: HTML entities decoded, whitespace collapsed; anything not a string becomes ''."""
    if not isinstance(value, str):
        return ""
    return _SPACE.sub(" ", html.unescape(value)).strip()


# one Python dict literal per line (not JSON); ast.literal_eval evaluates literals only, never code
_LITERAL_ERRORS = (ValueError, SyntaxError, MemoryError, RecursionError)


def load_amazon_qa(path: Path, limit: int | None = None) -> pd.DataFrame:
    """Amazon product Q&A (McAuley & Yang 2016) as canonical pairs; ``path`` is the dataset folder or the file.

    Exact repeats of (asin, question, answer) are dropped (PROTOCOLS.md), keeping file order; records without a
    question or an answer are dropped. ``intent`` is empty (the file has none); ``timestamp`` is UTC from
    ``unixTime`` (missing on ~5 % of the records). ``limit`` reads only the first ``limit`` lines."""
    rows = [
        (r.get("asin"), r.get("question"), r.get("answer"), r.get("unixTime"))
        for r in records(resolve(path, AMAZON_QA_FILE), limit, ast.literal_eval, _LITERAL_ERRORS)
    ]
    raw = pd.DataFrame(rows, columns=["asin", "question", "answer", "unix"])
    raw = raw.drop_duplicates(subset=["asin", "question", "answer"], keep="first").reset_index(drop=True)
    frame = pd.DataFrame(
        {
            C.question: [clean(v) for v in raw["question"]],
            C.answer: [clean(v) for v in raw["answer"]],
            C.intent: pd.Series([None] * len(raw), dtype=object),
            C.product_id: [v if isinstance(v, str) and v else None for v in raw["asin"]],
            INPUT_TIMESTAMP: pd.to_datetime(pd.to_numeric(raw["unix"], errors="coerce"), unit="s", utc=True).to_numpy(),
        }
    )
    keep = (frame[C.question] != "") & (frame[C.answer] != "")
    return frame[keep].reset_index(drop=True)


def load_bitext(path: Path, limit: int | None = None) -> pd.DataFrame:
    """Bitext customer-service requests as canonical pairs: instruction → question, response → answer, intent.

    Bitext generates these utterances (not real customers); responses keep their ``{{placeholders}}``. There is no
    product or time. ``limit`` reads only the first ``limit`` records."""
    raw = pd.read_csv(resolve(path, BITEXT_FILE), nrows=limit, dtype=str, keep_default_na=False)
    missing = {"instruction", "response", "intent"} - set(raw.columns)
    if missing:
        raise ValueError(f"{path}: not the Bitext CSV, missing columns {sorted(missing)}")
    frame = pd.DataFrame(
        {
            C.question: [clean(v) for v in raw["instruction"]],
            # responses are multi-line step lists: keep the line breaks' meaning as spaces
            C.answer: [clean(v) for v in raw["response"]],
            C.intent: [clean(v) or None for v in raw["intent"]],
            C.product_id: pd.Series([None] * len(raw), dtype=object),
            INPUT_TIMESTAMP: pd.Series(pd.NaT, index=range(len(raw)), dtype="datetime64[ns, UTC]"),
        }
    )
    keep = (frame[C.question] != "") & (frame[C.answer] != "")
    return frame[keep].reset_index(drop=True)


def load_pairs(path: Path, limit: int | None = None) -> pd.DataFrame:
    """A shop's canonical pairs file (CSV or Parquet): ``question, answer`` and optional ``intent, product_id,
    timestamp``. A missing required column is a ValueError naming it; rows without question or answer are dropped."""
    path = Path(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        raw = pd.read_parquet(path)
        raw = raw.head(limit) if limit is not None else raw
    else:
        raw = pd.read_csv(path, nrows=limit, dtype=str, keep_default_na=False)
    missing = [c for c in (C.question, C.answer) if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; canonical pairs need question, answer")
    frame = pd.DataFrame({C.question: [clean(v) for v in raw[C.question]], C.answer: [clean(v) for v in raw[C.answer]]})
    for column in (C.intent, C.product_id):
        values = raw[column] if column in raw.columns else [None] * len(raw)
        frame[column] = [str(v).strip() if isinstance(v, str) and v.strip() else None for v in values]
    stamps = raw[INPUT_TIMESTAMP] if INPUT_TIMESTAMP in raw.columns else pd.Series([None] * len(raw))
    frame[INPUT_TIMESTAMP] = pd.to_datetime(pd.Series(list(stamps)).replace("", None), utc=True, errors="coerce")
    keep = (frame[C.question] != "") & (frame[C.answer] != "")
    return frame[keep].reset_index(drop=True)


def protocol_split(n: int) -> np.ndarray:
    """PROTOCOLS.md support split: True marks a test row (``default_rng(0).random(n) < 0.2``, in file order)."""
    return np.random.default_rng(0).random(n) < TEST_SHARE
