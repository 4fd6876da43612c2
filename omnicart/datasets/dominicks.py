"""Dominick's Finer Foods beer scanner data (store × UPC × week), read from its original CSV exports.

``load`` returns the canonical demand table of the pricing family (``series_id, product_id, store_id, period,
price, units`` plus ``category``, ``description``, ``pack_oz`` and a few store demographics as numeric features), so
the model, the baselines and ``omnicart bench pricing --dataset dominicks_beer`` read it like any shop's file.
See ``PROVENANCE.md`` beside the data for its source, terms and quirks (zero-sales weeks were dropped upstream).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from omnicart.schemas import C

NAME = "dominicks_beer"
WEEK_ONE = pd.Timestamp("1989-09-14")  # Dominick's week 1 starts on this Thursday (Kilts Center documentation)
# Store-trade-area demographics kept as features (demo.csv holds 46); prefixed ``store_`` in the output.
STORE_COLUMNS: tuple[str, ...] = ("income", "age60", "educ", "ethnic", "hsizeavg")
STORE_PREFIX = "store_"

# The original files' columns.
_STORE, _UPC, _WEEK, _PRICE, _MOVE = "STORE", "UPC", "WEEK", "PRICE", "MOVE"
_DESCRIP, _OZ, _ROWNAMES = "DESCRIP", "OZ", "rownames"


def files(root: Path) -> dict[str, Path]:
    """The three derived CSV files under ``root`` (the dataset directory)."""
    derived = Path(root) / "derived"
    return {"wber": derived / "wber.csv.gz", "upc": derived / "upc.csv", "demo": derived / "demo.csv"}


def available(root: Path) -> bool:
    return all(path.is_file() for path in files(root).values())


def week_start(week: np.ndarray | pd.Series) -> pd.DatetimeIndex:
    """The calendar date on which a Dominick's week number starts."""
    return WEEK_ONE + pd.to_timedelta((np.asarray(week, dtype=np.int64) - 1) * 7, unit="D")


def series_key(product_id: str, store_id: str | None) -> str:
    """The series id of a (store, product) pair, as the loader spells it."""
    return product_id if store_id is None else f"{store_id}:{product_id}"


def load(
    root: Path,
    *,
    limit: int | None = None,
    store_columns: tuple[str, ...] = STORE_COLUMNS,
) -> pd.DataFrame:
    """Weekly sales as a canonical demand table, in file order; ``limit`` reads only the first rows of wber.

    Values are as in the files (no price or outlier filter: the benchmark protocol applies its own). ``category`` is
    the brand (first word of the UPC description), ``pack_oz`` the pack's total ounces.
    """
    paths = files(root)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dominicks_beer files missing: {', '.join(missing)}")
    sales = pd.read_csv(
        paths["wber"],
        nrows=limit,
        dtype={_STORE: np.int64, _UPC: np.int64, _WEEK: np.int64, _PRICE: np.float64, _MOVE: np.int64},
    )
    expected = {_STORE, _UPC, _WEEK, _PRICE, _MOVE}
    if not expected <= set(sales.columns):
        raise ValueError(f"{paths['wber']}: expected columns {sorted(expected)}, found {list(sales.columns)}")
    upc = pd.read_csv(paths["upc"], dtype={_ROWNAMES: np.int64}).rename(columns={_ROWNAMES: _UPC})
    demo = pd.read_csv(paths["demo"])

    store = sales[_STORE].astype(str)
    product = sales[_UPC].astype(str)
    frame = pd.DataFrame(
        {
            C.series_id: store + ":" + product,
            C.product_id: product,
            C.store_id: store,
            C.period: week_start(sales[_WEEK]),
            C.price: sales[_PRICE].to_numpy(),
            C.units: sales[_MOVE].to_numpy(),
        }
    )
    described = sales[[_UPC]].merge(upc, on=_UPC, how="left")
    descrip = described[_DESCRIP].fillna("").astype(str).str.strip()
    frame[C.category] = descrip.str.split().str[0].fillna("UNKNOWN").replace("", "UNKNOWN").to_numpy()
    frame[C.description] = descrip.to_numpy()
    frame[C.pack_oz] = described[_OZ].to_numpy(dtype=np.float64)
    if store_columns:
        wanted = [c for c in store_columns if c in demo.columns]
        stores = demo[[_STORE, *wanted]].drop_duplicates(_STORE)
        joined = sales[[_STORE]].merge(stores, on=_STORE, how="left")
        for column in wanted:
            frame[STORE_PREFIX + column] = joined[column].to_numpy(dtype=np.float64)
    return frame


def protocol_filter(frame: pd.DataFrame, min_price: float = 0.2) -> pd.DataFrame:
    """PROTOCOLS.md "out-of-time" cleaning: keep PRICE > 0.2 and MOVE > 0."""
    keep = (frame[C.price] > min_price) & (frame[C.units] > 0)
    return frame[keep].reset_index(drop=True)
