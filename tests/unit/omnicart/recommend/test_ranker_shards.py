"""The ranker's training rows built block by block as Parquet shards, and its negative sampling.

The shards must hold exactly the rows that building each cut in one piece gives (the in-memory path), and the sample
of negatives must be uniform, sized per query group and independent of how the groups were split into blocks.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from recsys_data import PARAMS, channel_shop

from omnicart.recommend import ranker, recsys
from omnicart.recommend.ranker import RankerParams


def _candidates(n_groups: int, per_group: int, seed: int = 0) -> pd.DataFrame:
    """Candidate rows: ``per_group`` items per query group, a fifth of them owned, one in ten a positive."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(n_groups), per_group)
    item = np.tile(np.arange(per_group), n_groups)
    return pd.DataFrame(
        {
            "group": group,
            "i": item,
            "ui_orders": np.where(rng.random(len(group)) < 0.2, 2.0, 0.0),
            "label": (rng.random(len(group)) < 0.1).astype(np.float32),
            "fold": group % 5,
            "x": rng.random(len(group)),
        }
    )


def test_the_sample_keeps_every_owned_and_positive_row_and_n_negatives_per_group():
    frame = _candidates(300, 40)
    params = RankerParams(neg_per_user=10)
    train = ranker.sample_negatives(frame, params)
    owned_or_positive = (frame["ui_orders"] > 0) | (frame["label"] > 0)
    assert train[owned_or_positive.to_numpy()].all()
    negatives = pd.Series(train & ~owned_or_positive.to_numpy()).groupby(frame["group"]).sum()
    available = (~owned_or_positive).groupby(frame["group"]).sum()
    assert (negatives == np.minimum(available, 10)).all()
    assert ranker.sample_negatives(frame, RankerParams(neg_per_user=1000)).all()  # more than there are: all


def test_the_sample_is_uniform_over_the_negatives():
    frame = _candidates(3000, 40)
    frame["ui_orders"], frame["label"] = 0.0, 0.0  # every row a negative: 10 of 40 kept in each group
    train = ranker.sample_negatives(frame, RankerParams(neg_per_user=10))
    share = pd.Series(train).groupby(frame["i"]).mean()  # how often each item position was kept
    assert share.between(0.25 - 0.04, 0.25 + 0.04).all(), share.describe()
    assert abs(frame.loc[train, "x"].mean() - 0.5) < 0.01  # no feature is biased by the sampling


def test_the_sample_does_not_depend_on_blocks_or_row_order_but_on_the_seed():
    frame = _candidates(200, 30)
    params = RankerParams(neg_per_user=5)
    whole = frame[ranker.sample_negatives(frame, params)][["group", "i"]]
    shuffled = frame.sample(frac=1.0, random_state=1)
    blocks = [shuffled[shuffled["group"] < 70], shuffled[shuffled["group"] >= 70]]
    parts = pd.concat([b[ranker.sample_negatives(b, params)][["group", "i"]] for b in blocks])
    assert sorted(map(tuple, parts.to_numpy())) == sorted(map(tuple, whole.to_numpy()))
    other = frame[ranker.sample_negatives(frame, replace(params, seed=1))][["group", "i"]]
    assert sorted(map(tuple, other.to_numpy())) != sorted(map(tuple, whole.to_numpy()))


def test_held_out_folds_keep_every_row_for_early_stopping():
    frame = _candidates(100, 30)
    params = RankerParams(neg_per_user=3, n_bags=3)
    rows = ranker.training_frame(frame, params, ["x"])
    held = frame[frame["fold"] < 3]
    assert len(rows[rows["fold"] < 3]) == len(held)  # all of them, sampled or not
    assert rows.loc[rows["fold"] >= 3, "train"].all()  # the others: only what the sample picked


class _Capture(recsys.LocalExecutor):
    """Trains in process and keeps what the ranker job was given: the shards' paths and, read back, their rows."""

    def ranker(self, config):
        self.shards = config["shards"]
        self.rows = config["shards"].read_all()
        return super().ranker(config)


@pytest.fixture(scope="module")
def two_fits():
    purchases, catalog = channel_shop()
    fits = {}
    for name, cells in (("whole", 10**9), ("blocks", 40 * 7)):  # 40 items: 7 customers per block
        executor = _Capture()
        params = replace(PARAMS, block_cells=cells, ranker=replace(PARAMS.ranker, neg_per_user=5))
        model = recsys.RecSys(params).fit(purchases, catalog, executor=executor)
        fits[name] = (model, executor)
    return fits


def test_blocks_of_customers_give_the_same_rows_as_each_cut_in_one_piece(two_fits):
    (whole, one), (blocks, many) = two_fits["whole"], two_fits["blocks"]
    assert len(many.shards.paths) > 3 * len(one.shards.paths)  # really built in blocks
    assert one.rows.keys() == many.rows.keys()
    for key in one.rows:
        np.testing.assert_array_equal(one.rows[key], many.rows[key], err_msg=key)
    assert whole.train_rows_ == blocks.train_rows_ == len(one.rows["y"])
    assert (np.diff(one.rows["group"]) >= 0).all()  # query groups whole and in order across the files
    assert one.rows["y"].sum() > 0 and (~one.rows["train"]).any()  # positives, and negatives left out by the sample


def test_the_job_is_given_paths_and_the_model_from_blocks_ranks_alike(two_fits):
    (whole, _), (blocks, many) = two_fits["whole"], two_fits["blocks"]
    assert all(isinstance(p, str) for p in many.shards.paths)
    purchases, _ = channel_shop()
    users = sorted(purchases["customer_id"].unique())[:20]
    a = whole.rank_users(purchases, users, 5)
    b = blocks.rank_users(purchases, users, 5)
    # the same rows; only the quantile sketch of the streamed batches may differ, so the top items mostly agree
    agree = np.mean([len(set(a[u]) & set(b[u])) / 5 for u in users])
    assert agree >= 0.8, agree


def test_a_catalog_past_the_dense_limit_trains_ranks_and_reloads_with_sparse_item_links(monkeypatch, tmp_path):
    from omnicart.recommend import item2item

    monkeypatch.setattr(item2item, "DENSE_ITEMS", 20)  # the shop's 40 items: EASE on the 20 most bought, sparse
    purchases, catalog = channel_shop()
    model = recsys.RecSys(PARAMS).fit(purchases, catalog)
    assert hasattr(model.state_.ease, "tocsr") and hasattr(model.state_.cooc, "tocsr")
    assert model.state_.ease.nnz > 0
    history = purchases[purchases["customer_id"] == "c0"]
    recs = model.recommend(history, k=5)
    assert len(recs) == 5 and all(r["reason"] for r in recs)
    loaded = recsys.RecSys.load(model.save(tmp_path / "model"))
    assert [r["item_id"] for r in loaded.recommend(history, k=5)] == [r["item_id"] for r in recs]


def test_a_worker_whose_files_hold_no_rows_of_a_booster_still_trains(tmp_path):
    frame = _candidates(60, 20)
    frame["ui_orders"] = 0.0  # nobody owns anything: the discover boosters' rows are all there is
    writer = ranker.ShardWriter(tmp_path, RankerParams(neg_per_user=5), ["x"])
    writer.write(frame)
    shards = writer.shards()
    params = RankerParams(neg_per_user=5, max_rounds=3, n_bags=2, eval_share=0.5)
    empty = ranker.Shards((), shards.features, 0)  # a second worker given no files
    out = ranker.fit_boosters(empty, params)
    assert len(out["main"]) == 2 and len(out["discover"]) == 2
    full = ranker.fit_boosters(shards, params)
    assert len(full["main"]) == 2 and np.isfinite(full["main_holdout_ndcg@10"])


def test_a_cut_learns_from_at_most_users_per_cut_buyers_a_uniform_sample(two_fits):
    """Past ``users_per_cut`` buyers a cut keeps a sample of them: the ranker's query groups stop growing."""
    purchases, catalog = channel_shop()
    (whole, one) = two_fits["whole"]
    executor = _Capture()
    params = replace(PARAMS, users_per_cut=3, ranker=replace(PARAMS.ranker, neg_per_user=5))
    sampled = recsys.RecSys(params).fit(purchases, catalog, executor=executor)
    cuts = len(params.cuts(whole.now_))
    groups_whole, groups_sampled = len(np.unique(one.rows["group"])), len(np.unique(executor.rows["group"]))
    assert groups_sampled <= 3 * cuts < groups_whole
    assert 0 < sampled.train_rows_ < whole.train_rows_
    assert recsys.RecSysParams().users_per_cut == 6_000  # the default, chosen on the inner split


def test_the_held_fold_is_exactly_the_picked_rows_and_scores_as_its_quantised_twin(tmp_path):
    """Early stopping reads the held fold as plain rows; each round's NDCG is the one the quantised matrix gives."""
    import xgboost as xgb

    writer = ranker.ShardWriter(tmp_path, RankerParams(neg_per_user=1000), ["x"])
    for block in range(3):  # three files, groups in ascending order across them
        frame = _candidates(40, 15, seed=block)
        frame["group"] += 40 * block
        frame["x"] += frame["label"] * 0.5  # something to learn
        writer.write(frame)
    shards = writer.shards()

    def hold(r):
        return r["fold"] == 1

    def train(r):
        return r["fold"] != 1

    held = ranker._held_matrix(shards, shards.paths, hold)
    rows = shards.read_all()
    m = hold(rows)
    assert held.num_row() == int(m.sum()) > 0 and held.feature_names == ["x"]
    np.testing.assert_array_equal(held.get_label(), rows["y"][m])
    np.testing.assert_array_equal(held.get_group(), np.bincount(rows["group"][m])[np.unique(rows["group"][m])])

    dtrain = xgb.QuantileDMatrix(ranker._row_iterator(shards, shards.paths, train), max_bin=16)
    quantised = xgb.QuantileDMatrix(ranker._row_iterator(shards, shards.paths, hold), ref=dtrain, max_bin=16)
    logs = []
    for dhold in (held, quantised):
        log: dict = {}
        xgb.train(
            RankerParams(max_bin=16).xgb_params(),
            dtrain,
            10,
            evals=[(dhold, "h")],
            evals_result=log,
            verbose_eval=False,
        )
        logs.append(log["h"]["ndcg@10-"])
    assert len(set(logs[0])) > 1  # the model changes from round to round
    np.testing.assert_allclose(logs[0], logs[1], rtol=1e-6)
    assert ranker._held_matrix(ranker.Shards((), ("x",), 0), (), hold).num_row() == 0  # a worker given no files
