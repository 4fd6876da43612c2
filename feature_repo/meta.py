"""Who owns the repo's objects, and the tags every view carries (searchable in the Feast UI and registry)."""

from __future__ import annotations

OWNER = "ml-team@localhost"


def view_tags(*, family: str, kind: str, pseudonymised: bool, **extra: str) -> dict[str, str]:
    """Tags of a view: the model family that reads it, how it is fed (batch, stream, on_demand) and whether it is
    keyed by or derived from pseudonymised personal data."""
    return {"family": family, "kind": kind, "pseudonymised": "true" if pseudonymised else "false", **extra}
