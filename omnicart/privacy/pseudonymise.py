"""Keyed HMAC-SHA256 tokens that replace personal data before anything reaches the lake.

The same input under the same key always gives the same token, so identities can still be joined across
channels; without the key a token cannot be reversed or recomputed from a guessed email.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

import pandas as pd

from omnicart.schemas import PII_COLUMNS, C


def normalise(column: str, value: str) -> str:
    """Canonical form before hashing, so 'Ann@X.com ' and 'ann@x.com' give one token."""
    value = value.strip()
    if column == C.email:
        return value.lower()
    if column == C.phone:
        return "".join(ch for ch in value if ch.isdigit() or ch == "+")
    return " ".join(value.lower().split())


def token(key: str, column: str, value: str) -> str:
    """The pseudonym of one value: 'tok_' + the first 32 hex digits of HMAC-SHA256(key, column:value)."""
    message = f"{column}:{normalise(column, value)}".encode()
    return "tok_" + hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:32]


def pseudonymise(df: pd.DataFrame, key: str, columns: Iterable[str] = PII_COLUMNS) -> pd.DataFrame:
    """A copy of ``df`` with every personal-data column replaced by its tokens (nulls stay null)."""
    if not key:
        raise ValueError("a pseudonymisation key is required")
    out = df.copy()
    for column in columns:
        if column not in out.columns:
            continue
        values = out[column]
        mask = values.notna()
        out[column] = values.astype(object)
        out.loc[mask, column] = [token(key, column, str(v)) for v in values[mask]]
    return out


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w])\+?\d[\d ()-]{6,}\d(?![\w])")


def scrub_text(text: str, key: str) -> str:
    """Free text with every email address and phone number replaced by its token."""
    text = _EMAIL.sub(lambda m: token(key, C.email, m.group()), text)
    return _PHONE.sub(lambda m: token(key, C.phone, m.group()), text)


def scrub_columns(df: pd.DataFrame, key: str, columns: Iterable[str]) -> pd.DataFrame:
    """A copy of ``df`` whose free-text columns have emails and phone numbers tokenised."""
    out = df.copy()
    for column in columns:
        if column in out.columns:
            out[column] = [scrub_text(v, key) if isinstance(v, str) else v for v in out[column]]
    return out
