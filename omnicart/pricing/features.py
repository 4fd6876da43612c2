"""Demand-model features from the canonical demand table (``series_id, product_id, period, price, units`` ...).

Two kinds of feature, kept apart so the optimiser can ask "what if the price were p?":

- price features (``PRICE_FEATURES``), every one an increasing function of the own price with everything else fixed:
  log price, price vs the series' recent regular price, vs the product's usual price, vs the competitor. The model
  constrains each to a non-increasing effect, so a higher own price never raises predicted demand.
- context features, fixed at decision time: recent demand lags (strictly from earlier periods of the series),
  the regular price, seasonality (week of year, month, weekday for daily data, holidays), promotion,
  competitor level, product/store/category codes and any extra numeric columns of the input.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from omnicart.schemas import C, F, windowed

LAG_WINDOW = 13  # periods of demand history a row looks back at (and the serving state keeps per series)
REF_WINDOW = 8  # periods over which the regular (reference) price is the highest recent price
MAX_PREV = 52

# Price features: increasing in the own price; monotone non-increasing effect in the model.
LOG_PRICE = "log_price"
PRICE_INDEX = "price_index"  # log(price / regular price of the series over the last REF_WINDOW periods)
PRICE_VS_PRODUCT = "price_vs_product"  # log(price / the product's median training price)
COMPETITOR_GAP = "competitor_gap"  # log(price / competitor price)
PRICE_FEATURES: tuple[str, ...] = (LOG_PRICE, PRICE_INDEX, PRICE_VS_PRODUCT, COMPETITOR_GAP)

# Context features.
LOG_REF_PRICE = "log_regular_price"
PREV_PRICE_INDEX = "prev_price_index"
COMPETITOR_INDEX = "competitor_index"
LOG_PRODUCT_PRICE = "log_product_price"
LAG1 = "units_lag1"
LAG_GAP = "periods_since_last_sale"
ROLL4 = "units_mean_4"
ROLL13 = "units_mean_13"
N_PREV = "periods_of_history"
WEEK = "week_of_year"
MONTH = "month"
WEEKDAY = "day_of_week"
HOLIDAY = "holiday"
PRODUCT_CODE = "product"
STORE_CODE = "store"
CATEGORY_CODE = "category"
CATEGORICAL: tuple[str, ...] = (PRODUCT_CODE, STORE_CODE, CATEGORY_CODE)

LABELS: dict[str, str] = {
    LOG_PRICE: "own price",
    PRICE_INDEX: "price vs recent regular price",
    PRICE_VS_PRODUCT: "price vs product's usual price",
    COMPETITOR_GAP: "price vs competitor",
    LOG_REF_PRICE: "recent regular price",
    PREV_PRICE_INDEX: "last period's discount",
    COMPETITOR_INDEX: "competitor price level",
    LOG_PRODUCT_PRICE: "product price tier",
    LAG1: "last period's sales",
    LAG_GAP: "periods since last sale",
    ROLL4: "recent sales (4 periods)",
    ROLL13: "recent sales (13 periods)",
    N_PREV: "length of sales history",
    WEEK: "week of year",
    MONTH: "month",
    WEEKDAY: "day of week",
    HOLIDAY: "holiday period",
    PRODUCT_CODE: "product",
    STORE_CODE: "store",
    CATEGORY_CODE: "category",
    C.promo: "promotion / display",
}

# The platform's extra columns: each item's recent demand across every channel, read point-in-time from Feast (the
# windows up to the day before a period), offline in training and online at serving time.
DEMAND_FEATURES: tuple[str, ...] = tuple(windowed(n, w) for w in (7, 30) for n in (F.sales, F.conversion))
DEMAND_REFS: tuple[str, ...] = tuple(f"{F.item_window_view}:{name}" for name in DEMAND_FEATURES)

CANONICAL: tuple[str, ...] = (C.series_id, C.product_id, C.period, C.price, C.units)
OPTIONAL: tuple[str, ...] = (C.store_id, C.cost, C.promo, C.competitor_price, C.category, C.inventory)
_NOT_FEATURES = {*CANONICAL, *OPTIONAL, C.description, C.title, C.item_id, C.event_timestamp, C.units_sold}


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...] = CANONICAL) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"demand table lacks required column(s) {missing}; has {list(frame.columns)}")


@dataclass
class FeatureSpec:
    """What the features need to know from the training data; saved beside the model as JSON."""

    period_kind: Literal["date", "index"]
    step: float  # days per period (date) or index units per period
    target: Literal["log", "log1p"]
    products: list[str]
    stores: list[str]
    categories: list[str]
    product_log_price: dict[str, float]
    product_category: dict[str, str]
    extras: list[str]
    has_store: bool
    has_competitor: bool
    has_promo: bool
    names: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls(**json.loads(text))

    @property
    def types(self) -> list[str]:
        return ["c" if n in CATEGORICAL else "q" for n in self.names]

    @property
    def price_columns(self) -> list[int]:
        return [i for i, n in enumerate(self.names) if n in PRICE_FEATURES]


def _present(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


def _period_number(values: pd.Series, kind: str) -> np.ndarray:
    """Periods as a float axis: days since the epoch for dates, the value itself for an integer index."""
    if kind == "date":
        stamps = pd.to_datetime(values)
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        return (stamps - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy(np.float64) / 86400.0
    return pd.to_numeric(values).to_numpy(np.float64)


def period_kind(values: pd.Series) -> Literal["date", "index"]:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return "index"
    return "date"


def fit_spec(frame: pd.DataFrame) -> FeatureSpec:
    """Learn codes, usual prices, the period step and the target transform from a training table."""
    require_columns(frame)
    kind = period_kind(frame[C.period])
    axis = np.unique(_period_number(frame[C.period], kind))
    step = float(np.median(np.diff(axis))) if len(axis) > 1 else 1.0
    units = frame[C.units].to_numpy(np.float64)
    products = sorted(frame[C.product_id].astype(str).unique())
    log_price = np.log(frame[C.price].to_numpy(np.float64))
    product_log_price = (
        pd.Series(log_price, index=frame[C.product_id].astype(str).to_numpy()).groupby(level=0).median().to_dict()
    )
    has_category = _present(frame, C.category)
    product_category = (
        frame[[C.product_id, C.category]].astype(str).drop_duplicates(C.product_id, keep="last")
        if has_category
        else pd.DataFrame(columns=[C.product_id, C.category])
    )
    extras = [
        c
        for c in frame.columns
        if c not in _NOT_FEATURES and pd.api.types.is_numeric_dtype(frame[c]) and not frame[c].isna().all()
    ]
    spec = FeatureSpec(
        period_kind=kind,
        step=step if step > 0 else 1.0,
        target="log" if np.nanmin(units) > 0 else "log1p",
        products=products,
        stores=sorted(frame[C.store_id].dropna().astype(str).unique()) if _present(frame, C.store_id) else [],
        categories=sorted(frame[C.category].dropna().astype(str).unique()) if has_category else [],
        product_log_price={str(k): float(v) for k, v in product_log_price.items()},
        product_category=dict(zip(product_category[C.product_id], product_category[C.category], strict=True)),
        extras=extras,
        has_store=_present(frame, C.store_id),
        has_competitor=_present(frame, C.competitor_price),
        has_promo=_present(frame, C.promo),
    )
    spec.names = _names(spec)
    return spec


def _names(spec: FeatureSpec) -> list[str]:
    # No absolute log price: across products it would act as a product identifier and mix the price tier's effect
    # into the own-price effect; the tier enters as context (LOG_PRODUCT_PRICE).
    names = [PRICE_INDEX, PRICE_VS_PRODUCT]
    if spec.has_competitor:
        names += [COMPETITOR_GAP, COMPETITOR_INDEX]
    names += [LOG_REF_PRICE, PREV_PRICE_INDEX, LOG_PRODUCT_PRICE, LAG1, LAG_GAP, ROLL4, ROLL13, N_PREV]
    if spec.has_promo:
        names.append(C.promo)
    if spec.period_kind == "date":
        names += [WEEK, MONTH, HOLIDAY] + ([WEEKDAY] if spec.step < 7 else [])
    names.append(PRODUCT_CODE)
    if spec.has_store:
        names.append(STORE_CODE)
    if spec.categories:
        names.append(CATEGORY_CODE)
    return names + list(spec.extras)


def transform_target(units: np.ndarray, target: str) -> np.ndarray:
    units = np.asarray(units, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log1p(units) if target == "log1p" else np.log(units)
    return np.where(np.isfinite(y), y, np.nan)


def units_from_target(y: np.ndarray, target: str, smearing: float = 1.0) -> np.ndarray:
    """Expected units from predicted log units, with Duan's smearing factor for the retransformation bias."""
    level = np.exp(np.asarray(y, dtype=np.float64)) * smearing
    return np.maximum(level - 1.0, 0.0) if target == "log1p" else level


@dataclass
class Features:
    """Feature rows aligned with the input table, plus what is needed to recompute them at another price."""

    X: np.ndarray  # float32, (n, len(spec.names))
    y: np.ndarray  # target (log or log1p units); NaN where units are unknown
    log_price: np.ndarray  # log of the row's own price
    log_ref: np.ndarray  # log regular price (NaN without history)
    log_med: np.ndarray  # log usual price of the product (NaN for unknown products)
    log_comp: np.ndarray  # log competitor price (NaN when absent)
    product: np.ndarray  # product code, -1 when unknown
    spec: FeatureSpec

    def __len__(self) -> int:
        return len(self.y)

    def take(self, rows: np.ndarray | slice) -> Features:
        """These rows (a slice gives views, an index array copies)."""
        return Features(
            self.X[rows],
            self.y[rows],
            self.log_price[rows],
            self.log_ref[rows],
            self.log_med[rows],
            self.log_comp[rows],
            self.product[rows],
            self.spec,
        )

    def at_prices(self, prices: np.ndarray) -> np.ndarray:
        """The feature matrix with each row's own price replaced by ``prices`` (one price per row)."""
        log_p = np.log(np.asarray(prices, dtype=np.float64))
        X = self.X.copy()
        values = {
            LOG_PRICE: log_p,
            PRICE_INDEX: log_p - self.log_ref,
            PRICE_VS_PRODUCT: log_p - self.log_med,
            COMPETITOR_GAP: log_p - self.log_comp,
        }
        for j in self.spec.price_columns:
            X[:, j] = values[self.spec.names[j]]
        return X


def _shifted(values: np.ndarray, k: int, pos: np.ndarray) -> np.ndarray:
    """values[i - k] within the same series (rows sorted by series, then period); NaN before the series starts."""
    out = np.full(len(values), np.nan)
    if k < len(values):
        out[k:] = values[: len(values) - k]
    out[pos < k] = np.nan
    return out


@functools.lru_cache(maxsize=64)
def _federal_holidays(first_year: int, last_year: int) -> pd.DatetimeIndex:
    """The US federal holidays of whole years (pandas' calendar takes milliseconds: a request must not pay it)."""
    from pandas.tseries.holiday import USFederalHolidayCalendar

    return USFederalHolidayCalendar().holidays(pd.Timestamp(first_year, 1, 1), pd.Timestamp(last_year, 12, 31))


def _holidays(periods: pd.Series, step_days: float) -> np.ndarray:
    """1.0 when a US federal holiday falls inside the period [start, start + step)."""
    stamps = pd.to_datetime(periods)
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    stamps = stamps.dt.normalize()
    unique = pd.DatetimeIndex(stamps.unique()).sort_values()
    days = max(step_days, 1.0)
    low, high = unique.min() - pd.Timedelta(days=1), unique.max() + pd.Timedelta(days=days + 1)
    every = _federal_holidays(low.year, high.year)
    holidays = every[(every >= low) & (every <= high)]
    if len(holidays) == 0:
        return np.zeros(len(stamps))
    idx = np.searchsorted(holidays.values, unique.values)
    nxt = holidays.values[np.minimum(idx, len(holidays) - 1)]
    flag = (idx < len(holidays)) & (nxt < unique.values + np.timedelta64(int(round(days * 86400)), "s"))
    lookup = pd.Series(flag.astype(np.float64), index=unique)
    return lookup.reindex(stamps).to_numpy(np.float64)


def _codes(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    index = {v: i for i, v in enumerate(vocabulary)}
    return values.astype(str).map(index).to_numpy(dtype=np.float64, na_value=np.nan)


def build(frame: pd.DataFrame, spec: FeatureSpec) -> Features:
    """Features of every row of ``frame``; each row's lags come from the earlier rows of its series in ``frame``.

    Rows whose ``units`` are NaN (the periods to price) contribute no lags to later rows.
    """
    require_columns(frame, (C.series_id, C.product_id, C.period, C.price))
    n = len(frame)
    t_all = _period_number(frame[C.period], spec.period_kind)
    series = pd.factorize(frame[C.series_id].astype(str))[0]
    order = np.lexsort((t_all, series))
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)

    s = series[order]
    t = t_all[order]
    price = frame[C.price].to_numpy(np.float64)[order]
    units = frame[C.units].to_numpy(np.float64) if C.units in frame.columns else np.full(n, np.nan)
    y_sorted = transform_target(units[order], spec.target)
    new = np.r_[True, s[1:] != s[:-1]] if n else np.zeros(0, dtype=bool)
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0)) if n else np.zeros(0, dtype=np.int64)
    pos = np.arange(n) - start

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows are expected at series starts
        prev_y = np.vstack([_shifted(y_sorted, k, pos) for k in range(1, LAG_WINDOW + 1)]) if n else np.zeros((0, 0))
        prev_p = np.vstack([_shifted(price, k, pos) for k in range(1, REF_WINDOW + 1)]) if n else np.zeros((0, 0))
        roll4 = np.nanmean(prev_y[:4], axis=0) if n else np.zeros(0)
        roll13 = np.nanmean(prev_y, axis=0) if n else np.zeros(0)
        ref = np.nanmax(prev_p, axis=0) if n else np.zeros(0)
    lag1 = prev_y[0] if n else np.zeros(0)
    gap = (t - _shifted(t, 1, pos)) / spec.step
    log_ref = np.log(ref)
    prev_index = np.log(prev_p[0]) - log_ref if n else np.zeros(0)

    def unsort(values: np.ndarray) -> np.ndarray:
        return values[inverse]

    products = frame[C.product_id].astype(str)
    product_code = _codes(products, spec.products)
    log_med = products.map(spec.product_log_price).to_numpy(dtype=np.float64, na_value=np.nan)
    log_p = np.log(frame[C.price].to_numpy(np.float64))
    log_comp = (
        np.log(pd.to_numeric(frame[C.competitor_price], errors="coerce").to_numpy(np.float64))
        if spec.has_competitor and C.competitor_price in frame.columns
        else np.full(n, np.nan)
    )
    log_ref_u = unsort(log_ref)
    columns: dict[str, np.ndarray] = {
        LOG_PRICE: log_p,
        PRICE_INDEX: log_p - log_ref_u,
        PRICE_VS_PRODUCT: log_p - log_med,
        COMPETITOR_GAP: log_p - log_comp,
        COMPETITOR_INDEX: log_comp - np.where(np.isfinite(log_ref_u), log_ref_u, log_med),
        LOG_REF_PRICE: log_ref_u,
        PREV_PRICE_INDEX: unsort(prev_index),
        LOG_PRODUCT_PRICE: log_med,
        LAG1: unsort(lag1),
        LAG_GAP: unsort(gap),
        ROLL4: unsort(roll4),
        ROLL13: unsort(roll13),
        N_PREV: unsort(np.minimum(pos, MAX_PREV).astype(np.float64)),
        PRODUCT_CODE: product_code,
    }
    if spec.has_promo:
        columns[C.promo] = (
            pd.to_numeric(frame[C.promo], errors="coerce").to_numpy(np.float64)
            if C.promo in frame.columns
            else np.full(n, np.nan)
        )
    if spec.period_kind == "date":
        stamps = pd.to_datetime(frame[C.period])
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        columns[WEEK] = stamps.dt.isocalendar().week.to_numpy(np.float64)
        columns[MONTH] = stamps.dt.month.to_numpy(np.float64)
        columns[WEEKDAY] = stamps.dt.dayofweek.to_numpy(np.float64)
        columns[HOLIDAY] = _holidays(stamps, spec.step) if n else np.zeros(0)
    if spec.has_store:
        columns[STORE_CODE] = (
            _codes(frame[C.store_id], spec.stores) if C.store_id in frame.columns else np.full(n, np.nan)
        )
    if spec.categories:
        category = (
            frame[C.category].astype(str)
            if C.category in frame.columns
            else products.map(spec.product_category).fillna("")
        )
        columns[CATEGORY_CODE] = _codes(category, spec.categories)
    for extra in spec.extras:
        columns[extra] = (
            pd.to_numeric(frame[extra], errors="coerce").to_numpy(np.float64)
            if extra in frame.columns
            else np.full(n, np.nan)
        )
    X = np.empty((n, len(spec.names)), dtype=np.float32)
    for j, name in enumerate(spec.names):
        values = columns[name]
        X[:, j] = np.where(np.isfinite(values), values, np.nan)
    return Features(
        X=X,
        y=unsort(y_sorted),
        log_price=log_p,
        log_ref=log_ref_u,
        log_med=log_med,
        log_comp=log_comp,
        product=np.where(np.isnan(product_code), -1, product_code).astype(np.int64),
        spec=spec,
    )


def history_tail(frame: pd.DataFrame, rows: int = LAG_WINDOW) -> pd.DataFrame:
    """The last ``rows`` observed periods of every series: all the history the features of a new period need."""
    if frame.empty:
        return frame.copy()
    ordered = frame.sort_values([C.series_id, C.period], kind="stable")
    return ordered.groupby(C.series_id, sort=False).tail(rows).reset_index(drop=True)


def describe(spec: FeatureSpec) -> dict[str, Any]:
    """A short summary for logs and MLflow params."""
    return {"features": len(spec.names), "products": len(spec.products), "stores": len(spec.stores)}
