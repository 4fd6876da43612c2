"""Feature services: one per model version, naming exactly the features it was trained and served with.

A new model version gets a new service (never an edited one), so a registered model always finds its features.
"""

import copy

from feast import FeatureService, Field
from feast.on_demand_feature_view import OnDemandFeatureView

from feature_repo import views
from feature_repo.meta import OWNER
from omnicart.schemas import C, F, windowed


def _as_read_back(view: OnDemandFeatureView) -> OnDemandFeatureView:
    """Feast 0.67 reads an on-demand view's fields back from the registry without their descriptions, then checks a
    service's projection against them descriptions included; so the service projects onto the fields as read back."""
    projected = copy.copy(view)
    projected.projection.features = [Field(name=f.name, dtype=f.dtype) for f in view.features]
    return projected


recommend_v1 = FeatureService(
    name="recommend_v1",
    features=[views.customer_stats, views.item_stats],
    description="Features of the popularity-per-segment + co-occurrence recommender.",
    owner=OWNER,
    tags={"family": "recommend", "version": "1"},
)

recommend_v2 = FeatureService(
    name="recommend_v2",
    features=[
        views.customer_stats[[C.segment]],
        views.customer_channel,
        views.customer_realtime,
        views.item_window,
        views.item_text,
        _as_read_back(views.price_fit),
    ],
    description="Omnichannel ranking features: customer x channel windows, live activity, item windows, item text "
    "embeddings and the price fit of each candidate (entity rows: customer_id, channel, item_id, candidate_price).",
    owner=OWNER,
    tags={"family": "recommend", "version": "2"},
)

pricing_v1 = FeatureService(
    name="pricing_v1",
    features=[
        views.item_stats[[C.category]],
        views.item_window[
            [
                F.current_price,
                F.discount,
                C.competitor_price,
                F.competitor_gap,
                *(windowed(n, w) for w in (7, 30) for n in (F.sales, F.conversion)),
            ]
        ],
    ],
    description="Item price position and recent demand for the pricing family (entity rows: item_id).",
    owner=OWNER,
    tags={"family": "pricing", "version": "1"},
)

ALL = [recommend_v1, recommend_v2, pricing_v1]
