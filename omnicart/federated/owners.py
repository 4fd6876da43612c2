"""The data owners' files: one Parquet file per owner (a store, a region, a partner shop), each holding only that
owner's rows in the canonical pricing frame (``series_id, product_id, store_id, period, price, units``, ...).

In a deployment each file sits at its owner's site and only that owner's client reads it; here they share one
folder (``Settings.owners_dir``) and ``write_owner_files`` cuts a pooled public table into them, standing in for
the owners' sites in the demo and the tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from omnicart.schemas import C

SUFFIX = ".parquet"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def owner_file(directory: Path, owner: str) -> Path:
    """Where ``owner``'s rows live under ``directory`` (characters a file name cannot hold become ``_``)."""
    name = _SAFE.sub("_", str(owner))
    if not name.strip("._"):
        raise ValueError(f"owner {owner!r} has no usable file name")
    return Path(directory) / f"{name}{SUFFIX}"


def list_owner_files(directory: Path) -> list[Path]:
    """Every owner's file under ``directory``, sorted by name; none when the folder does not exist."""
    directory = Path(directory)
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []


def read_owner(path: Path) -> pd.DataFrame:
    """One owner's rows; every row must name that one owner (``store_id``), so a file never mixes owners."""
    frame = pd.read_parquet(path)
    if C.store_id not in frame.columns:
        raise ValueError(f"{path}: an owner file needs a {C.store_id!r} column naming its owner")
    owners = frame[C.store_id].astype(str).unique()
    if len(owners) != 1:
        raise ValueError(f"{path}: an owner file holds one owner's rows, found {len(owners)} owners")
    return frame


def write_owner_files(
    frame: pd.DataFrame, directory: Path, owners: list[str] | None = None, owner: str = C.store_id
) -> list[Path]:
    """Write each owner's rows of ``frame`` (all owners, or those listed) as its own file; returns the files.

    Files of other owners already in ``directory`` are left as they are; an owner's file is replaced whole."""
    if owner not in frame.columns:
        raise ValueError(f"need an owner column {owner!r}; the table has {list(frame.columns)}")
    keys = frame[owner].astype(str)
    wanted = sorted(keys.unique()) if owners is None else [str(o) for o in owners]
    missing = sorted(set(wanted) - set(keys))
    if missing:
        raise ValueError(f"no rows for owner(s) {missing}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for key in wanted:
        rows = frame[keys == key].reset_index(drop=True)
        path = owner_file(directory, key)
        tmp = path.with_suffix(".tmp")
        rows.to_parquet(tmp, index=False)
        tmp.replace(path)  # a reader never sees half a file
        written.append(path)
    return written


def dominicks_owners(root: Path, directory: Path, stores: int | None = None) -> list[Path]:
    """Each Dominick's store as its own owner file (the benchmark's cleaning: price > 0.2, units > 0); ``stores``
    keeps the first N stores by number. Dominick's weeks keep the loader's calendar dates (week 1 = 1989-09-14)."""
    from omnicart.datasets import dominicks

    frame = dominicks.protocol_filter(dominicks.load(root))
    ids = sorted(frame[C.store_id].astype(str).unique(), key=int)
    if stores is not None:
        if stores < 1:
            raise ValueError(f"--stores must be at least 1, got {stores}")
        ids = ids[:stores]
    return write_owner_files(frame, directory, owners=ids)
