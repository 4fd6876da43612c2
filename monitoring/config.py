"""What monitoring checks and how strictly: thresholds per column, outcome limits, alert cadence, the retrain assets.

``MonitoringConfig.from_settings(settings)`` reads each of its fields from ``Settings`` under the same name
(``OMNICART_DRIFT_*``, ``OMNICART_ALERT_*``, ``OMNICART_OUTCOME_RULES`` ... or the YAML config); rules given there
refine the defaults below instead of replacing them. The defaults here equal Settings' (a unit test holds them
together), so a config built without Settings (the benchmark) judges alike. Pure pydantic: importing this module is
cheap (DAG files do).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omnicart.schemas import FAMILIES

RETRAIN_ASSET_PREFIX = "omnicart://retrain/"
DEFAULT_FAMILIES: tuple[str, ...] = FAMILIES  # the monitor_models DAG checks these: every family (schemas.FAMILIES)


def retrain_asset_uri(family: str) -> str:
    """The Airflow Asset a failing check of ``family`` emits; the ``train_models`` DAG is scheduled on these."""
    return f"{RETRAIN_ASSET_PREFIX}{family}"


class ColumnRule(BaseModel):
    """Overrides for one column's drift test; None keeps the family or global default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float | None = Field(None, gt=0, description="Evidently distance at or above which the column drifted.")
    significance: float | None = Field(None, gt=0, lt=1, description="p-value below which the test rejects.")
    categorical: bool | None = Field(None, description="Force categorical (True) or numeric (False) treatment.")
    distance: str | None = Field(None, description="Evidently stat-test name of the effect size, e.g. 'psi'.")
    test: str | None = Field(None, description="Evidently stat-test name of the significance test, e.g. 'ks'.")


class OutcomeRule(BaseModel):
    """Limits on one outcome metric (hit rate, forecast error, escalation rate ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: float | None = None
    max: float | None = None
    baseline_metric: str | None = Field(
        None, description="Champion run metric to compare with (MLflow), e.g. 'model.hit_rate_at_10'."
    )
    max_relative_drop: float | None = Field(
        None, gt=0, lt=1, description="Fail when the value falls this share below the baseline metric."
    )
    min_rows: int = Field(20, ge=1, description="Fewer outcome rows than this: reported, never judged.")


DEFAULT_OUTCOME_RULES: dict[str, dict[str, OutcomeRule]] = {
    "recommend": {
        "hit_rate": OutcomeRule(min=0.01, baseline_metric="model.hit_rate_at_10", max_relative_drop=0.5),
    },
    "pricing": {"wape": OutcomeRule(max=0.6)},
    "support": {"escalation_rate": OutcomeRule(max=0.4), "negative_feedback_rate": OutcomeRule(max=0.3)},
}


# The recommend family sees prices through what people browse: weekly promotions move that mix by ~0.15 (normed
# Wasserstein) on clean weeks, while a price shock moves it by 0.4+; price levels proper are the pricing family's
# (competitor gap), which sees a shock at 1.0+.
DEFAULT_COLUMN_RULES: dict[str, ColumnRule] = {"recommend.price": ColumnRule(threshold=0.25)}


class MonitoringConfig(BaseModel):
    """Every knob of drift monitoring and alerting, with the defaults the benchmark was run with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drift_threshold: float = Field(0.15, gt=0, description="Default Evidently distance threshold per column.")
    drift_significance: float = Field(0.001, gt=0, lt=1, description="Default p-value threshold per column.")
    drift_reference_days: int = Field(
        7, ge=1, description="Reference window (days before the check) when the family has no champion."
    )
    drift_max_reference_days: int = Field(
        28, ge=1, description="Cap on the champion's training window used as reference (the most recent days)."
    )
    drift_column_rules: dict[str, ColumnRule] = Field(
        default_factory=lambda: dict(DEFAULT_COLUMN_RULES),
        description="Per-column overrides, keyed 'column' or 'family.column' (the latter wins).",
    )
    drift_critical_share: float = Field(
        0.5, gt=0, le=1, description="Share of drifted columns from which a data-drift finding is critical."
    )
    drift_critical_score: float = Field(
        1.0, gt=0, description="Distance of one column from which a data-drift finding is critical."
    )
    drift_report_rows: int = Field(
        5_000, ge=100, description="Rows per side drawn for the HTML report; the verdict always uses every row."
    )
    outcome_rules: dict[str, dict[str, OutcomeRule]] = Field(default_factory=lambda: dict(DEFAULT_OUTCOME_RULES))
    alert_to: tuple[str, ...] = ("ml-team@localhost",)
    alert_from: str = "omnicart@localhost"
    alert_reminder_days: int = Field(
        3, ge=1, description="Days (of logical date) after the last mail of an open incident before a reminder."
    )
    alert_attach_max_bytes: int = Field(
        20_000_000, ge=0, description="Reports larger than this are linked, not attached."
    )
    retrain_on_reminder: bool = Field(True, description="Request retraining again with each reminder.")

    @classmethod
    def from_settings(cls, settings: Any) -> MonitoringConfig:
        """The config from the fields ``settings`` has (same names), defaults for the others."""
        values = {name: getattr(settings, name) for name in SETTINGS_FIELDS if hasattr(settings, name)}
        # Rules given in settings refine the defaults instead of dropping them.
        if "drift_column_rules" in values:
            values["drift_column_rules"] = {**DEFAULT_COLUMN_RULES, **dict(values["drift_column_rules"])}
        if "outcome_rules" in values:
            given = dict(values["outcome_rules"])
            values["outcome_rules"] = {
                f: {**DEFAULT_OUTCOME_RULES.get(f, {}), **dict(given.get(f, {}))}
                for f in {*DEFAULT_OUTCOME_RULES, *given}
            }
        return cls(**values)

    def column_rule(self, family: str, column: str) -> ColumnRule:
        """The merged rule of ``column`` in ``family``: 'family.column' over 'column'."""
        merged: dict[str, Any] = {}
        for key in (column, f"{family}.{column}"):
            rule = self.drift_column_rules.get(key)
            if rule is not None:
                merged.update(rule.model_dump(exclude_none=True))
        return ColumnRule(**merged)

    def outcome_rule(self, family: str, metric: str) -> OutcomeRule | None:
        return self.outcome_rules.get(family, {}).get(metric)


# Fields read from Settings under the same name (one it lacks keeps the default above).
SETTINGS_FIELDS: tuple[str, ...] = tuple(MonitoringConfig.model_fields)
