"""EASE against its closed form, and its lambda tuned on the last month only (the metrics: test_metrics.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from omnicart.recommend import item2item
from omnicart.schemas import C


def test_ease_matches_the_closed_form_and_has_a_zero_diagonal():
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32)
    lam = 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(3))
    expected = np.eye(3) - p / np.diag(p)
    b = item2item.ease(x, lam)
    assert np.allclose(np.diag(b), 0.0)
    assert np.allclose(b, expected, atol=1e-5)


def test_ease_in_single_or_double_precision_matches_the_closed_form(monkeypatch):
    x = _purchases(500, 80, seed=2)
    for lam in (0.5, 50.0):  # the bound of the condition number picks float64 for the first, float32 for the second
        p = np.linalg.inv(x.T.astype(np.float64) @ x + lam * np.eye(80))
        expected = np.eye(80) - p / np.diag(p)
        chosen = item2item.ease(x, lam)
        monkeypatch.setattr(item2item, "MAX_SINGLE_ERROR", 0.0)  # always float64
        double = item2item.ease(x, lam)
        monkeypatch.undo()
        for b in (chosen, double):
            assert b.dtype == np.float32 and np.allclose(b, expected, atol=1e-5 * np.abs(expected).max())
            assert np.all(np.diag(b) == 0.0)


def test_ease_path_gives_each_lambdas_weights_from_one_gram_matrix():
    x = _purchases(300, 50, seed=3)
    lams = (1.0, 10.0, 100.0)
    for (lam, weights), expected in zip(item2item.ease_path(x, lams), lams, strict=True):
        assert lam == expected and np.array_equal(weights, item2item.ease(x, lam))
    for (lam, weights), _ in zip(item2item.ease_path(x, lams, max_items=30), lams, strict=True):
        assert (weights != item2item.ease(x, lam, max_items=30)).nnz == 0


def test_ease_lambda_is_tuned_on_the_last_month_only(monkeypatch):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        base = pd.Timestamp("2024-01-01", tz="UTC")
        for d in rng.choice(80, size=6, replace=False):
            rows.append((u, f"i{rng.integers(0, 12)}", base + pd.Timedelta(days=int(d))))
    events = pd.DataFrame(rows, columns=[C.customer_id, C.item_id, C.event_timestamp])
    now = pd.Timestamp("2024-03-21", tz="UTC")
    best, tried = item2item.tune_ease_lambda(events, now, (1.0, 10.0, 100.0))
    assert set(tried) == {1.0, 10.0, 100.0}
    assert best in tried and tried[best] == max(tried.values())
    # events after `now` cannot change the choice
    later = events.assign(**{C.event_timestamp: events[C.event_timestamp] + pd.Timedelta(days=400)})
    assert item2item.tune_ease_lambda(pd.concat([events, later]), now, (1.0, 10.0, 100.0)) == (best, tried)
    # scored in blocks of 3 customers (12 items: 36 cells), the figures are those of one pass
    scored: list[int] = []
    whole_pass = item2item.scores
    monkeypatch.setattr(item2item, "scores", lambda x, w: scored.append(x.shape[0]) or whole_pass(x, w))
    assert item2item.tune_ease_lambda(events, now, (1.0, 10.0, 100.0), block_cells=36) == (best, tried)
    assert max(scored) <= 3 < sum(scored)
    # judged on a sample of 7 customers: 7 scored per λ, the same sample each time
    judged = sum(scored) // 3
    scored.clear()
    sampled = item2item.tune_ease_lambda(events, now, (1.0, 10.0, 100.0), max_customers=7)
    assert scored == [7, 7, 7] and judged > 7
    assert item2item.tune_ease_lambda(events, now, (1.0, 10.0, 100.0), max_customers=7) == sampled
    assert item2item.tune_ease_lambda(events, now, (1.0, 10.0, 100.0), max_customers=judged) == (best, tried)


def _purchases(n_users: int = 400, n_items: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    popularity = rng.uniform(0.02, 0.3, n_items)  # some items bought far more than others
    x = rng.random((n_users, n_items)) < popularity
    return x.astype(np.float32)


def test_past_the_dense_limit_ease_is_fitted_on_the_most_bought_items_and_kept_sparse():
    x = _purchases()
    top = np.sort(np.argsort(-x.sum(axis=0), kind="stable")[:40])
    b = item2item.ease(x, 5.0, max_items=40)
    assert b.shape == (60, 60) and hasattr(b, "tocsr")  # sparse, over the whole catalog
    dense = item2item.ease(x[:, top], 5.0)  # what it keeps: the positive weights of EASE on those items
    got = item2item.take(b, top, top)
    assert np.allclose(got, np.where(dense > 0, dense, 0.0), atol=1e-6)
    rest = np.setdiff1d(np.arange(60), top)
    assert b[rest].nnz == 0 and b[:, rest].nnz == 0  # the rarely bought items have no EASE links
    scores = item2item.scores(x[:5], b)
    assert scores.shape == (5, 60) and np.allclose(scores, x[:5] @ b.toarray(), atol=1e-5)


def test_past_the_dense_limit_cooccurrence_keeps_each_items_strongest_links(monkeypatch):
    monkeypatch.setattr(item2item, "NEIGHBOURS", 5)
    baskets = _purchases(300, 50, seed=1)
    dense = item2item.cooccurrence(baskets)
    sparse = item2item.cooccurrence(baskets, max_items=10)
    assert hasattr(sparse, "tocsr")
    full = sparse.toarray()
    assert np.allclose(full[full != 0], dense[full != 0], atol=1e-6)  # the kept links are the dense ones
    links = (full != 0).sum(axis=1)
    assert links.max() == 5 and (links == np.minimum((dense > 0).sum(axis=1), 5)).all()
    for row, kept in zip(dense, full, strict=True):  # each item keeps its 5 strongest (ties aside)
        if (row > 0).sum() > 5:
            assert kept[kept != 0].min() >= np.sort(row)[-5] - 1e-6


def test_rows_per_block_bounds_the_block_and_keeps_one_row():
    """A block of rows × columns stays within the cells asked for, and holds at least one row however wide."""
    assert item2item.rows_per_block(10_000_000, 62_500) == 160
    assert item2item.rows_per_block(10, 3) == 3 and 3 * 3 <= 10
    assert item2item.rows_per_block(10, 50) == 1  # wider than the budget: one row at a time
    assert item2item.rows_per_block(10, 0) == 10  # no columns: the budget in rows
