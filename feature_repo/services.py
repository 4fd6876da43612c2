"""Feature services: one per model version, naming exactly the features it was trained and served with.

A new model version gets a new service (never an edited one), so a registered model always finds its features.
"""

from feast import FeatureService

from feature_repo import views
from feature_repo.meta import OWNER
from omnicart.schemas import C, F, windowed

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
        views.price_fit,
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
