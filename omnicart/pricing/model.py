"""The demand model: XGBoost on log units, never increasing in the own price, with elasticities and drivers.

prediction(log units) = prior(product) × log(price / usual price)  +  trees(features)

The first term is a per-product own-price elasticity from the log-log fit (shrunk toward the pooled slope and capped
at zero), passed to XGBoost as a base margin; the trees model the rest with a monotone non-increasing constraint on
every price feature. Both parts are non-increasing in the own price, so the sum is too, for every product and context.
Elasticities are read off the model (slope of log expected units over a ±10 % price grid) with an uncertainty band;
drivers come from XGBoost TreeSHAP (``pred_contribs=True``). Saved as plain files: booster.json, model.json,
state.parquet (the last periods of every series, for lags at serving time) and elasticities.json.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart.pricing import features as fx
from omnicart.pricing.baselines import LogLog
from omnicart.schemas import C

FORMAT_VERSION = 1
_BOOSTER, _META, _STATE, _ELASTICITIES = "booster.json", "model.json", "state.parquet", "elasticities.json"
PRIOR_LABEL = "own-price elasticity (product prior)"
Z90 = 1.6449
ELASTICITY_CHUNK = 50_000  # rows whose arc elasticities are predicted at once (× the price points each)


@dataclass
class _StateIndex:
    state: pd.DataFrame
    rows: dict[str, np.ndarray]
    last: pd.DataFrame
    by_product: pd.DataFrame


class DemandModel:
    """Expected units per (product, store, period) at any candidate price; scikit-learn manners."""

    def __init__(
        self,
        n_estimators: int = 400,
        learning_rate: float = 0.1,
        max_depth: int = 8,
        min_child_weight: float = 20.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        gamma: float = 1.0,
        max_bin: int = 64,
        early_stopping_rounds: int = 30,
        validation_share: float = 0.1,
        elasticity_prior: bool = True,
        prior_strength: float = 0.1,
        prior_weight: float = 0.7,
        bias_periods: int = 7,
        bias_shrinkage: float = 3.0,
        max_train_rows: int | None = 400_000,
        device: str = "cpu",
        nthread: int = 0,
        seed: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.gamma = gamma
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_share = validation_share
        self.elasticity_prior = elasticity_prior
        self.prior_strength = prior_strength
        self.prior_weight = prior_weight
        self.bias_periods = bias_periods
        self.bias_shrinkage = bias_shrinkage
        self.max_train_rows = max_train_rows
        self.device = device
        self.nthread = nthread
        self.seed = seed

    # --- fitting ------------------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {name: getattr(self, name) for name in names}

    def _xgb_params(self) -> dict[str, Any]:
        return {
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "device": self.device,
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            # A minimum split gain keeps the monotone trees from fitting noise one-sidedly: under a non-increasing
            # constraint, noise splits can only add negative price slope, which biases elasticities downward.
            "gamma": self.gamma,
            "max_bin": self.max_bin,
            "seed": self.seed,
            "nthread": self.nthread or os.cpu_count() or 1,
            "monotone_constraints": "(" + ",".join(self._constraints()) + ")",
        }

    def _constraints(self) -> list[str]:
        """-1 (non-increasing) on every own-price feature, free elsewhere."""
        return ["-1" if name in fx.PRICE_FEATURES else "0" for name in self.spec_.names]

    def fit(self, frame: pd.DataFrame, shard: tuple[int, int] = (0, 1)) -> DemandModel:
        """Fit on a canonical demand table (history of every series; units observed on every row).

        ``shard=(rank, world)``: one of ``world`` data-parallel workers inside an XGBoost collective (Ray Train's
        XGBoostTrainer); the booster learns from the series with ``hash % world == rank`` here and the others'
        there, and comes out the same on every worker. Everything else is fitted on the whole frame."""
        import xgboost as xgb

        fx.require_columns(frame)
        frame = frame[frame[C.units].notna() & (frame[C.price] > 0)].reset_index(drop=True)
        if frame.empty:
            raise ValueError("no rows with units and a positive price to fit the demand model on")
        self.spec_ = fx.fit_spec(frame)
        loglog = LogLog.fit(frame, self.spec_.target)
        if self.elasticity_prior:
            prior = self.prior_weight * loglog.shrunk(self.prior_strength).clip(upper=0.0)
            se = loglog.stderr_.replace(np.inf, np.nan)
        else:
            prior = pd.Series(0.0, index=loglog.elasticity_.index)
            se = pd.Series(np.nan, index=loglog.elasticity_.index)
        self.prior_ = prior.reindex(self.spec_.products).fillna(0.0).to_numpy(np.float64)
        self.prior_se_ = se.reindex(self.spec_.products).to_numpy(np.float64)

        feats = fx.build(frame, self.spec_)
        rows = np.flatnonzero(np.isfinite(feats.y))
        periods = fx._period_number(frame[C.period], self.spec_.period_kind)
        if self.max_train_rows and len(rows) > self.max_train_rows:
            keep = np.random.default_rng(self.seed).choice(len(rows), self.max_train_rows, replace=False)
            rows = np.sort(rows[keep])
        distinct = np.unique(periods[rows])
        n_valid = int(len(distinct) * self.validation_share) if self.early_stopping_rounds else 0
        cut = distinct[-n_valid] if n_valid >= 1 else np.inf
        train_rows, valid_rows = rows[periods[rows] < cut], rows[periods[rows] >= cut]
        mine = _shard_mask(frame[C.series_id], shard)
        dtrain = self._dmatrix(feats.take(train_rows[mine[train_rows]]), label=True)
        evals = [(dtrain, "train")]
        if len(valid_rows):
            evals.append((self._dmatrix(feats.take(valid_rows[mine[valid_rows]]), label=True), "valid"))
        booster = xgb.train(
            self._xgb_params(),
            dtrain,
            num_boost_round=self.n_estimators,
            evals=evals,
            early_stopping_rounds=self.early_stopping_rounds if len(valid_rows) else None,
            verbose_eval=False,
        )
        best = getattr(booster, "best_iteration", None)
        self.best_iteration_ = int(best) if best is not None else self.n_estimators - 1
        self.booster_ = booster[: self.best_iteration_ + 1]
        rng = np.random.default_rng(self.seed)
        some = rows if len(rows) <= 200_000 else np.sort(rng.choice(rows, 200_000, replace=False))
        resid = feats.y[some] - self._predict(feats.take(some))
        self.smearing_ = float(np.mean(np.exp(resid)))  # Duan's smearing: E[units] from predicted log units
        valid_resid = feats.y[valid_rows] - self._predict(feats.take(valid_rows)) if len(valid_rows) else resid[:0]
        self.validation_rmse_ = float(np.sqrt(np.mean(valid_resid**2))) if len(valid_rows) else float("nan")
        # out-of-sample spread where there is a validation window (it sizes the censored-demand correction)
        self.residual_std_ = float(np.std(valid_resid if len(valid_resid) > 30 else resid))
        self.n_train_rows_ = len(rows)
        keep_cols = [c for c in (*fx.CANONICAL, *fx.OPTIONAL, *self.spec_.extras) if c in frame.columns]
        self.state_ = fx.history_tail(frame[keep_cols])
        self._series_index = self._elasticity_index = None  # lookups, rebuilt on first use
        self.elasticities_ = self.elasticities(frame, features=feats)
        return self

    # --- prediction ---------------------------------------------------------------------------------------------
    def _price_margin(self, feats: fx.Features, log_prices: np.ndarray) -> np.ndarray:
        """The prior's own-price effect: elasticity(product) × log(price / the product's usual price)."""
        known = feats.product >= 0
        prior = np.where(known, self.prior_[np.maximum(feats.product, 0)], 0.0)
        margin = prior * (log_prices - feats.log_med)
        return np.where(np.isfinite(margin), margin, 0.0)

    _margin = _price_margin

    def _dmatrix(self, feats: fx.Features, prices: np.ndarray | None = None, label: bool = False) -> Any:
        import xgboost as xgb

        X = feats.X if prices is None else feats.at_prices(prices)
        log_p = feats.log_price if prices is None else np.log(np.asarray(prices, dtype=np.float64))
        return xgb.DMatrix(
            X,
            label=feats.y if label else None,
            base_margin=self._margin(feats, log_p),
            feature_names=self.spec_.names,
            feature_types=self.spec_.types,
            enable_categorical=True,
            missing=np.nan,
            nthread=self.nthread or os.cpu_count() or 1,
        )

    def _predict(self, feats: fx.Features, prices: np.ndarray | None = None) -> np.ndarray:
        if len(feats) == 0:
            return np.zeros(0)
        return self.booster_.predict(self._dmatrix(feats, prices)).astype(np.float64)

    def features(self, frame: pd.DataFrame) -> fx.Features:
        """Feature rows of ``frame`` (lags from its own earlier rows)."""
        return fx.build(frame, self.spec_)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted log units (log1p when the training data had zero-sales periods) for every row of ``frame``."""
        return self._predict(self.features(frame))

    def predict_features(self, feats: fx.Features, prices: np.ndarray | None = None) -> np.ndarray:
        return self._predict(feats, prices)

    def expected_units(
        self, feats: fx.Features, prices: np.ndarray | None = None, offset: np.ndarray | None = None
    ) -> np.ndarray:
        """Expected units sold of each feature row at ``prices`` (one per row; default: the row's own price);
        ``offset`` shifts the predicted log units (the recent-bias correction of a pricing context)."""
        predicted = self._predict(feats, prices)
        if offset is not None:
            predicted = predicted + offset
        return fx.units_from_target(predicted, self.spec_.target, self.smearing_)

    # --- elasticities -------------------------------------------------------------------------------------------
    def row_elasticities(
        self,
        feats: fx.Features,
        rel_step: float = 0.1,
        points: int = 5,
        chunk: int = ELASTICITY_CHUNK,
        *,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Arc elasticity of each row (of ``rows`` of ``feats`` when given, in their order): OLS slope of log expected
        units on log price over price × [1 ± rel_step]. Rows go ``chunk`` at a time (each is predicted at ``points``
        prices) and only a chunk's rows are taken, so memory stays bounded however many products there are; every
        row's slope is its own, whatever the chunk."""
        total = len(feats) if rows is None else len(rows)
        out = np.zeros(total)
        log_f = np.linspace(np.log1p(-rel_step), np.log1p(rel_step), points)
        xc = log_f - log_f.mean()
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            part = feats.take(slice(start, stop) if rows is None else rows[start:stop])
            n = len(part)
            rep = part.take(np.repeat(np.arange(n), points))
            prices = np.repeat(np.exp(part.log_price), points) * np.tile(np.exp(log_f), n)
            log_u = np.log(np.maximum(self.expected_units(rep, prices).reshape(n, points), 1e-9))
            out[start : start + n] = (log_u - log_u.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
        return out

    def elasticities(
        self,
        frame: pd.DataFrame,
        *,
        features: fx.Features | None = None,
        rows: np.ndarray | None = None,
        rows_per_product: int = 40,
        n_boot: int = 200,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Per product: own-price elasticity (mean over its latest rows) with a 90 % band.

        The band combines the bootstrap spread over the product's store-periods with the prior's standard error
        (in quadrature), so it widens where contexts disagree and where the product's price rarely moved.
        """
        feats = features if features is not None else self.features(frame)
        candidates = np.arange(len(frame)) if rows is None else np.asarray(rows)
        sample = (
            pd.DataFrame(
                {
                    "row": candidates,
                    "product": frame[C.product_id].astype(str).to_numpy()[candidates],
                    "t": fx._period_number(frame[C.period], self.spec_.period_kind)[candidates],
                }
            )
            .sort_values(["product", "t"], kind="stable")
            .groupby("product", sort=False)
            .tail(rows_per_product)
        )
        slopes = self.row_elasticities(feats, rows=sample["row"].to_numpy())
        rng = np.random.default_rng(seed)
        code = {p: i for i, p in enumerate(self.spec_.products)}
        out = []
        for product, idx in sample.groupby("product", sort=True).indices.items():
            values = slopes[idx]
            boot = values[rng.integers(len(values), size=(n_boot, len(values)))].mean(axis=1)
            lo, hi = np.quantile(boot, [0.05, 0.95])
            mean = float(values.mean())
            se = self.prior_se_[code[product]] if product in code else np.nan
            extra = Z90 * se if np.isfinite(se) else 0.0
            out.append(
                {
                    C.product_id: product,
                    C.elasticity: mean,
                    "low": float(mean - np.hypot(mean - lo, extra)),
                    "high": float(mean + np.hypot(hi - mean, extra)),
                    "rows": len(values),
                }
            )
        return pd.DataFrame(out, columns=[C.product_id, C.elasticity, "low", "high", "rows"])

    def elasticity_of(self, product_id: str) -> dict[str, float] | None:
        """The stored elasticity and band of a product (computed on its latest training periods)."""
        if getattr(self, "_elasticity_index", None) is None:
            table = self.elasticities_
            self._elasticity_index = {
                str(p): {"elasticity": float(e), "low": float(lo), "high": float(hi)}
                for p, e, lo, hi in zip(
                    table[C.product_id], table[C.elasticity], table["low"], table["high"], strict=True
                )
            }
        return self._elasticity_index.get(str(product_id))

    # --- explanations -------------------------------------------------------------------------------------------
    def drivers(self, feats: fx.Features, prices: np.ndarray, top: int = 3) -> list[list[dict[str, Any]]]:
        """The ``top`` largest contributions to each row's predicted log units at ``prices`` (TreeSHAP + prior)."""
        if len(feats) == 0:
            return []
        dm = self._dmatrix(feats, prices)
        contribs = self.booster_.predict(dm, pred_contribs=True)[:, :-1]
        X = feats.at_prices(prices)
        prior = self._price_margin(feats, np.log(np.asarray(prices, dtype=np.float64)))
        out = []
        for i in range(len(feats)):
            items = [(float(prior[i]), PRIOR_LABEL, None)] if prior[i] != 0 else []
            items += [(float(contribs[i, j]), name, X[i, j]) for j, name in enumerate(self.spec_.names)]
            items.sort(key=lambda item: -abs(item[0]))
            out.append(
                [
                    {
                        "feature": fx.LABELS.get(name, name),
                        "effect": round(effect, 4),  # on log units; exp(effect) is the demand multiplier
                        "value": None if value is None or not np.isfinite(value) else round(float(value), 4),
                    }
                    for effect, name, value in items[:top]
                ]
            )
        return out

    # --- pricing context ----------------------------------------------------------------------------------------
    def known_product(self, product_id: str) -> bool:
        return str(product_id) in self.spec_.product_log_price

    def known_store(self, store_id: str | None) -> bool:
        return store_id is None or not self.spec_.has_store or str(store_id) in set(self.spec_.stores)

    def series_id(self, product_id: str, store_id: str | None) -> str:
        """The series of (product, store) in the training data, or a new id for a pair never seen."""
        if getattr(self, "_series_index", None) is None:
            state = self.state_.drop_duplicates(C.series_id, keep="last")
            stores = state[C.store_id] if self.spec_.has_store and C.store_id in state.columns else None
            self._series_index = {
                (str(p), None if stores is None else str(s)): str(sid)
                for p, s, sid in zip(
                    state[C.product_id],
                    stores if stores is not None else [None] * len(state),
                    state[C.series_id],
                    strict=True,
                )
            }
        key = (str(product_id), str(store_id) if self.spec_.has_store and store_id is not None else None)
        hit = self._series_index.get(key)
        if hit is not None:
            return hit
        return str(product_id) if store_id is None else f"{store_id}:{product_id}"

    def next_period(self) -> Any:
        """The period after the last one the model saw."""
        last = self.state_[C.period].max()
        if self.spec_.period_kind == "date":
            return pd.Timestamp(last) + pd.Timedelta(days=self.spec_.step)
        return last + self.spec_.step

    def context(self, rows: pd.DataFrame, history: pd.DataFrame | None = None) -> PricingContext:
        """Features of the periods to price (``rows``: series_id, product_id, period, price, ...; no units) with lags
        from ``history`` (default: the state the model kept from training)."""
        history = self.state_ if history is None else history
        rows = rows.copy()
        rows[C.units] = np.nan
        static = [c for c in (C.category, *self.spec_.extras) if c in history.columns]
        if history is self.state_:  # serving: the kept state's lookups, made once (a request costs its rows only)
            index = self._state_index()
            wanted = [index.rows[s] for s in dict.fromkeys(rows[C.series_id].astype(str)) if s in index.rows]
            past = history.iloc[np.sort(np.concatenate(wanted))] if wanted else history.iloc[:0]
            last, by_product = index.last, index.by_product
        else:
            past = history[history[C.series_id].isin(set(rows[C.series_id].astype(str)))]
            if static:
                last = history.drop_duplicates(C.series_id, keep="last").set_index(C.series_id)
                by_product = history.drop_duplicates(C.product_id, keep="last").set_index(C.product_id)
        if static:  # fill product/store attributes a request does not carry from the latest history
            for column in static:
                if column not in rows.columns:
                    rows[column] = np.nan
                fill = rows[C.series_id].map(last[column])
                fill = fill.where(fill.notna(), rows[C.product_id].map(by_product[column]))
                rows[column] = rows[column].where(rows[column].notna(), fill)
        combined = pd.concat([past, rows], ignore_index=True)
        feats = self.features(combined)
        context = feats.take(np.arange(len(past), len(combined)))
        if history is self.state_:  # serving: each series' bias from the kept state, computed once
            bias = rows[C.series_id].map(self._state_bias()).fillna(0.0).to_numpy(np.float64)
        else:
            bias = self._recent_bias(combined, feats, len(past))
        return PricingContext(self, context, bias)

    def _state_index(self) -> _StateIndex:
        """The kept state's rows per series and latest row per series and per product, made once per state."""
        cached = self.__dict__.get("_state_index_")
        if cached is not None and cached.state is self.state_:
            return cached
        state = self.state_
        index = _StateIndex(
            state=state,
            rows=state.groupby(state[C.series_id].astype(str), sort=False).indices,
            last=state.drop_duplicates(C.series_id, keep="last").set_index(C.series_id),
            by_product=state.drop_duplicates(C.product_id, keep="last").set_index(C.product_id),
        )
        self.__dict__["_state_index_"] = index
        return index

    def _state_bias(self) -> pd.Series:
        """``_recent_bias`` of every series of the kept state, by series id. The features of a row depend on its
        own series only, so a request's bias is its series' entry here; made at the first request after a fit or
        load (``state_`` is replaced then, which drops it)."""
        cached = self.__dict__.get("_state_bias_")
        if cached is not None and cached[0] is self.state_:
            return cached[1]
        state = self.state_
        bias = self._recent_bias(state, self.features(state), len(state), per_series=True)
        self.__dict__["_state_bias_"] = (state, bias)
        return bias

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_state_bias_", "_state_index_")}

    def _recent_bias(self, combined: pd.DataFrame, feats: fx.Features, n_past: int, per_series: bool = False) -> Any:
        """Per row to price: the shrunk mean residual (actual − predicted log units) of its series' last
        ``bias_periods`` observed periods. A level shift the training data never showed (a surge, a lost
        competitor) then carries into the forecast within a few periods; on a steady series it stays near zero."""
        n_rows = len(combined) - n_past
        if not self.bias_periods or n_past == 0:
            return pd.Series(dtype=np.float64) if per_series else np.zeros(n_rows)
        past = np.arange(n_past)
        observed = past[np.isfinite(feats.y[past])]
        residual = feats.y[observed] - self._predict(feats.take(observed))
        if C.inventory in combined.columns:
            # A sell-out only says demand ≥ stock: use the residual's expected value above what was observed,
            # E[e | e > r] = s·φ(r/s) / (1 − Φ(r/s)) (normal residuals, as in a Tobit model), so repeated
            # sell-outs raise the forecast until the price rations the stock.
            stock = pd.to_numeric(combined[C.inventory].iloc[observed], errors="coerce").to_numpy(np.float64)
            units = combined[C.units].iloc[observed].to_numpy(np.float64)
            sold_out = np.isfinite(stock) & (units >= stock - 1e-9)
            if sold_out.any():
                from scipy.stats import norm

                sd = max(self.residual_std_, 1e-6)
                z = np.clip(residual[sold_out] / sd, -8.0, 8.0)
                residual[sold_out] = np.maximum(residual[sold_out], sd * norm.pdf(z) / norm.sf(z))
        table = pd.DataFrame(
            {
                "series": combined[C.series_id].to_numpy()[observed],
                "t": fx._period_number(combined[C.period].iloc[observed], self.spec_.period_kind),
                "r": residual,
            }
        ).sort_values(["series", "t"], kind="stable")
        recent = table.groupby("series", sort=False).tail(self.bias_periods).groupby("series")["r"].agg(["sum", "size"])
        shrunk = recent["sum"] / (recent["size"] + self.bias_shrinkage)
        if per_series:  # ``n_past`` is every row: the bias of each series, by id
            return shrunk
        series = combined[C.series_id].iloc[n_past:]
        return series.map(shrunk).fillna(0.0).to_numpy(np.float64)

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """Write the model as plain files: XGBoost JSON, a JSON of the rest, the serving state as Parquet."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(directory / _BOOSTER)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "spec": json.loads(self.spec_.to_json()),
            "prior": self.prior_.tolist(),
            "prior_se": [None if not np.isfinite(v) else float(v) for v in self.prior_se_],
            "smearing": self.smearing_,
            "residual_std": self.residual_std_,
            "validation_rmse": None if not np.isfinite(self.validation_rmse_) else self.validation_rmse_,
            "best_iteration": self.best_iteration_,
            "n_train_rows": self.n_train_rows_,
        }
        (directory / _META).write_text(json.dumps(meta))
        state = self.state_.copy()
        for column in (C.series_id, C.product_id, C.store_id, C.category):
            if column in state.columns:
                state[column] = state[column].astype(str)
        state.to_parquet(directory / _STATE, index=False)
        (directory / _ELASTICITIES).write_text(self.elasticities_.to_json(orient="records"))
        return directory

    @classmethod
    def load(cls, directory: Path) -> DemandModel:
        import xgboost as xgb

        directory = Path(directory)
        meta = json.loads((directory / _META).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: unsupported pricing model format {meta.get('format_version')}")
        model = cls(**meta["params"])
        model.spec_ = fx.FeatureSpec(**meta["spec"])
        model.booster_ = xgb.Booster()
        model.booster_.load_model(directory / _BOOSTER)
        model.prior_ = np.asarray(meta["prior"], dtype=np.float64)
        model.prior_se_ = np.asarray([np.nan if v is None else v for v in meta["prior_se"]], dtype=np.float64)
        model.smearing_ = float(meta["smearing"])
        model.residual_std_ = float(meta["residual_std"])
        model.validation_rmse_ = float(meta["validation_rmse"]) if meta["validation_rmse"] is not None else np.nan
        model.best_iteration_ = int(meta["best_iteration"])
        model.n_train_rows_ = int(meta["n_train_rows"])
        model.state_ = pd.read_parquet(directory / _STATE)
        if model.spec_.period_kind == "date":
            model.state_[C.period] = pd.to_datetime(model.state_[C.period])
        model.elasticities_ = pd.DataFrame(
            json.loads((directory / _ELASTICITIES).read_text()),
            columns=[C.product_id, C.elasticity, "low", "high", "rows"],
        )
        model.elasticities_[C.product_id] = model.elasticities_[C.product_id].astype(str)
        model._series_index = model._elasticity_index = None
        model.model_dir_ = directory
        return model


@dataclass
class PricingContext:
    """The periods to price, as feature rows; asks the model about any candidate prices for them."""

    model: DemandModel
    features: fx.Features
    offset: np.ndarray  # recent-bias correction of each row's log units (constant in price)

    def __len__(self) -> int:
        return len(self.features)

    def expected_units(self, grids: list[np.ndarray]) -> list[np.ndarray]:
        """Expected units of row i at each price of ``grids[i]``, in one batched prediction."""
        sizes = [len(g) for g in grids]
        if not sum(sizes):
            return [np.zeros(0) for _ in grids]
        rows = np.repeat(np.arange(len(grids)), sizes)
        prices = np.concatenate(grids).astype(np.float64)
        units = self.model.expected_units(self.features.take(rows), prices, self.offset[rows])
        return np.split(units, np.cumsum(sizes)[:-1])

    def drivers(self, prices: np.ndarray, top: int = 3) -> list[list[dict[str, Any]]]:
        return self.model.drivers(self.features, np.asarray(prices, dtype=np.float64), top)


def _shard_mask(series: pd.Series, shard: tuple[int, int]) -> np.ndarray:
    """Rows whose series falls to worker ``rank`` of ``world`` (a stable hash, the same in every process)."""
    rank, world = shard
    if world <= 1:
        return np.ones(len(series), dtype=bool)
    codes = pd.util.hash_pandas_object(series.astype(str), index=False).to_numpy()
    return (codes % np.uint64(world)) == np.uint64(rank)
