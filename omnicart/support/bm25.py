"""Lexical retrieval: the tokenizer shared by index and query, and Okapi BM25 over a list of texts (``bm25s``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BM25_K1 = 1.5
BM25_B = 0.75
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STEMMER: Any = None
_STOP: frozenset[str] = frozenset()


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word tokens without English stop words, Snowball-stemmed (the same for index and query)."""
    global _STEMMER, _STOP
    if _STEMMER is None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        _STEMMER, _STOP = Stemmer.Stemmer("english"), frozenset(STOPWORDS_EN)
    return [_STEMMER.stemWords([w for w in _TOKEN.findall((t or "").lower()) if w not in _STOP]) for t in texts]


class BM25Index:
    """Okapi BM25 (Lucene variant, k1 = 1.5, b = 0.75) over a list of texts, by the maintained ``bm25s`` library."""

    def __init__(self, k1: float = BM25_K1, b: float = BM25_B) -> None:
        self.k1 = k1
        self.b = b

    def fit(self, texts: Sequence[str]) -> BM25Index:
        import bm25s

        self.retriever_ = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        self.n_ = len(texts)
        if self.n_:
            self.retriever_.index(tokenize(texts), show_progress=False)
        return self

    def scores(self, query_tokens: Sequence[list[str]]) -> np.ndarray:
        """(queries × texts) BM25 scores; a query with no known token scores 0 everywhere."""
        out = np.zeros((len(query_tokens), self.n_), dtype=np.float32)
        if not self.n_:
            return out
        vocab = self.retriever_.vocab_dict
        for i, tokens in enumerate(query_tokens):
            known = [t for t in tokens if t in vocab and t != ""]
            if known:
                out[i] = self.retriever_.get_scores(known)
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "bm25.json").write_text(json.dumps({"k1": self.k1, "b": self.b, "n": self.n_}))
        if self.n_:
            self.retriever_.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path) -> BM25Index:
        import bm25s

        meta = json.loads((directory / "bm25.json").read_text())
        index = cls(meta["k1"], meta["b"])
        index.n_ = meta["n"]
        index.retriever_ = bm25s.BM25.load(str(directory), show_progress=False) if index.n_ else None
        return index
