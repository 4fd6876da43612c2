"""The recommend family's model code: candidates, two-tower retrieval, the XGBoost ranker, the predictor."""
