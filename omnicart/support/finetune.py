"""Fine-tuning MiniLM with MultipleNegativesRankingLoss (inside the Ray Train worker, or in process): both towers on
(question, answer) pairs with in-batch negatives (sentence-transformers' trainer, with key-aware batches), or the
query tower only against a frozen answer bank (a hand-written loop: the bank is not a trainer dataset)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MNRL_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default: cosine / 0.05


def _batches(keys: Sequence[str], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches in which no two pairs share a key: a repeated answer would be a false in-batch negative."""
    pending = rng.permutation(len(keys)).tolist()
    batches = []
    while pending:
        batch, seen, rest = [], set(), []
        for i in pending:
            if len(batch) < batch_size and keys[i] not in seen:
                batch.append(i)
                seen.add(keys[i])
            else:
                rest.append(i)
        if len(batch) >= 2:
            batches.append(batch)
        if len(batch) < 2:
            break
        pending = rest
    return batches


def _tuning_setup(n: int, cfg: dict) -> tuple[str, np.random.Generator, np.ndarray, dict[str, float]]:
    """Device, seeded generator, the (sub)sample of the ``n`` training pairs and the stats both tunings report."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    idx = np.arange(n)
    if len(idx) > cfg["max_pairs"]:
        idx = np.sort(rng.choice(idx, size=cfg["max_pairs"], replace=False))
    stats = {"pairs": float(len(idx)), "steps": 0.0, "seconds": 0.0, "loss": float("nan"), "stopped_early": 0.0}
    stats["gpu"] = float(device == "cuda")
    return device, rng, idx, stats


def _frozen_model(base: Path, device: str, cfg: dict) -> Any:
    """The encoder with its embeddings and first ``freeze_layers`` transformer layers frozen."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(base), device=device)
    for module in [model[0].auto_model.embeddings, *model[0].auto_model.encoder.layer[: cfg["freeze_layers"]]]:
        module.requires_grad_(False)
    return model


def _tunable_model(base: Path, device: str, cfg: dict, total_steps: int) -> tuple[Any, list, Any, Any]:
    """The frozen-bottom encoder (``_frozen_model``), its trainable parameters, AdamW and a linear warm-up / decay
    schedule over ``total_steps`` (the hand-written query-side tuning's; ``fine_tune`` leaves these to the trainer)."""
    import torch

    model = _frozen_model(base, device, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.01)
    warmup = max(1, int(cfg["warmup_share"] * total_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    return model, params, optimizer, schedule


def _step(loss: Any, params: list, optimizer: Any, schedule: Any, stats: dict[str, float]) -> None:
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    stats["steps"] += 1
    stats["loss"] = float(loss.detach())


def _save_tuned(model: Any, output: Path, stats: dict[str, float], started: float) -> dict[str, float]:
    stats["seconds"] = round(time.perf_counter() - started, 1)
    model.eval()
    model.save(str(output), create_model_card=False)
    return stats


def _key_batch_sampler(epochs: list[list[list[int]]]) -> Any:
    """The trainer's ``batch_sampler``: a ``DefaultBatchSampler`` that replays ``epochs`` (per epoch, the batches of
    ``_batches``), so no two pairs of a batch share a key. The keys stay out of the dataset: every non-label column
    would be fed to the loss as text. Its length is the longest epoch's (the trainer sizes every epoch by it and
    simply gets fewer batches from a shorter one)."""
    from sentence_transformers.base.sampler import DefaultBatchSampler

    class KeyBatchSampler(DefaultBatchSampler):
        def __iter__(self) -> Any:
            yield from epochs[min(self.epoch, len(epochs) - 1)]

        def __len__(self) -> int:
            return max(len(e) for e in epochs)

    return lambda dataset, **kwargs: KeyBatchSampler(dataset, **kwargs)


def _deadline(started: float, max_seconds: float, stats: dict[str, float]) -> Any:
    """A callback that stops training once ``max_seconds`` have passed since ``started`` (checked after each step,
    as the hand-written loop checked before the next one) and keeps the last step's loss in ``stats``."""
    from transformers import TrainerCallback

    class Deadline(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if time.perf_counter() - started > max_seconds:
                stats["stopped_early"] = 1.0
                control.should_training_stop = True
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                stats["loss"] = float(logs["loss"])

    return Deadline()


def fine_tune(
    base: Path, output: Path, questions: Sequence[str], answers: Sequence[str], keys: Sequence[str], cfg: dict
) -> dict[str, float]:
    """MultipleNegativesRankingLoss on (question, answer) pairs with sentence-transformers' trainer; saves the
    sentence-transformers folder to ``output``.

    Questions are tokenised to ``train_question_length`` and answers to ``train_answer_length``: the columns are
    routed to the "query" and "document" tasks, whose lengths the Transformer module applies (reset before saving).
    Returns what was done: pairs, steps, seconds, last loss and whether ``max_seconds`` stopped it early."""
    import tempfile

    device, rng, idx, stats = _tuning_setup(len(questions), cfg)
    if cfg["epochs"] <= 0 or len(idx) < 2:
        shutil.copytree(base, output, dirs_exist_ok=True)  # the off-the-shelf encoder, versioned with the model
        stats["pairs"] = 0.0
        return stats
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    epochs = [_batches([keys[i] for i in idx], cfg["batch_size"], rng) for _ in range(int(cfg["epochs"]))]
    model = _frozen_model(base, device, cfg)
    model[0].query_length, model[0].document_length = cfg["train_question_length"], cfg["train_answer_length"]
    pairs = Dataset.from_dict({"question": [questions[i] for i in idx], "answer": [answers[i] for i in idx]})
    total = sum(len(e) for e in epochs)
    with tempfile.TemporaryDirectory(prefix="omnicart-finetune-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=len(epochs),
            per_device_train_batch_size=int(cfg["batch_size"]),
            batch_sampler=_key_batch_sampler(epochs),
            router_mapping={"question": "query", "answer": "document"},
            learning_rate=cfg["lr"],
            weight_decay=0.01,
            optim="adamw_torch",
            lr_scheduler_type="linear",
            warmup_steps=max(1, int(cfg["warmup_share"] * total)),
            max_grad_norm=1.0,
            seed=int(cfg["seed"]),
            use_cpu=device == "cpu",
            logging_strategy="steps",
            logging_steps=1,  # the last step's loss, as reported before
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=device == "cuda",
        )
        started = time.perf_counter()
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=pairs,
            loss=MultipleNegativesRankingLoss(model),
            callbacks=[_deadline(started, cfg["max_seconds"], stats)],
        )
        for quiet in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(quiet)
        trainer.train()
        stats["steps"] = float(trainer.state.global_step)
    model[0].query_length = model[0].document_length = None  # training lengths only; not saved with the encoder
    return _save_tuned(model, output, stats, started)


def fine_tune_queries(
    base: Path,
    output: Path,
    questions: Sequence[str],
    targets: Sequence[int],
    bank: np.ndarray,
    cfg: dict,
    groups: tuple[Sequence[Any], Sequence[Any]] | None = None,
) -> dict[str, float]:
    """MultipleNegativesRankingLoss against a frozen answer bank: question i's positive is ``bank[targets[i]]`` and
    every other training answer is a negative, not only those of its batch. Only the query tower trains (a forward
    and backward pass over short questions; the answers are never re-encoded). With ``groups`` (per question, per
    bank entry), bank entries of the question's group other than its own answer are not negatives (same intent).

    Returns what was done, as ``fine_tune`` does."""
    import torch

    device, rng, idx, stats = _tuning_setup(len(questions), cfg)
    stats["negatives"] = float(max(len(bank) - 1, 0))
    if cfg["epochs"] <= 0 or len(idx) < 2 or len(bank) < 2:
        shutil.copytree(base, output, dirs_exist_ok=True)
        stats["pairs"] = 0.0
        return stats
    batch_size = int(cfg["batch_size"])
    total = int(cfg["epochs"]) * int(np.ceil(len(idx) / batch_size))
    model, params, optimizer, schedule = _tunable_model(base, device, cfg, total)
    model.max_seq_length = cfg["train_question_length"]
    answers = torch.as_tensor(np.asarray(bank, dtype=np.float32), device=device)
    targets = np.asarray(targets)
    if groups is not None:
        q_group, bank_group = (np.asarray(g, dtype=object) for g in groups)
    model.train()
    started = time.perf_counter()
    for _ in range(int(cfg["epochs"])):
        order = rng.permutation(idx)
        for start in range(0, len(order), batch_size):
            if time.perf_counter() - started > cfg["max_seconds"]:
                stats["stopped_early"] = 1.0
                break
            batch = order[start : start + batch_size]
            features = model.preprocess([questions[i] for i in batch])
            features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
            scores = MNRL_SCALE * model(features)["sentence_embedding"] @ answers.T
            if groups is not None:
                same = q_group[batch][:, None] == bank_group[None, :]
                same[np.arange(len(batch)), targets[batch]] = False
                scores = scores.masked_fill(torch.as_tensor(same, device=device), float("-inf"))
            loss = torch.nn.functional.cross_entropy(scores, torch.as_tensor(targets[batch], device=device))
            _step(loss, params, optimizer, schedule, stats)
    return _save_tuned(model, output, stats, started)
