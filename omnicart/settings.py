"""One typed, frozen settings object for the whole platform.

Values come, highest first, from constructor arguments, ``OMNICART_*`` environment variables, an optional YAML
file (``OMNICART_CONFIG``, e.g. ``infra/config/demo.yaml``) and the defaults below. All state lives under
``home``. Constructing Settings writes nothing; directories are made by the code that writes into them.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class Settings(BaseSettings):
    """Everything configurable, in one place; passed down explicitly, never read from env elsewhere."""

    model_config = SettingsConfigDict(env_prefix="OMNICART_", frozen=True, extra="forbid", hide_input_in_errors=True)

    # --- where state lives, and how strict we are ---
    home: Path = Field(
        Path(".omnicart"), description="Root of all state: lake, feature store, registry, reports, mail."
    )
    mode: Literal["demo", "prod"] = Field(
        "demo", description="demo generates missing secrets; prod refuses to run without them."
    )

    # --- stores: the embedded default, or the production profile's servers (infra/config/production.yaml) ---
    profile: Literal["embedded", "production"] = Field(
        "embedded",
        description="embedded: SQLite, Parquet and in-process Ray under home (make demo); production: every store "
        "a server named by a URL below, secrets from the environment, startup refused while one is missing.",
    )
    postgres_url: str | None = Field(
        None,
        repr=False,  # may hold a password
        description="PostgreSQL database (postgresql://user:password@host:port/db) holding Airflow's metadata, "
        "MLflow's backend store and Feast's registry, each in its own schema (airflow, mlflow, feast).",
    )
    redis_url: str | None = Field(
        None, repr=False, description="Redis for Feast's online store (redis://[:password@]host:port[/db])."
    )
    mlflow_artifact_root: str | None = Field(
        None, description="Where the MLflow server keeps artifacts (a shared path or object-store URI); None: home."
    )
    airflow_executor: Literal["LocalExecutor", "CeleryExecutor", "KubernetesExecutor"] = Field(
        "LocalExecutor", description="Airflow executor of the production profile's scheduler."
    )

    # --- shop simulator ---
    seed: int = 7
    sim_customers: int = Field(1000, ge=10)
    sim_items: int = Field(120, ge=10)
    sim_days: int = Field(21, ge=2)
    sim_start: dt.date = dt.date(2026, 1, 1)
    sim_events_per_customer_day: float = Field(0.6, gt=0)
    drift_kind: Literal["none", "new_segment", "price_shock", "new_category", "channel_outage"] = "none"
    drift_day: int | None = Field(None, ge=1, description="Day index (0 = sim_start) from which drift is injected.")

    # --- secrets (SecretStr; in demo mode generated once under home/secrets/) ---
    pseudonym_key: SecretStr | None = None
    api_key: SecretStr | None = None

    # --- services, all on loopback by default ---
    host: str = "127.0.0.1"
    serve_port: int = 8000
    airflow_port: int = 8080
    mlflow_port: int = 5000
    ray_dashboard_port: int = 8265

    # --- federated training (omnicart.federated): Flower runs from its own virtual environment ---
    flower_python: Path | None = Field(
        None,
        description="Python of the Flower environment (`make flower`); None: .venv-flwr/bin/python at the "
        "project root.",
    )
    federated_owners_dir: Path | None = Field(
        None,
        description="Where each data owner's rows live, one Parquet file per owner in the canonical pricing frame "
        "(the owners' sites; `omnicart federated owners` writes stand-ins); None: home/federated/owners.",
    )
    federated_holdout_weeks: int = Field(
        13,
        ge=1,
        description="train_federated: the last weeks each owner knows at the run's date are held out to evaluate "
        "the model and the champion; it trains on the weeks before.",
    )
    evidently_port: int = 8001
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    ray_address: str | None = Field(None, description="Ray cluster to join; None starts Ray in-process.")
    train_workers: int | None = Field(
        None,
        ge=1,
        description="Ray Train workers of a data-parallel training job (recommend, pricing); None: one per node of "
        "the cluster (one in-process), spread over the nodes.",
    )
    mlflow_tracking_uri: str | None = Field(None, description="None means SQLite under home.")

    # --- training and serving ---
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest request body serving accepts (bytes); larger ones get 413 unread."
    )
    serve_replicas: int | None = Field(
        None, ge=1, description="Replicas of the Serve app; None: two when the cluster has the CPUs, else one."
    )
    serve_replica_cpus: float = Field(0.5, gt=0, description="CPUs Ray reserves for each Serve replica.")
    serve_haproxy: bool = Field(
        True,
        description="A Ray omnicart starts serves through HAProxy straight to the replicas (Serve's HA-proxy mode) "
        "instead of Serve's proxy actor; a cluster joined by address keeps its own ingress.",
    )
    serve_autoscaling: dict[str, Any] | None = Field(
        None,
        description="Ray Serve autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...); "
        "when set it replaces serve_replicas.",
    )
    serve_max_ongoing_requests: int = Field(
        8, ge=1, description="Requests one replica works on at once; more wait in its queue ..."
    )
    serve_max_queued_requests: int = Field(
        32, ge=0, description="... of at most this many; beyond, 503 with Retry-After (load shedding)."
    )
    serve_retry_after_s: int = Field(1, ge=0, description="Retry-After (seconds) of a shed request's 503.")
    serve_request_timeout_s: float = Field(
        30.0, gt=0, description="End-to-end limit of one HTTP request at Serve's proxy (408 after it)."
    )
    recommend_exploration: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="ε of the recommend exploration policy: the share of answers shown as a random ordering of the "
        "ranked items and the next candidates, with each item's propensity logged (off-policy evaluation).",
    )
    recommend_exploration_pool: int = Field(20, ge=1, le=90, description="Next candidates the exploration adds.")
    experiments: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per family, defaults of `omnicart experiments start` (ExperimentConfig fields: stages, "
        "stage_days, mde, alpha, power, harm_tolerance, max_error_increase, max_latency_ratio, ...).",
    )
    top_k: int = Field(10, ge=1, le=100)
    recent_items_n: int = Field(10, ge=1)
    use_gpu: Literal["auto", "yes", "no"] = "auto"

    # --- privacy ---
    dp_report_epsilon: float = Field(
        3.0,
        gt=0,
        description="Differential privacy: the ε budget of each day's released per-channel report (customers, orders, "
        "revenue), spent once per day; a release beyond it is refused.",
    )

    # --- monitoring and alerts ---
    drift_reference_days: int = Field(7, ge=1)
    drift_threshold: float = Field(
        0.15, gt=0, description="Evidently distance (Wasserstein, Jensen-Shannon) above which a column has drifted."
    )
    drift_significance: float = Field(
        0.001, gt=0, lt=1, description="p-value (K-S, chi-square) below which a column's test rejects; both must agree."
    )
    drift_max_reference_days: int = Field(
        28, ge=1, description="Most recent days of the champion's training window used as the drift reference."
    )
    drift_column_rules: dict[str, dict[str, float | bool | str]] = Field(
        default_factory=dict,
        description="Per-column tests, keyed 'column' or 'family.column': threshold, significance, categorical, "
        "distance, test (Evidently stat-test names), e.g. {'pricing.competitor_gap': {'threshold': 0.3}}.",
    )
    drift_critical_share: float = Field(
        0.5, gt=0, le=1, description="Share of drifted columns from which a family's data drift is critical."
    )
    drift_critical_score: float = Field(
        1.0, gt=0, description="Distance of a single drifted column from which the finding is critical."
    )
    drift_report_rows: int = Field(5_000, ge=100, description="Rows per side in HTML reports (verdicts use all).")
    outcome_rules: dict[str, dict[str, dict[str, float | int | str | None]]] = Field(
        default_factory=dict,
        description="Outcome limits per family and metric (min, max, baseline_metric, max_relative_drop, min_rows), "
        "merged over the defaults, e.g. {'pricing': {'wape': {'max': 0.5}}}.",
    )
    alert_from: str = "omnicart@localhost"
    alert_to: tuple[str, ...] = ("ml-team@localhost",)
    alert_reminder_days: int = Field(3, ge=1, description="Days without mail before an open incident is reminded.")
    alert_attach_max_bytes: int = Field(
        20_000_000, ge=0, description="Reports bigger than this (together) are linked in the mail, not attached."
    )
    retrain_on_reminder: bool = Field(True, description="Request retraining again with each reminder.")
    prediction_log_flush_rows: int = Field(
        1_000, ge=1, description="Serving writes its buffered answers to the lake at this many rows ..."
    )
    prediction_log_flush_seconds: float = Field(5.0, gt=0, description="... and at least this often (seconds).")
    prediction_log_max_rows: int = Field(
        100_000, ge=1, description="Buffered rows kept while the lake is unwritable; beyond, answers are dropped."
    )

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        """Resolved once, so processes with another working directory (Ray workers, Airflow tasks) agree."""
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _production_has_its_servers(self) -> Settings:
        """The production profile runs on servers and secrets the environment gives; name every one missing."""
        if self.profile != "production":
            return self
        missing = [
            f"OMNICART_{name.upper()} ({why})" for name, why in PRODUCTION_REQUIRED.items() if not getattr(self, name)
        ]
        if missing:
            raise ValueError("the production profile needs " + "; ".join(missing))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get("OMNICART_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    # --- derived locations ---
    @property
    def home_dir(self) -> Path:
        return self.home

    @property
    def landing_dir(self) -> Path:
        """Raw channel files as the shop delivers them (may hold PII)."""
        return self.home_dir / "landing"

    @property
    def lake_dir(self) -> Path:
        return self.home_dir / "lake"

    @property
    def ground_truth_dir(self) -> Path:
        return self.home_dir / "ground_truth"

    @property
    def feast_dir(self) -> Path:
        return self.home_dir / "feast"

    @property
    def reports_dir(self) -> Path:
        return self.home_dir / "reports"

    @property
    def mail_dir(self) -> Path:
        return self.home_dir / "mail"

    @property
    def airflow_home(self) -> Path:
        return self.home_dir / "airflow"

    @property
    def mlflow_uri(self) -> str:
        """Where clients track and register: the tracking server in production, SQLite under home by default."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def mlflow_backend_store_uri(self) -> str:
        """The database behind the MLflow server that ``omnicart up`` starts: PostgreSQL in production."""
        if self.profile == "production":
            return self.postgres_store_url("mlflow")
        return f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home_dir / "mlartifacts"

    @property
    def mlflow_artifact_uri(self) -> str:
        """The MLflow server's artifact root: ``mlflow_artifact_root``, else home/mlartifacts."""
        return self.mlflow_artifact_root or self.mlflow_artifacts.as_uri()

    def postgres_store_url(
        self, store: Literal["airflow", "mlflow", "feast"], driver: Literal["psycopg2", "psycopg"] = "psycopg2"
    ) -> str:
        """A SQLAlchemy URL for one store on ``postgres_url``: psycopg2 (or psycopg 3, which also speaks asyncio),
        with ``store`` as the schema
        searched first, so Airflow, MLflow and Feast share one database without sharing a table (each keeps its own
        ``alembic_version``)."""
        from sqlalchemy.engine import make_url

        if not self.postgres_url:
            raise RuntimeError("OMNICART_POSTGRES_URL is not set: the embedded profile has no PostgreSQL")
        url = make_url(self.postgres_url)
        return url.set(
            drivername=f"postgresql+{driver}", query={**url.query, "options": f"-csearch_path={store}"}
        ).render_as_string(hide_password=False)

    @property
    def federated_dir(self) -> Path:
        """The train_federated DAG's runs: each owner's shard and the Flower run, one folder per run date."""
        return self.home_dir / "federated"

    @property
    def owners_dir(self) -> Path:
        """The data owners' files (``federated_owners_dir``, else home/federated/owners)."""
        return self.federated_owners_dir or self.federated_dir / "owners"

    @property
    def ray_storage(self) -> Path:
        return self.home_dir / "ray_results"

    @property
    def serve_url(self) -> str:
        return f"http://{self.host}:{self.serve_port}"

    @property
    def sim_end(self) -> dt.date:
        return self.sim_start + dt.timedelta(days=self.sim_days - 1)

    def secret(self, name: Literal["pseudonym_key", "api_key"]) -> str:
        """The secret's value; in demo mode a missing one is generated once and kept under home/secrets/."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        if self.mode != "demo" or self.profile == "production":
            raise RuntimeError(
                f"OMNICART_{name.upper()} is required outside demo mode and in the production profile; "
                "set it from your secret store."
            )
        path = self.home_dir / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24))
        return path.read_text().strip()


PRODUCTION_REQUIRED: dict[str, str] = {
    "postgres_url": "Airflow metadata, MLflow backend store, Feast registry",
    "redis_url": "Feast online store",
    "mlflow_tracking_uri": "the MLflow tracking server, http://host:port",
    "ray_address": "the Ray cluster to join, host:port",
    "api_key": "secret: serving's X-API-Key",
    "pseudonym_key": "secret: the key that pseudonymises PII",
}
"""What the production profile refuses to start without (settings field → what it is for)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once at the edge (CLI, DAG task, Serve replica)."""
    return Settings()
