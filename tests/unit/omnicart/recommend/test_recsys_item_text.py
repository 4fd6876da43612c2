"""Item text vectors from outside the model (the platform's Feast ``item_text`` view): ``fit`` uses the source's
vectors where it has them, encodes the items it lacks, and stops on a source that fails or answers the wrong shape."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from recsys_data import PARAMS, fitted_shop

from omnicart import text
from omnicart.recommend import recsys
from omnicart.schemas import C


class OneHot:
    """A one-hot vector for every other catalog item (nothing MiniLM would give), NaN for the rest; records calls."""

    def __init__(self, catalog: pd.DataFrame) -> None:
        ids = catalog[C.item_id].astype(str).drop_duplicates().tolist()
        self.vectors = {i: np.eye(text.DIM, dtype=np.float32)[n % text.DIM] for n, i in enumerate(ids[::2])}
        self.calls: list[list[str]] = []

    def __call__(self, item_ids: np.ndarray) -> np.ndarray:
        self.calls.append([str(i) for i in item_ids])
        return np.stack([self.vectors.get(str(i), np.full(text.DIM, np.nan, np.float32)) for i in item_ids])


@pytest.fixture(scope="module")
def fitted():
    _, purchases, catalog, _ = fitted_shop()
    sold = set(purchases[C.item_id])
    unsold = catalog[~catalog[C.item_id].isin(sold)]
    assert len(unsold) >= 2  # cold items on both sides of the source
    source = OneHot(catalog)
    return recsys.RecSys(PARAMS).fit(purchases, catalog, item_text=source), source, catalog


def _encoded(catalog: pd.DataFrame, item_ids: list[str]) -> np.ndarray:
    rows = catalog.drop_duplicates(C.item_id).set_index(C.item_id).loc[item_ids].reset_index()
    return text.encode(text.item_text(rows))


def test_fit_takes_the_sources_vectors_and_encodes_the_items_it_lacks(fitted):
    model, source, catalog = fitted
    assert len(source.calls) == 1 and set(source.calls[0]) == set(catalog[C.item_id].astype(str))
    assert model.text_read_ == len(source.vectors)
    warm = model.state_.item_ids.tolist()
    read = [n for n, i in enumerate(warm) if i in source.vectors]
    lacking = [n for n, i in enumerate(warm) if i not in source.vectors]
    assert read and lacking
    np.testing.assert_array_equal(model.state_.text[read], np.stack([source.vectors[warm[n]] for n in read]))
    np.testing.assert_allclose(model.state_.text[lacking], _encoded(catalog, [warm[n] for n in lacking]), atol=2e-3)


def test_the_cold_items_blend_uses_the_sources_vectors(fitted):
    model, source, catalog = fitted
    cold = model.two_tower_.item_ids[model.two_tower_.n_warm :].tolist()
    read = [n for n, i in enumerate(cold) if i in source.vectors]
    lacking = [n for n, i in enumerate(cold) if i not in source.vectors]
    assert read and lacking
    np.testing.assert_array_equal(model.cold_text_[read], np.stack([source.vectors[cold[n]] for n in read]))
    np.testing.assert_allclose(model.cold_text_[lacking], _encoded(catalog, [cold[n] for n in lacking]), atol=1e-5)


def test_without_a_source_every_item_is_encoded_as_before():
    model, _, catalog, _ = fitted_shop()
    assert model.text_read_ == 0
    warm = model.state_.item_ids.tolist()
    np.testing.assert_allclose(model.state_.text, _encoded(catalog, warm), atol=2e-3)


def test_a_failing_or_malformed_source_fails_the_fit():
    _, purchases, catalog, _ = fitted_shop()

    def down(_ids: np.ndarray) -> np.ndarray:
        raise ConnectionError("offline store unreachable")

    with pytest.raises(recsys.FeatureSourceError, match="item text vectors unavailable: offline store unreachable"):
        recsys.RecSys(PARAMS).fit(purchases, catalog, item_text=down)
    with pytest.raises(recsys.FeatureSourceError, match="shape"):
        recsys.RecSys(PARAMS).fit(purchases, catalog, item_text=lambda ids: np.zeros((len(ids), 8), np.float32))
