"""What an experiment measured: the prediction log joined with the shop's outcomes, one value per unit and arm.

- recommend (unit: customer): per day a customer was shown recommendations, the recommended items they bought that
  day or the next; the unit's value is the mean over its exposed days. Pre-period: purchases per day over the
  ``pre_days`` before the start (CUPED).
- pricing (unit: product): profit per item-day, Σ units × (price − cost) on the days the product was priced, over
  those days. Pre-period: the product's profit per day before the start.
- support (unit: customer): the share of answers that were neither escalated nor rated unhelpful.

A unit counts only the exposures under the variant it has now (a canary widening moves units from the champion to
the challenger; their champion days are left out, so neither arm mixes variants). The same rows give the sample-ratio
check (units exposed since the stage began), error/fallback rates and p95 latency per variant.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from omnicart import lake, schemas
from omnicart.experiments.config import CHALLENGER, CHAMPION, Experiment
from omnicart.experiments.decision import Observation
from omnicart.schemas import C

PRE_DAYS = 14
UNIT = {"recommend": C.customer_id, "pricing": C.item_id, "support": C.customer_id}


def _day(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame[C.event_timestamp], utc=True).dt.date


def exposures(lake_dir, experiment: Experiment, day: dt.date) -> pd.DataFrame:
    """The logged predictions of the experiment (started .. ``day``), with a variant and a unit, each unit's rows
    only under its latest variant."""
    family = experiment.config.family
    rows = lake.read_table(lake_dir, schemas.predictions_table(family), experiment.state.started, day)
    if rows.empty or C.variant not in rows.columns:
        return pd.DataFrame(columns=[UNIT[family], C.variant, "day"])
    unit = UNIT[family]
    rows = rows[rows[C.variant].notna() & rows[unit].notna()].copy()
    rows["day"] = _day(rows)
    rows = rows.sort_values(C.served_at if C.served_at in rows.columns else "day")
    latest = rows.groupby(unit)[C.variant].transform("last")
    return rows[rows[C.variant] == latest]


def _purchases(lake_dir, start: dt.date, end: dt.date) -> pd.DataFrame:
    events = lake.read_table(lake_dir, schemas.EVENTS, start, end)
    if events.empty:
        return pd.DataFrame(columns=[C.customer_id, C.item_id, C.quantity, C.price, "day"])
    events = events[events[C.event_type] == "purchase"].copy()
    events["day"] = _day(events)
    return events


def unit_values(lake_dir, experiment: Experiment, day: dt.date, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per unit: variant, value, and ``pre`` (the pre-period value, where the family has one)."""
    family = experiment.config.family
    unit = UNIT[family]
    start = experiment.state.started
    if rows.empty:
        return pd.DataFrame(columns=[unit, C.variant, "value", "pre"])
    variants = rows.groupby(unit)[C.variant].last()
    if family == "support":
        feedback = lake.read_table(lake_dir, schemas.predictions_table("support_feedback"), start, day)
        unhelpful = set(feedback.loc[feedback[C.feedback] < 0, C.request_id]) if not feedback.empty else set()
        good = ~rows[C.escalated].astype(bool) & ~rows[C.request_id].isin(unhelpful)
        value = good.groupby(rows[unit]).mean()
        return pd.DataFrame({unit: value.index, C.variant: variants[value.index].values, "value": value.values})
    bought = _purchases(lake_dir, start, day + dt.timedelta(days=1))
    pre_bought = _purchases(lake_dir, start - dt.timedelta(days=PRE_DAYS), start - dt.timedelta(days=1))
    if family == "recommend":
        shown = rows[[unit, C.item_id, "day"]].drop_duplicates()
        days = shown[[unit, "day"]].drop_duplicates()
        # a recommended item counts when bought on the day it was shown or the next
        hits = []
        for lag in (0, 1):
            b = bought[[C.customer_id, C.item_id, "day"]].copy()
            b["day"] = b["day"] - dt.timedelta(days=lag)
            hits.append(shown.merge(b, on=[unit, C.item_id, "day"]))
        hit = pd.concat(hits).drop_duplicates()
        per_day = days.merge(hit.groupby([unit, "day"]).size().rename("n").reset_index(), how="left").fillna({"n": 0})
        value = per_day.groupby(unit)["n"].mean()
        pre = pre_bought.groupby(C.customer_id).size() / PRE_DAYS
    else:  # pricing: profit per item-day
        items = lake.read_table(lake_dir, schemas.ITEMS, end=day).drop_duplicates(C.item_id, keep="last")
        cost = items.set_index(C.item_id)[C.cost]

        def profit(frame: pd.DataFrame) -> pd.DataFrame:
            margin = frame[C.price] - frame[C.item_id].map(cost).fillna(0.0)
            out = frame.assign(profit=frame[C.quantity] * margin)
            return out.groupby([C.item_id, "day"])["profit"].sum().reset_index()

        priced = rows[[unit, "day"]].drop_duplicates()
        per_day = priced.merge(profit(bought), on=[unit, "day"], how="left").fillna({"profit": 0.0})
        value = per_day.groupby(unit)["profit"].mean()
        pre = profit(pre_bought).groupby(C.item_id)["profit"].sum() / PRE_DAYS
    out = pd.DataFrame({unit: value.index, C.variant: variants[value.index].values, "value": value.values})
    out["pre"] = out[unit].map(pre).fillna(0.0).to_numpy()
    return out


def observe(lake_dir, experiment: Experiment, day: dt.date) -> Observation:
    """The ``Observation`` the decision needs, from the lake as of ``day``."""
    family = experiment.config.family
    unit = UNIT[family]
    rows = exposures(lake_dir, experiment, day)
    values = unit_values(lake_dir, experiment, day, rows)
    champ, chall = values[values[C.variant] == CHAMPION], values[values[C.variant] == CHALLENGER]
    pre = "pre" in values.columns and family != "support"
    stage = rows[rows["day"] >= (experiment.state.stage_started or experiment.state.started)] if len(rows) else rows
    stage_units = (
        (
            int(stage.loc[stage[C.variant] == CHAMPION, unit].nunique()),
            int(stage.loc[stage[C.variant] == CHALLENGER, unit].nunique()),
        )
        if len(stage)
        else None
    )
    requests, latency = {}, {}
    if len(rows):
        per_request = rows.drop_duplicates(C.request_id) if C.request_id in rows.columns else rows
        for variant, group in per_request.groupby(C.variant):
            errors = int(group[C.fallback].notna().sum()) if C.fallback in group.columns else 0
            requests[str(variant)] = (len(group), errors)
            if C.latency_ms in group.columns and group[C.latency_ms].notna().any():
                latency[str(variant)] = float(np.nanpercentile(group[C.latency_ms].astype(float), 95))
    return Observation(
        day=day,
        champion=champ["value"].to_numpy(dtype=float),
        challenger=chall["value"].to_numpy(dtype=float),
        champion_pre=champ["pre"].to_numpy(dtype=float) if pre else None,
        challenger_pre=chall["pre"].to_numpy(dtype=float) if pre else None,
        stage_units=stage_units,
        requests=requests,
        latency_p95_ms=latency,
    )
