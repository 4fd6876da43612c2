"""Feature services: one per model version, naming exactly the features it was trained and served with."""

from feast import FeatureService

from feature_repo import views

recommend_v1 = FeatureService(
    name="recommend_v1",
    features=[views.customer_stats, views.item_stats],
    description="Features of the popularity-per-segment + co-occurrence recommender.",
    owner=views.OWNER,
    tags={"family": "recommend"},
)

ALL = [recommend_v1]
