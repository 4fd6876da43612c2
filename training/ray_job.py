"""Run a family's training function as a Ray Train job (GPU when the cluster has one, CPU otherwise)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnicart.raycluster import ensure_ray, gpu_available, scaling_config, train_workers
from omnicart.settings import Settings


def run(
    settings: Settings,
    name: str,
    loop: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    output: Path,
    *,
    num_workers: int = 1,
    xgboost: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Run ``loop(config)`` on ``num_workers`` Ray Train workers (spread over the nodes); each saves its model files
    into a directory and the first reports it as the checkpoint (see ``report_directory``). ``xgboost``: an
    XGBoostTrainer, whose workers' ``xgboost.train`` calls form one collective (data-parallel boosting); else a
    TorchTrainer. Returns the checkpoint copied to ``output`` and the metrics."""
    ensure_ray(settings)  # first: it sets Ray's environment before Ray is imported
    from ray.train import RunConfig

    if xgboost:
        from ray.train.xgboost import XGBoostTrainer as Trainer
    else:
        from ray.train.torch import TorchTrainer as Trainer

    trainer = Trainer(
        loop,
        train_loop_config=config,
        scaling_config=scaling_config(settings, num_workers),
        run_config=RunConfig(name=name, storage_path=str(settings.ray_storage.resolve())),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train job {name} reported no checkpoint")
    if output.exists():
        shutil.rmtree(output)
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(directory, output)
    return output, dict(result.metrics or {})


def report_directory(write: Callable[[Path], dict[str, float]]) -> None:
    """Inside a Ray Train worker: let ``write`` fill a fresh directory, then report it with its metrics. Data-parallel
    workers end with the same model, so only the first reports its directory as the checkpoint."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        metrics = write(Path(tmp))
        first = ray.train.get_context().get_world_rank() == 0
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if first else None)


# --- the recommend family's two stages as Ray Train jobs --------------------------------------------------------------
def two_tower_loop(config: dict[str, Any]) -> None:
    """Ray Train worker (TorchTrainer): train every two-tower task, report the arrays as one checkpoint."""
    import numpy as np

    from omnicart.recommend.recsys import two_tower_tasks

    results = two_tower_tasks(config, distributed=True)

    def write(directory: Path) -> dict[str, float]:
        for n, result in enumerate(results):
            arrays = {k: np.asarray(v) for k, v in result.items()}
            np.savez(directory / f"task{n}.npz", **arrays)
        return {f"task{n}_loss": float(r["loss_last"]) for n, r in enumerate(results)}

    report_directory(write)


def ranker_loop(config: dict[str, Any]) -> None:
    """Ray Train worker (XGBoostTrainer): fit every booster on this worker's shard, report them as a checkpoint."""
    import ray.train

    from omnicart.recommend import ranker

    ctx = ray.train.get_context()
    result = ranker.fit_boosters(
        config["shards"],
        config["params"],
        use_gpu=config["use_gpu"],
        shard=(ctx.get_world_rank(), ctx.get_world_size()),
    )

    def write(directory: Path) -> dict[str, float]:
        ranker.save(result, directory)
        return {k: v for k, v in result.items() if isinstance(v, float)}

    report_directory(write)


class RayExecutor:
    """Runs each stage of ``RecSys.fit`` as one Ray Train job on the configured cluster (GPU workers when it has
    them; ``num_workers`` None: one per node, ``raycluster.train_workers``); ``omnicart.recommend.recsys.LocalExecutor``
    is its in-process twin.

    The jobs are given paths to their training data under ``work_dir`` (beside Ray Train's storage, which every node
    of a cluster reaches), never the data itself: nothing is held both by the driver and in the object store."""

    def __init__(self, settings: Settings, name: str = "recsys", num_workers: int | None = None) -> None:
        self.settings = settings
        self.name = name
        self.num_workers = num_workers
        self.work_dir: Path | None = settings.ray_storage.resolve() / "scratch"

    def _run(self, trainer_cls: Callable[..., Any], loop: Callable, config: dict[str, Any], stage: str) -> Path:
        ensure_ray(self.settings)
        from ray.train import RunConfig

        use_gpu = gpu_available(self.settings)
        workers = self.num_workers or train_workers(self.settings)
        trainer = trainer_cls(
            loop,
            train_loop_config={**config, "use_gpu": use_gpu},
            scaling_config=scaling_config(self.settings, workers),
            run_config=RunConfig(
                name=f"{self.name}-{stage}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(self.settings.ray_storage.resolve()),
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"Ray Train job {self.name}-{stage} reported no checkpoint")
        out = Path(tempfile.mkdtemp(prefix=f"omnicart-{stage}-"))
        with result.checkpoint.as_directory() as directory:
            shutil.copytree(directory, out, dirs_exist_ok=True)
        return out

    def two_tower(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        from ray.train.torch import TorchTrainer

        from omnicart.recommend.recsys import read_two_tower

        out = self._run(TorchTrainer, two_tower_loop, config, "two-tower")
        try:
            return read_two_tower(out, len(config["tasks"]))
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def ranker(self, config: dict[str, Any]) -> dict[str, Any]:
        from ray.train.xgboost import XGBoostTrainer

        from omnicart.recommend import ranker

        out = self._run(XGBoostTrainer, ranker_loop, config, "ranker")
        try:
            return ranker.load(out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
