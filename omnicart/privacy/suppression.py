"""The erasure log and the suppression list read from it: ingest and the real-time path drop erased customers' rows.

Its own module so that erasure (which uses ingest to find and rewrite rows) and ingest (which consults the list)
both depend on it and not on each other. The log holds tokens and counts only, never personal data.
"""

from __future__ import annotations

import json
from pathlib import Path

from omnicart.settings import Settings


def log_path(settings: Settings) -> Path:
    return settings.home_dir / "privacy" / "erasure_log.jsonl"


def append(settings: Settings, entry: dict) -> None:
    """Add one erasure's entry; its ``suppress`` list joins the suppression list."""
    path = log_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def erasure_log(settings: Settings) -> list[dict]:
    """Every erasure so far (tokens and counts only)."""
    path = log_path(settings)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def suppressed(settings: Settings) -> frozenset[str]:
    """Tokens of erased customers (identifier tokens, and tokens of their customer ids): ingest drops their rows."""
    return frozenset(v for entry in erasure_log(settings) for v in entry.get("suppress", []))
