"""The support family's ``train`` as a real Ray Train job (TorchTrainer, GPU when the cluster has one)."""

from __future__ import annotations

import pandas as pd
import pytest

from omnicart.schemas import C
from omnicart.settings import Settings
from omnicart.support.dataset import SupportDataset
from omnicart.support.predictor import SupportModel
from training.support import evaluate, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIRS = [
    ("Where is my order?", "Your order is on its way; track it from your confirmation email.", "order_status"),
    ("Has my parcel shipped?", "Your order is on its way; track it from your confirmation email.", "order_status"),
    (
        "When will my delivery arrive?",
        "Your order is on its way; track it from your confirmation email.",
        "order_status",
    ),
    ("How do I return this?", "Return it within 30 days from Orders in your account.", "return_item"),
    ("Can I send the kettle back?", "Return it within 30 days from Orders in your account.", "return_item"),
    ("What's your returns policy?", "Return it within 30 days from Orders in your account.", "return_item"),
    ("I forgot my password", "Use 'Forgot password' on the sign-in page.", "account_access"),
    ("I can't sign in", "Use 'Forgot password' on the sign-in page.", "account_access"),
    ("My account is locked", "Use 'Forgot password' on the sign-in page.", "account_access"),
    ("Are you open on Sunday?", "Stores open 9-20 Monday to Saturday, 10-16 Sunday.", "store_hours"),
    ("What are your opening hours?", "Stores open 9-20 Monday to Saturday, 10-16 Sunday.", "store_hours"),
    ("When do you close today?", "Stores open 9-20 Monday to Saturday, 10-16 Sunday.", "store_hours"),
]


def _frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[C.question, C.answer, C.intent])
    return frame.assign(**{C.product_id: None, C.kb_source: "ticket"})


def test_train_runs_in_ray_and_returns_a_loadable_predictor(tmp_path):
    settings = Settings(home=tmp_path / "home", pseudonym_key="integration-key")
    test = _frame([("where's my parcel", PAIRS[0][1], "order_status"), ("open sundays?", PAIRS[9][1], "store_hours")])
    dataset = SupportDataset("tiny", "intent", _frame(PAIRS), test, _frame([]))
    model = train(settings, dataset, epochs=1, max_pairs=12, batch_size=4, val_share=0.25)
    assert model.meta_["fine_tune"]["steps"] >= 2
    again = SupportModel.from_directory(model.model_dir_)
    assert again.answer("is the shop open on sunday")[C.intent] == "store_hours"
    metrics = evaluate(again, dataset, cache_dir=tmp_path / "cache")
    assert metrics["model"]["hit@1"] == 1.0
    assert {"bm25", "minilm", "model-dense"} <= set(metrics)
