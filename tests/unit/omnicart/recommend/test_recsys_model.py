"""The recommender on a small simulated shop: repeat buyers, exclusions, explanations, cold items, persistence."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
from recsys_data import PARAMS, fitted_shop

from omnicart import text
from omnicart.recommend import candidates as cand
from omnicart.recommend import recsys
from omnicart.schemas import C


@pytest.fixture(scope="module")
def shop():
    return fitted_shop()


def _history(purchases: pd.DataFrame, customer: str) -> pd.DataFrame:
    return purchases[purchases[C.customer_id] == customer]


def test_a_regular_purchase_ranks_high(shop):
    model, purchases, _, repeats = shop
    bought = purchases.groupby([C.customer_id, C.item_id]).size()
    regulars = [
        (r[C.customer_id], r[C.item_id])
        for r in repeats.to_dict("records")
        if r[C.cycle_days] <= 14 and bought.get((r[C.customer_id], r[C.item_id]), 0) >= 3
    ]
    assert len(regulars) >= 10
    ranks = []
    for customer, item in regulars:
        recs = [r[C.item_id] for r in model.recommend(_history(purchases, customer), k=10)]
        ranks.append(recs.index(item) if item in recs else 99)
    assert np.mean(np.array(ranks) < 3) >= 0.8, f"ranks of regular purchases: {ranks}"


def test_excluded_items_never_appear(shop):
    model, purchases, _, _ = shop
    customer = purchases[C.customer_id].value_counts().index[0]
    history = _history(purchases, customer)
    first = [r[C.item_id] for r in model.recommend(history, k=10)]
    unavailable = set(first[:3]) | {"NOT-IN-CATALOG"}
    again = [r[C.item_id] for r in model.recommend(history, k=10, exclude=unavailable)]
    assert len(again) == 10 and not unavailable & set(again)
    ranked = model.rank_users(purchases, [customer], k=20, exclude={customer: set(first[:3])})
    assert not set(first[:3]) & set(ranked[customer])


def test_every_item_has_a_reason_from_its_own_contributions(shop):
    model, purchases, _, _ = shop
    regulars = purchases[C.customer_id].value_counts().index[:2].tolist()  # whose own repeats lead some items
    repeat_led, never_bought = [], []
    for customer in dict.fromkeys([*purchases[C.customer_id].drop_duplicates().head(5), *regulars]):
        history = _history(purchases, customer)
        recs = model.recommend(history, k=10)
        owned = set(history[C.item_id])
        assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
        for r in recs:
            assert isinstance(r["reason"], str) and r["reason"].strip()
            assert r["contributions"] and all(np.isfinite(v) for v in r["contributions"].values())
            top = max(r["contributions"], key=r["contributions"].get)
            if r[C.item_id] in owned and top == "repeat":
                repeat_led.append(r["reason"])
            elif r[C.item_id] not in owned:
                never_bought.append(r["reason"])
    assert repeat_led and never_bought  # both kinds of item were recommended, so both checks below check something
    assert all(reason.lower().startswith("you b") for reason in repeat_led), repeat_led  # "you buy this about every …"
    assert not any(reason.lower().startswith("you b") for reason in never_bought), never_bought


def test_discover_mode_proposes_only_items_never_bought(shop):
    model, purchases, _, _ = shop
    customer = purchases[C.customer_id].value_counts().index[1]
    history = _history(purchases, customer)
    recs = model.recommend(history, k=10, context={"discover": True})
    assert len(recs) == 10
    assert not {r[C.item_id] for r in recs} & set(history[C.item_id])


def test_new_catalog_items_get_slots_from_the_content_model(shop):
    model, purchases, catalog, _ = shop
    never_sold = set(catalog[C.item_id]) - set(purchases[C.item_id])
    assert len(never_sold) >= 2  # the simulated shop leaves some catalog items unsold: the slots have candidates
    customer = purchases[C.customer_id].value_counts().index[2]
    recs = model.recommend(_history(purchases, customer), k=10, context={"new_items": 2})
    assert len(recs) == 10
    assert {r[C.item_id] for r in recs[-2:]} <= never_sold
    assert all(r["reason"].startswith("New in the catalog") for r in recs[-2:])


def test_a_cold_item_is_found_by_its_text(shop):
    """With the text share at 1, the new-item slot for a customer who bought one item is the never-sold item whose
    title and description are closest to that item's (cosine of MiniLM vectors computed here independently)."""
    model, purchases, catalog, _ = shop
    never_sold = sorted(set(catalog[C.item_id]) - set(purchases[C.item_id]))
    assert len(never_sold) >= 2  # a choice between never-sold items, so the text decides
    by_text = copy.copy(model)
    by_text.params = dataclasses.replace(model.params, cold_text_weight=1.0)
    vectors = dict(zip(catalog[C.item_id], text.encode(text.item_text(catalog)), strict=True))
    for item in purchases[C.item_id].value_counts().index[:3]:
        expected = max(never_sold, key=lambda c: float(vectors[c] @ vectors[item]))
        recs = by_text.recommend([item], k=5, context={"new_items": 1})
        assert recs[-1][C.item_id] == expected, item


def test_bare_item_ids_are_a_valid_history(shop):
    model, purchases, _, _ = shop
    items = purchases[C.item_id].value_counts().index[:3].tolist()
    recs = model.recommend(items, k=5)
    assert len(recs) == 5 and all(r["reason"] for r in recs)


def test_save_and_load_give_the_same_recommendations(shop, tmp_path):
    model, purchases, _, _ = shop
    model.save(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    bags = [f"ranker_{name}_{bag}.json" for name in ("main", "discover") for bag in range(PARAMS.ranker.n_bags)]
    assert {"recsys.json", "items.npz", "two_tower.npz", *bags} <= files
    loaded = recsys.RecSys.load(tmp_path / "model")
    customer = purchases[C.customer_id].iloc[0]
    history = _history(purchases, customer)
    assert loaded.recommend(history, k=10) == model.recommend(history, k=10)
    users = purchases[C.customer_id].drop_duplicates().head(20).tolist()
    assert loaded.rank_users(purchases, users, k=20) == model.rank_users(purchases, users, k=20)


def test_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        recsys.RecSys().recommend(["x"])


def test_past_items_are_candidates_in_the_repeat_history_order(shop):
    """The repeat-history baseline's order (purchase lines, ties by all-time buyers) reaches the ranker as
    ``ui_repeat_rank`` over every item a customer bought (up to ``n_history`` of them)."""
    model, purchases, _, _ = shop
    state = model.state_
    events = cand.normalize_events(purchases)
    events = events[events[C.item_id].isin(state.index)]
    users = np.array(sorted(events[C.customer_id].unique()))[:30]
    frame = cand.candidates(cand.describe(events, state, model.now_, users), state, model.params.candidates)
    buyers = state.stats["i_buyers"].to_numpy()
    checked = 0
    for n, user in enumerate(users.tolist()):
        lines = events[events[C.customer_id] == user].groupby(C.item_id).size()
        if len(lines) > model.params.candidates.n_history:
            continue  # only the n_history most recent items are candidates: another order, not checked here
        checked += 1
        expected = sorted(lines.index, key=lambda i: (-lines[i], -buyers[state.index[i]], state.index[i]))
        mine = frame[(frame[cand.USER] == n) & frame["ui_repeat_rank"].notna()].sort_values("ui_repeat_rank")
        assert state.item_ids[mine[cand.ITEM].to_numpy()].tolist() == expected
        assert mine["ui_repeat_rank"].tolist() == list(range(1, len(expected) + 1))
    assert checked >= 20, checked  # most of the 30 customers bought at most n_history items


def test_the_ranker_is_an_average_of_boosters_each_stopped_on_another_fold(shop):
    """``n_bags`` boosters per model, each early-stopped on its own fold of customers; the served score is their
    mean margin, and the explanation's contributions (the boosters' mean TreeSHAP) add up to it."""
    import xgboost as xgb

    from omnicart.recommend import ranker

    model, purchases, _, _ = shop
    assert PARAMS.ranker.n_bags >= 2
    for name in ranker.BOOSTERS:
        boosters = model.boosters_[name]
        assert len(boosters) == PARAMS.ranker.n_bags
        dumps = {bytes(b.save_raw("json")) for b in boosters}
        assert len(dumps) == len(boosters)  # other held-out customers and seeds: other trees
    customer = purchases[C.customer_id].value_counts().index[0]
    recs = model.recommend(_history(purchases, customer), k=5)
    frame = model._frame(
        cand.normalize_events(_history(purchases, customer)), np.array([customer]), model.now_, False, None
    ).frame
    top = frame.sort_values("score", ascending=False, kind="stable").head(5)
    x = top[model.features].to_numpy(np.float32)
    d = xgb.DMatrix(x, feature_names=model.features)
    mean = np.mean([b.predict(d) for b in model.boosters_["main"]], axis=0)
    assert np.allclose([r["score"] for r in recs], mean, atol=1e-5)
    scores, groups = ranker.contributions(model.boosters_["main"], x)
    assert np.allclose(scores, mean, atol=1e-4)
    bias = np.mean([b.predict(d, pred_contribs=True)[:, -1] for b in model.boosters_["main"]], axis=0)
    assert np.allclose(groups.sum(axis=1) + bias, mean, atol=1e-4)


def test_recent_cuts_have_label_windows_cut_short_by_now():
    now = pd.Timestamp("2010-10-01", tz="UTC")
    params = recsys.RecSysParams(label_days=70, n_cuts=8, cut_stride_days=17, recent_cuts=3)
    cuts = params.cuts(now)
    days = [(now - c).days for c in cuts]
    assert days == [19, 36, 53, 70, 87, 104, 121, 138, 155, 172, 189]  # the first three windows end at now
    assert recsys.RecSysParams(label_days=70, n_cuts=8, cut_stride_days=17, recent_cuts=0).cuts(now) == cuts[3:]
    short = recsys.RecSysParams(label_days=14, n_cuts=2, cut_stride_days=7, recent_cuts=3).cuts(now)
    assert [(now - c).days for c in short] == [7, 14, 21]  # a cut at or after now has no window: none
    odd = recsys.RecSysParams(label_days=15, n_cuts=2, cut_stride_days=7, recent_cuts=3).cuts(now)
    assert [(now - c).days for c in odd] == [8, 15, 22]  # a window under a quarter of label_days (1 day): none


def test_folds_hold_out_the_same_customers_in_every_cut():
    users = np.array([f"c{n}" for n in range(2000)])
    folds = recsys._folds(users, 5, seed=0)
    assert set(folds.tolist()) == set(range(5)) and abs(np.mean(folds == 0) - 0.2) < 0.03
    assert (recsys._folds(users[::-1], 5, seed=0) == folds[::-1]).all()  # by id, not by position
    assert (recsys._folds(users, 5, seed=1) != folds).any()


def test_a_model_saved_before_bagging_loads_with_one_booster(shop, tmp_path):
    model, purchases, _, _ = shop
    directory = model.save(tmp_path / "model")
    for name in ("main", "discover"):
        for bag in range(1, PARAMS.ranker.n_bags):
            (directory / f"ranker_{name}_{bag}.json").unlink()
        (directory / f"ranker_{name}_0.json").rename(directory / f"ranker_{name}.json")
    loaded = recsys.RecSys.load(directory)
    assert [len(b) for b in loaded.boosters_.values()] == [1, 1]
    assert len(loaded.recommend(_history(purchases, purchases[C.customer_id].iloc[0]), k=5)) == 5
