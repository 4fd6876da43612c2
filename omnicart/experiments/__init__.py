"""Online experiments between model versions: sticky assignment, canary widening, guardrails, the sequential
decision to promote, continue or roll back, and off-policy estimates from logged propensities (docs/experiments.md)."""
