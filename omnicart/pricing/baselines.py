"""The pricing baselines of PROTOCOLS.md, run beside the model: series mean, and log-log with fixed effects.

The log-log fit also gives the demand model its per-product elasticity prior (shrunk toward the pooled slope).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from omnicart.pricing.features import transform_target
from omnicart.schemas import C


@dataclass(frozen=True)
class SeriesMean:
    """Predicts each series' mean training log units."""

    mean_: pd.Series  # series_id -> mean target
    target: str

    @classmethod
    def fit(cls, train: pd.DataFrame, target: str = "log") -> SeriesMean:
        y = transform_target(train[C.units].to_numpy(), target)
        return cls(pd.Series(y).groupby(train[C.series_id].astype(str).to_numpy()).mean(), target)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.mean_.reindex(frame[C.series_id].astype(str)).to_numpy(np.float64)


@dataclass(frozen=True)
class LogLog:
    """log units = series fixed effect + elasticity(product) × log price, by OLS on within-series demeaned data."""

    mean_y_: pd.Series  # series_id -> mean target
    mean_lp_: pd.Series  # series_id -> mean log price
    elasticity_: pd.Series  # product_id -> OLS slope (0 where the price never moved)
    stderr_: pd.Series  # product_id -> standard error of the slope
    sxx_: pd.Series  # product_id -> sum of squared demeaned log prices
    pooled_: float  # one slope over all products
    target: str

    @classmethod
    def fit(cls, train: pd.DataFrame, target: str = "log") -> LogLog:
        series = train[C.series_id].astype(str).to_numpy()
        product = train[C.product_id].astype(str).to_numpy()
        y = transform_target(train[C.units].to_numpy(), target)
        lp = np.log(train[C.price].to_numpy(np.float64))
        ok = np.isfinite(y) & np.isfinite(lp)
        frame = pd.DataFrame({"s": series[ok], "p": product[ok], "y": y[ok], "lp": lp[ok]})
        means = frame.groupby("s")[["y", "lp"]].mean()
        dy = frame["y"].to_numpy() - means["y"].reindex(frame["s"]).to_numpy()
        dp = frame["lp"].to_numpy() - means["lp"].reindex(frame["s"]).to_numpy()
        sums = pd.DataFrame({"p": frame["p"], "xy": dy * dp, "xx": dp * dp, "n": 1.0}).groupby("p").sum()
        slope = (sums["xy"] / sums["xx"].where(sums["xx"] > 1e-12)).fillna(0.0)
        resid = dy - slope.reindex(frame["p"]).to_numpy() * dp
        rss = pd.Series(resid * resid).groupby(frame["p"].to_numpy()).sum().reindex(sums.index)
        dof = (sums["n"] - 1.0).clip(lower=1.0)
        stderr = np.sqrt(rss / dof / sums["xx"].where(sums["xx"] > 1e-12)).fillna(np.inf)
        pooled = float(sums["xy"].sum() / sums["xx"].sum()) if sums["xx"].sum() > 0 else 0.0
        return cls(means["y"], means["lp"], slope, stderr, sums["xx"], pooled, target)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        series = frame[C.series_id].astype(str)
        slope = self.elasticity_.reindex(frame[C.product_id].astype(str)).fillna(self.pooled_).to_numpy()
        lp = np.log(frame[C.price].to_numpy(np.float64))
        return self.mean_y_.reindex(series).to_numpy() + slope * (lp - self.mean_lp_.reindex(series).to_numpy())

    def shrunk(self, strength: float) -> pd.Series:
        """Per-product slopes shrunk toward the pooled one: (Sxy + k·pooled) / (Sxx + k)."""
        sxy = self.elasticity_ * self.sxx_
        return (sxy + strength * self.pooled_) / (self.sxx_ + strength)


def rmse(y: np.ndarray, prediction: np.ndarray) -> float:
    """Root mean squared error over the rows where both are finite."""
    y, prediction = np.asarray(y, dtype=np.float64), np.asarray(prediction, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(prediction)
    return float(np.sqrt(np.mean((y[ok] - prediction[ok]) ** 2))) if ok.any() else float("nan")
