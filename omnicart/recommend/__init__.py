"""The recommend family's model code: candidates, two-tower retrieval, the XGBoost ranker, the predictor."""

# The predictor's saved purchase histories (customer rows) in its model directory; erasure rewrites this file.
HISTORIES_FILE = "histories.parquet"
