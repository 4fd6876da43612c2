"""The support dataset: pairs to learn from, held-out questions to evaluate on, further knowledge-base entries; its
PII scrubbing, and the benchmark protocols' split of canonical (question, answer) pairs (PROTOCOLS.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from omnicart.datasets.support_data import protocol_split
from omnicart.privacy.pseudonymise import scrub_text
from omnicart.schemas import C

PROTOCOLS = ("reqa", "intent")
KB_SOURCES = ("ticket", "faq", "product_qa", "catalog")


@dataclass(frozen=True)
class SupportDataset:
    """Pairs to learn from, held-out questions to evaluate on, and further knowledge-base entries.

    ``train`` and ``test`` hold canonical pairs (question, answer, intent, product_id, kb_source). ``extra_kb`` holds
    entries indexed beside the training pairs: FAQ answers, catalog text, and for "reqa" the pool's answers without
    their questions. "reqa" scores a hit on the exact answer, "intent" on the top entry's intent."""

    name: str
    protocol: str
    train: pd.DataFrame
    test: pd.DataFrame
    extra_kb: pd.DataFrame
    as_of: dt.date | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def kb(self) -> pd.DataFrame:
        return pd.concat([self.train, self.extra_kb], ignore_index=True)

    def fingerprint(self) -> str:
        h = hashlib.sha1(self.protocol.encode())
        for frame in (self.train, self.test, self.extra_kb):
            h.update(pd.util.hash_pandas_object(frame[list(_KB_COLUMNS)].astype(str), index=False).to_numpy())
        return h.hexdigest()[:12]


_KB_COLUMNS = (C.question, C.answer, C.intent, C.product_id, C.kb_source)


def canonical(frame: pd.DataFrame, kb_source: str) -> pd.DataFrame:
    """The knowledge-base columns of ``frame``: blank texts become None; ``kb_source`` where the frame has none."""
    out = pd.DataFrame(index=range(len(frame)))
    for column in (C.question, C.answer, C.intent, C.product_id):
        values = frame[column].tolist() if column in frame.columns else [None] * len(frame)
        out[column] = [v if isinstance(v, str) and v.strip() else None for v in values]
    out[C.kb_source] = frame[C.kb_source].tolist() if C.kb_source in frame.columns else kb_source
    return out


def scrub_frame(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Questions and answers with every email address and phone number replaced by its keyed token."""
    out = frame.copy()
    for column in (C.question, C.answer):
        if column in out.columns:
            out[column] = [scrub_text(v, key) if isinstance(v, str) else v for v in out[column]]
    return out


def scrub_dataset(dataset: SupportDataset, key: str) -> SupportDataset:
    if not key:
        raise ValueError("a pseudonymisation key is required")
    return replace(
        dataset,
        train=scrub_frame(dataset.train, key),
        test=scrub_frame(dataset.test, key),
        extra_kb=scrub_frame(dataset.extra_kb, key),
    )


def dataset_from_pairs(
    pairs: pd.DataFrame,
    protocol: str,
    key: str,
    name: str = "pairs",
    kb_source: str = "product_qa",
    is_test: np.ndarray | None = None,
) -> SupportDataset:
    """The PROTOCOLS.md split of canonical pairs: test = ``default_rng(0).random(n) < 0.2`` in file order (or the
    given ``is_test``, e.g. a temporal cut).

    "reqa": the pool is every unique answer, so the test answers join the knowledge base without their questions.
    "intent": the pool is the training rows."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    frame = canonical(pairs, kb_source)
    is_test = protocol_split(len(frame)) if is_test is None else np.asarray(is_test, dtype=bool)
    train, test = frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)
    extra = test.assign(**{C.question: None}) if protocol == "reqa" else test.iloc[:0]
    return scrub_dataset(SupportDataset(name, protocol, train, test, extra.reset_index(drop=True)), key)
