"""Support family: answer a customer's question from past answers, or hand it over to a person.

Verbs as every family: ``build_dataset`` (the lake's tickets before ``as_of`` and the catalog; the tickets of
``as_of`` to evaluate), ``train`` (a Ray Train job running ``omnicart.support.fit``: fine-tune MiniLM on the shop's
question–answer pairs with MultipleNegativesRankingLoss, index the knowledge base, tune the BM25 + dense fusion and
calibrate the escalation threshold on validation data, export an ONNX query encoder), ``evaluate`` (the model beside
BM25 and the off-the-shelf MiniLM on the same questions) and the predictor ``omnicart.support.predictor.SupportModel``,
a directory of plain files.

Text is PII-scrubbed (emails and phone numbers to keyed tokens) before it is encoded, indexed or written.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omnicart import lake, schemas
from omnicart.metrics import rank_metrics
from omnicart.schemas import C
from omnicart.settings import Settings
from omnicart.support import NAME
from omnicart.support.bm25 import tokenize
from omnicart.support.calibration import confidence_features, share_accuracy_curve
from omnicart.support.dataset import SupportDataset, canonical, scrub_dataset
from omnicart.support.fit import DEFAULT_CONFIG, fit_scrubbed
from omnicart.support.fusion import fuse, in_scope
from omnicart.support.knowledge import relevance as _relevant  # evaluate's name for the truth of its questions
from omnicart.support.knowledge import scope_mask as _scope_mask
from omnicart.support.predictor import SupportModel
from training.family import Family, Registration

GATE_METRIC = "hit@1"


def build_dataset(
    settings: Settings, as_of: dt.date, window_days: int = 90, faq: pd.DataFrame | None = None
) -> SupportDataset:
    """Tickets of the ``window_days`` before ``as_of`` to learn from, the tickets of ``as_of`` to evaluate on; the
    knowledge base adds the catalog's text (one entry per item) and an optional FAQ (question, answer[, intent])."""
    start = as_of - dt.timedelta(days=window_days)
    tickets = lake.read_table(settings.lake_dir, schemas.SUPPORT, start, as_of)
    if tickets.empty:
        raise ValueError(f"no support tickets in the lake between {start} and {as_of}")
    tickets = tickets[tickets[C.answer].notna()].copy()
    tickets[C.event_timestamp] = pd.to_datetime(tickets[C.event_timestamp], utc=True)
    tickets[C.product_id] = tickets[C.item_id]
    cutoff = pd.Timestamp(as_of, tz="UTC")
    train = canonical(tickets[tickets[C.event_timestamp] < cutoff], "ticket")
    test = canonical(tickets[tickets[C.event_timestamp] >= cutoff], "ticket")
    items = lake.read_table(settings.lake_dir, schemas.ITEMS, end=as_of)
    extra = [catalog_entries(items)] if not items.empty else []
    if faq is not None and len(faq):
        extra.append(canonical(faq, "faq"))
    extra_kb = pd.concat(extra, ignore_index=True) if extra else canonical(pd.DataFrame(), "faq")
    dataset = SupportDataset("shop", "intent", train, test, extra_kb, as_of=as_of)
    return scrub_dataset(dataset, settings.secret("pseudonym_key"))


def catalog_entries(items: pd.DataFrame) -> pd.DataFrame:
    """One knowledge-base entry per catalog item: 'About the <title>: <description>', scoped to the item."""
    items = items.drop_duplicates(C.item_id, keep="last")
    titles = items[C.title].fillna("").astype(str) if C.title in items.columns else pd.Series("", index=items.index)
    desc = items[C.description].fillna("").astype(str) if C.description in items.columns else pd.Series("", items.index)
    texts = [f"About the {t}: {d}".strip() if t else d for t, d in zip(titles, desc, strict=True)]
    return pd.DataFrame(
        {
            C.question: None,
            C.answer: texts,
            C.intent: None,
            C.product_id: items[C.item_id].astype(str).tolist(),
            C.kb_source: "catalog",
        }
    )


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: fit the whole model and report its directory as the checkpoint."""
    from training.ray_job import report_directory

    report_directory(lambda directory: fit_scrubbed(config["dataset"], directory, config["config"]))


def train(settings: Settings, dataset: SupportDataset, output: Path | None = None, **config: Any) -> SupportModel:
    """Fit the model (``config``: keys of ``DEFAULT_CONFIG``) in a Ray Train job (GPU when the cluster has one) into
    ``output`` and return the loaded predictor."""
    from training import ray_job

    scrubbed = scrub_dataset(dataset, settings.secret("pseudonym_key"))  # again: no raw PII reaches the worker
    tag = dataset.as_of.isoformat() if dataset.as_of else dataset.fingerprint()
    output = output or settings.home_dir / "models" / NAME / f"{dataset.name}-{tag}"
    job = {"dataset": scrubbed, "config": {**DEFAULT_CONFIG, **config}}
    model_dir, _ = ray_job.run(settings, f"{NAME}-{dataset.name}-{tag}", _train_loop, job, output)
    return SupportModel.from_directory(model_dir)


# --- evaluation ------------------------------------------------------------------------------------------------------
def baseline_texts(model: SupportModel, protocol: str) -> list[str]:
    """What the baselines rank: the answers ("reqa"), or each entry's first known question ("intent")."""
    docs = model.kb_.docs
    if protocol == "reqa":
        return docs[C.answer].tolist()
    first = model.kb_.questions.drop_duplicates("doc").set_index("doc")[C.question]
    return [first.get(n, a) for n, a in enumerate(docs[C.answer])]


EVAL_CHUNK = 256  # questions scored at once: the (questions × docs) matrices stay this many rows high


def evaluate(
    model: SupportModel,
    dataset: SupportDataset,
    cache_dir: Path | None = None,
    product_scope: bool | None = None,
    *,
    baselines: bool = True,
    chunk: int = EVAL_CHUNK,
) -> dict[str, dict[str, float]]:
    """hit@1 and MRR@10 of the model, BM25 and the off-the-shelf MiniLM on the held-out questions (same docs).

    With ``product_scope`` (default: when the test questions carry product ids) each is also scored with answers
    restricted to the question's product ("<name>+scope"). The model also reports the answered share and accuracy at
    its calibrated threshold, and the share–accuracy curve. ``baselines=False`` skips BM25 and MiniLM (judging a
    champion on the challenger's data needs only the model's own figures). Questions are scored ``chunk`` at a time,
    so memory grows with questions + docs, not with their product; the figures are the same."""
    from omnicart import text
    from omnicart.support.bm25 import BM25Index

    test = dataset.test.reset_index(drop=True)
    if test.empty:
        raise ValueError(f"{dataset.name}: no test questions to evaluate on")
    questions, products = test[C.question].tolist(), test[C.product_id].tolist()
    has_products = any(isinstance(p, str) for p in products)
    scoped_too = has_products if product_scope is None else product_scope
    n = len(test)
    sums: dict[str, dict[str, float]] = {}

    def add(name: str, scores: np.ndarray, relevant: np.ndarray) -> None:
        for metric, value in rank_metrics(scores, relevant).items():
            sums.setdefault(name, {}).setdefault(metric, 0.0)
            sums[name][metric] += value * len(scores)

    emb = model.encode(questions)
    correct, conf = np.zeros(n, dtype=bool), np.zeros(n)
    if baselines:
        texts = baseline_texts(model, dataset.protocol)
        bm25 = BM25Index().fit(texts)
        base_q = text.encode(questions, cache_dir)
        base_d = text.encode(texts, cache_dir)
    names = ["model", "model-dense", *(["model+scope"] if scoped_too else [])]
    names += [f"{b}{s}" for b in (("bm25", "minilm") if baselines else ()) for s in ("", *(["+scope"] * scoped_too))]
    # each chunk's features once: the model's fused scores (as ``SupportModel.score`` fuses them), its dense score
    # alone, and both within each question's product scope
    for rows, feats, intent_p in model.features(questions, chunk, emb):
        relevant = _relevant(dataset.protocol, test.iloc[rows], model.kb_)
        mask, _ = _scope_mask(model.kb_, products[rows]) if scoped_too else (None, None)
        fused = fuse(feats, model.weights_)
        add("model", fused, relevant)
        correct[rows] = relevant[np.arange(len(fused)), fused.argmax(axis=1)]
        conf[rows] = model.calibration_.confidence(confidence_features(fused, intent_p))
        add("model-dense", fuse(feats, {"dense_a": 1.0}), relevant)
        if scoped_too:
            add("model+scope", in_scope(fused, mask), relevant)
        if baselines:
            for name, scores in (("bm25", bm25.scores(tokenize(questions[rows]))), ("minilm", base_q[rows] @ base_d.T)):
                add(name, scores, relevant)
                if scoped_too:
                    # no mask: no question of this chunk names a product, so every doc is in scope
                    add(f"{name}+scope", in_scope(scores, mask), relevant)
    out: dict[str, dict[str, float]] = {}
    answered = conf >= model.threshold_
    out["model"] = {metric: value / n for metric, value in sums["model"].items()}
    out["model"].update(
        {
            "answered_share": float(answered.mean()),
            "answered_accuracy": float(correct[answered].mean()) if answered.any() else float("nan"),
            "questions": float(n),
        }
    )
    for point in share_accuracy_curve(conf, correct):
        out[f"model@{point['answered_share']:.0%}"] = point
    for name in names[1:]:
        out[name] = {metric: value / n for metric, value in sums[name].items()}
    return out


def registration(model: SupportModel, dataset: SupportDataset) -> Registration:
    """The pyfunc with the model directory, the training configuration and the data's fingerprint."""
    return Registration(
        python_model=SupportModel(),
        artifacts={"model_dir": model.model_dir_},
        params={f"config.{k}": v for k, v in model.meta_["config"].items()},
        tags={"data_window": f"..{dataset.as_of}", "dataset": dataset.name, "fingerprint": dataset.fingerprint()},
    )


def stages(model: SupportModel) -> dict[str, float]:
    """Seconds of each step of the fit (fine-tuning, ONNX export, validation, encoder choice, index)."""
    return {k: round(float(v), 1) for k, v in model.meta_.get("seconds", {}).items()}


FAMILY = Family(
    name=NAME,
    gate_metric=GATE_METRIC,
    higher_is_better=True,
    build_dataset=build_dataset,
    train=train,
    evaluate=evaluate,
    registration=registration,
    predictor_type=SupportModel,
    stages=stages,
)
