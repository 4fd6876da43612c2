"""Dynamic pricing: the demand model, the guarded price optimiser, and safe price tests.

- ``features``: canonical demand table → model features (price features recomputable at any candidate price)
- ``model``: ``DemandModel``, monotone XGBoost on log units with per-product elasticities and TreeSHAP drivers
- ``baselines``: series mean and log-log (fixed effect per series, one elasticity per product)
- ``optimiser``: the price that maximises profit (or revenue) within guardrails, with its explanation
- ``pricer``: ``suggest(model, items, policy)``, the model's demand curves through the optimiser, explained
- ``pyfunc``: ``PricingPredictor``, the MLflow pyfunc the registry carries (the model directory as an artifact)
- ``experiment``: sticky, balanced control/treatment assignment and measured uplift with a confidence interval
"""
