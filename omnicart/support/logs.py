"""Where the support endpoint keeps what people must see: escalations and feedback, JSON lines under
``<home>/support/``. Here so that serving appends to them and erasure rewrites them through the same paths, each
holding the same file lock, so a record appended while an erasure rewrites the file is never lost."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def escalations_path(home: Path) -> Path:
    return Path(home) / "support" / "escalations.jsonl"


def feedback_path(home: Path) -> Path:
    return Path(home) / "support" / "feedback.jsonl"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the log's lock (a ``.lock`` file beside it, across processes) while appending or rewriting it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append(path: Path, line: str) -> None:
    """Append one line to the log under its lock."""
    with locked(path), open(path, "a", encoding="utf-8") as f:
        f.write(line)
