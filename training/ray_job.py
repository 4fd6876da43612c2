"""Run a family's training function as a Ray Train job (GPU when the cluster has one, CPU otherwise)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnicart.raycluster import ensure_ray, gpu_available, worker_cpus
from omnicart.settings import Settings


def run(
    settings: Settings, name: str, loop: Callable[[dict[str, Any]], None], config: dict[str, Any], output: Path
) -> tuple[Path, dict[str, Any]]:
    """Run ``loop(config)`` on one Ray Train worker; the worker saves its model files into a directory and reports
    it as a checkpoint (see ``report_directory``). Returns the checkpoint copied to ``output`` and the metrics."""
    ensure_ray(settings)  # first: it sets Ray's environment before Ray is imported
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=gpu_available(settings), resources_per_worker={"CPU": worker_cpus()}
        ),
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
    """Inside a Ray Train worker: let ``write`` fill a fresh directory, then report it with its metrics."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        metrics = write(Path(tmp))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
