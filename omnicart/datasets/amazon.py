"""Amazon Review Data (2018), Gift Cards: 5-core reviews as implicit purchases, and the product catalog.

Both files are one JSON object per line, as the McAuley lab distributes them. The catalog's display fields are
scraped HTML: prices such as ``"$25.00"``, ``"$10.00 - $50.00"``, ``""`` or page fragments, and category lists
whose tail is feature text; both are parsed defensively (junk becomes NaN / is dropped, never an exception).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from omnicart.schemas import C

DATASET = "amazon_gift_cards"
REVIEWS_FILE = Path("raw") / "Gift_Cards_5.json.gz"
CATALOG_FILE = Path("raw") / "meta_Gift_Cards.json"

_NUMBER = r"\$?\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
_PRICE = re.compile(rf"^{_NUMBER}(?:\s*-\s*{_NUMBER})?$")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def parse_price(text: Any) -> float:
    """A display price as a float: ``"$1,250.00"`` → 1250.0, a range → its midpoint, anything else → NaN."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
        return value if math.isfinite(value) and value >= 0 else math.nan
    if not isinstance(text, str):
        return math.nan
    match = _PRICE.match(text.strip())
    if not match:
        return math.nan
    low = float(match.group(1).replace(",", "") + (match.group(2) or ""))
    if match.group(3) is None:
        return low
    high = float(match.group(3).replace(",", "") + (match.group(4) or ""))
    return (low + high) / 2


def clean_text(value: Any) -> str:
    """Plain text from a string or list of strings: HTML tags removed, whitespace collapsed."""
    if isinstance(value, list):
        value = " ".join(v for v in value if isinstance(v, str))
    if not isinstance(value, str):
        return ""
    return _SPACE.sub(" ", _TAG.sub(" ", value)).strip()


def parse_category(levels: Any) -> str:
    """The most specific clean level among the first three of the category path (later entries are feature text)."""
    if not isinstance(levels, list):
        return ""
    clean = [
        c.strip()
        for c in levels[:3]
        if isinstance(c, str) and c.strip() and "<" not in c and ">" not in c and len(c) <= 50 and "." not in c
    ]
    return clean[-1] if clean else ""


def records(
    path: Path,
    limit: int | None = None,
    parse: Callable[[str], Any] = json.loads,
    errors: tuple[type[Exception], ...] = (json.JSONDecodeError,),
) -> Iterator[dict[str, Any]]:
    """The dict records of a file with one record per line (gzip when it ends in .gz): ``parse`` reads a line; a
    line it rejects with one of ``errors`` (a truncated one) is skipped, not fatal. At most ``limit`` lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f):
            if limit is not None and n >= limit:
                return
            line = line.strip()
            if not line:
                continue
            try:
                record = parse(line)
            except errors:
                continue
            if isinstance(record, dict):
                yield record


def resolve(path: Path, default: Path) -> Path:
    """``path`` itself, or ``default`` inside it when ``path`` is the dataset folder."""
    path = Path(path)
    return path / default if path.is_dir() else path


def load_reviews(path: Path, limit: int | None = None) -> pd.DataFrame:
    """Reviews as interactions: customer_id (reviewerID), item_id (asin), event_timestamp (UTC day), rating.

    Records without a reviewer, an asin or a time are dropped, as are exact duplicate records; a reviewer who
    reviewed the same item twice at different times keeps both rows (two interactions)."""
    rows = [
        (r.get("reviewerID"), r.get("asin"), r.get("unixReviewTime"), r.get("overall"))
        for r in records(resolve(path, REVIEWS_FILE), limit)
    ]
    df = pd.DataFrame(rows, columns=[C.customer_id, C.item_id, C.event_timestamp, C.rating])
    df[C.event_timestamp] = pd.to_numeric(df[C.event_timestamp], errors="coerce")
    df = df.dropna(subset=[C.customer_id, C.item_id, C.event_timestamp]).drop_duplicates()
    df[C.event_timestamp] = pd.to_datetime(df[C.event_timestamp].astype("int64"), unit="s", utc=True)
    df[C.rating] = pd.to_numeric(df[C.rating], errors="coerce")
    df[C.customer_id] = df[C.customer_id].astype(str)
    df[C.item_id] = df[C.item_id].astype(str)
    return df.sort_values(C.event_timestamp, kind="stable").reset_index(drop=True)


def load_catalog(path: Path, limit: int | None = None) -> pd.DataFrame:
    """The catalog: item_id, title, description, category, brand, price (float or NaN), image_url ("" if none).

    The first record of a repeated asin wins."""
    rows = []
    for r in records(resolve(path, CATALOG_FILE), limit):
        asin = r.get("asin")
        if not isinstance(asin, str) or not asin:
            continue
        images = [u for u in (r.get("imageURLHighRes") or r.get("imageURL") or []) if isinstance(u, str)]
        rows.append(
            {
                C.item_id: asin,
                C.title: clean_text(r.get("title")),
                C.description: clean_text(r.get("description")),
                C.category: parse_category(r.get("category")),
                C.brand: clean_text(r.get("brand")),
                C.price: parse_price(r.get("price")),
                C.image_url: images[0] if images else "",
            }
        )
    columns = [C.item_id, C.title, C.description, C.category, C.brand, C.price, C.image_url]
    return pd.DataFrame(rows, columns=columns).drop_duplicates(C.item_id).reset_index(drop=True)
