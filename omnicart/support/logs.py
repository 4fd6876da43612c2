"""Where the support endpoint keeps what people must see: escalations and feedback, JSON lines under
``<home>/support/``. Here so that serving writes them and erasure rewrites them through the same paths."""

from __future__ import annotations

from pathlib import Path


def escalations_path(home: Path) -> Path:
    return Path(home) / "support" / "escalations.jsonl"


def feedback_path(home: Path) -> Path:
    return Path(home) / "support" / "feedback.jsonl"
