"""omnicart's Feast repository, split by kind: entities, sources, views, services.

Sources name paths relative to the store's repo path (``<home>/feast``), so one definition serves every home.
"""

from __future__ import annotations

from typing import Any


def definitions() -> list[Any]:
    """Every Feast object of the repo, in the order ``FeatureStore.apply`` takes them."""
    from feature_repo import entities, services, sources, views

    return [
        entities.customer,
        entities.item,
        entities.channel,
        *sources.ALL,
        *views.ALL,
        *services.ALL,
    ]
