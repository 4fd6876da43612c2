"""The recommend endpoint's logic, free of Ray: request and response models and the service that answers.

The Serve deployment (serving/app.py) only wires HTTP to ``RecommendService``, so unit tests reach all of this.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from omnicart.schemas import C, F

log = logging.getLogger("omnicart.serving.recommend")

FEATURE_REFS = [f"{F.customer_view}:{C.segment}", f"{F.customer_view}:{F.recent_items}"]


class RecommendRequest(BaseModel):
    customer_id: str = Field(min_length=1, max_length=128, description="The customer's platform id.")
    k: int = Field(10, ge=1, le=100, description="How many items to return.")
    exclude_items: list[str] = Field(default_factory=list, max_length=1000, description="Items never to return.")


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str
    reason: str = Field(description="Why this item, in plain words.")


class RecommendResponse(BaseModel):
    customer_id: str
    items: list[RecommendedItem]
    source: str = Field(description="'personal' when the customer's features were found, else 'popular'.")
    model_version: str | None


class RecommendService:
    """Reads the customer's online features, asks the model, and falls back to popular items when either fails."""

    def __init__(
        self,
        load_model: Callable[[], Any],
        read_features: Callable[[str], dict[str, Any]],
        model_version: str | None = None,
    ) -> None:
        self.model = load_model()
        self.read_features = read_features
        self.model_version = model_version
        self.fallbacks: Counter[str] = Counter()

    def recommend(self, request: RecommendRequest) -> RecommendResponse:
        try:
            features = self.read_features(request.customer_id)
        except Exception:  # a feature store outage must not fail the request
            log.exception("online features unavailable for %s", request.customer_id)
            self.fallbacks["features_error"] += 1
            features = {}
        segment = features.get(C.segment)
        recent = features.get(F.recent_items) or []
        known = segment is not None
        if not known:
            self.fallbacks["unknown_customer"] += 1
        items = self.model.recommend(segment if known else None, list(recent), request.k, set(request.exclude_items))
        return RecommendResponse(
            customer_id=request.customer_id,
            items=[RecommendedItem(**item) for item in items],
            source="personal" if known else "popular",
            model_version=self.model_version,
        )
