"""UCI Online Retail II (sheet "Year 2009-2010") from its original Parquet, cleaned for recommendation.

Cleaning follows PROTOCOLS.md ("recommend — temporal-full") exactly, so every model and baseline sees the same rows:
keep lines with a Customer ID; drop cancellation invoices ("C…"); keep Quantity > 0 and Price > 0; keep product stock
codes (``^\\d{5}[A-Za-z]{0,2}$`` after upper-casing, which drops POST, M, DOT, BANK CHARGES, …).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from omnicart.schemas import C

DATASET = "online_retail_ii"
RAW_FILE = Path("raw") / "online_retail.parquet"
SPLIT = pd.Timestamp("2010-10-01 00:00", tz="UTC")  # temporal-full: train before, test on or after
STOCK_CODE_PATTERN = r"^\d{5}[A-Za-z]{0,2}$"
_RAW = ("Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID")


def _file(path: Path) -> Path:
    path = Path(path)
    return path / RAW_FILE if path.is_dir() else path


def clean(raw: pd.DataFrame) -> pd.DataFrame:
    """Apply the protocol's cleaning rules to raw sheet rows and return canonical columns.

    The file's clock (UK local time) is stamped as UTC so the split date means the same wall-clock moment.
    """
    missing = [c for c in _RAW if c not in raw.columns]
    if missing:
        raise ValueError(f"not an Online Retail II sheet: missing columns {missing}")
    df = raw
    invoice = df["Invoice"].astype(str).str.strip()
    code = df["StockCode"].astype(str).str.strip().str.upper()
    keep = (
        df["Customer ID"].notna()
        & ~invoice.str.upper().str.startswith("C")
        & (pd.to_numeric(df["Quantity"], errors="coerce") > 0)
        & (pd.to_numeric(df["Price"], errors="coerce") > 0)
        & code.str.fullmatch(STOCK_CODE_PATTERN)
    )
    df = df[keep]
    out = pd.DataFrame(
        {
            C.customer_id: df["Customer ID"].astype("int64").to_numpy(),
            C.item_id: code[keep].to_numpy(),
            C.event_timestamp: pd.to_datetime(df["InvoiceDate"]).dt.tz_localize("UTC").to_numpy(),
            C.order_id: invoice[keep].to_numpy(),
            C.quantity: pd.to_numeric(df["Quantity"]).astype("int64").to_numpy(),
            C.price: pd.to_numeric(df["Price"]).astype("float64").to_numpy(),
            C.title: df["Description"].fillna("").astype(str).str.strip().to_numpy(),
        }
    )
    out[C.event_timestamp] = pd.to_datetime(out[C.event_timestamp], utc=True)
    return out.reset_index(drop=True)


def load(path: Path, limit: int | None = None) -> pd.DataFrame:
    """Cleaned purchase lines of the original Parquet (a file, or the dataset folder holding ``raw/``).

    ``limit`` reads only the first ``limit`` raw lines (before cleaning), for small tests.
    """
    raw = pd.read_parquet(_file(path), columns=list(_RAW))
    if limit is not None:
        raw = raw.head(limit)
    return clean(raw)


def items(purchases: pd.DataFrame) -> pd.DataFrame:
    """The catalog implied by the purchase lines: one row per stock code with its most common description and
    median unit price. The file has no category, brand or long description; those columns are left empty."""
    title = (
        purchases[purchases[C.title] != ""]
        .groupby([C.item_id, C.title])
        .size()
        .rename("n")
        .reset_index()
        .sort_values([C.item_id, "n", C.title], ascending=[True, False, True])
        .drop_duplicates(C.item_id)
        .set_index(C.item_id)[C.title]
    )
    price = purchases.groupby(C.item_id)[C.price].median()
    out = pd.DataFrame({C.price: price})
    out[C.title] = title.reindex(out.index).fillna("")
    out[C.description] = ""
    out[C.category] = ""
    out[C.brand] = ""
    return out.rename_axis(C.item_id).reset_index()[[C.item_id, C.title, C.description, C.category, C.brand, C.price]]
