from pathlib import Path

import pytest
from pydantic import ValidationError

from omnicart.settings import Settings


def test_defaults_live_under_one_home_and_bind_loopback(tmp_path):
    s = Settings(home=tmp_path)
    for path in (s.lake_dir, s.feast_dir, s.reports_dir, s.mail_dir, s.airflow_home, s.mlflow_artifacts):
        assert path.is_relative_to(tmp_path)
    assert s.host == "127.0.0.1"
    assert s.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_settings_are_frozen(tmp_path):
    s = Settings(home=tmp_path)
    with pytest.raises(ValidationError):
        s.seed = 3


def test_constructing_writes_nothing(tmp_path):
    Settings(home=tmp_path / "home")
    assert not (tmp_path / "home").exists()


def test_env_and_yaml_sources(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("sim_days: 9\nseed: 3\n")
    monkeypatch.setenv("OMNICART_CONFIG", str(config))
    monkeypatch.setenv("OMNICART_SEED", "11")
    s = Settings(home=tmp_path)
    assert s.sim_days == 9  # from YAML
    assert s.seed == 11  # env wins over YAML


def test_unknown_fields_are_rejected(tmp_path):
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, sim_dayz=3)


def test_demo_mode_generates_a_private_secret_once(tmp_path):
    s = Settings(home=tmp_path)
    first = s.secret("api_key")
    assert len(first) >= 24
    assert s.secret("api_key") == first
    assert (tmp_path / "secrets" / "api_key").stat().st_mode & 0o077 == 0


def test_prod_mode_refuses_to_run_without_secrets(tmp_path):
    s = Settings(home=tmp_path, mode="prod")
    with pytest.raises(RuntimeError, match="OMNICART_API_KEY"):
        s.secret("api_key")
    assert Settings(home=tmp_path, mode="prod", api_key="k" * 30).secret("api_key") == "k" * 30


def test_home_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings(home=Path("rel")).home_dir == tmp_path / "rel"


PRODUCTION = {
    "postgres_url": "postgresql://omnicart:pw@db.internal:5432/omnicart",
    "redis_url": "redis://:pw@cache.internal:6379/2",
    "mlflow_tracking_uri": "http://mlflow.internal:5000",
    "ray_address": "ray-head:6379",
    "api_key": "a" * 30,
    "pseudonym_key": "p" * 30,
}


def test_the_default_profile_is_embedded(tmp_path):
    s = Settings(home=tmp_path)
    assert s.profile == "embedded"
    assert s.mlflow_backend_store_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert s.mlflow_artifact_uri == (tmp_path / "mlartifacts").as_uri()


def test_production_names_every_missing_url_and_secret_and_hides_given_values(tmp_path):
    with pytest.raises(ValidationError) as caught:
        Settings(home=tmp_path, profile="production", redis_url=PRODUCTION["redis_url"], api_key="s3cr3t-value")
    message = str(caught.value)
    for name in (
        "OMNICART_POSTGRES_URL",
        "OMNICART_MLFLOW_TRACKING_URI",
        "OMNICART_RAY_ADDRESS",
        "OMNICART_PSEUDONYM_KEY",
    ):
        assert name in message
    assert "OMNICART_REDIS_URL" not in message and "OMNICART_API_KEY" not in message
    assert "s3cr3t-value" not in message and ":pw@" not in message


def test_production_profile_is_chosen_by_env_or_the_config_file(tmp_path, monkeypatch):
    for key, value in PRODUCTION.items():
        monkeypatch.setenv(f"OMNICART_{key.upper()}", value)
    monkeypatch.setenv("OMNICART_HOME", str(tmp_path))
    monkeypatch.setenv("OMNICART_PROFILE", "production")
    assert Settings().profile == "production"

    monkeypatch.delenv("OMNICART_PROFILE")
    monkeypatch.setenv("OMNICART_CONFIG", str(Path(__file__).parents[3] / "infra" / "config" / "production.yaml"))
    s = Settings()
    assert (s.profile, s.mode, s.home_dir) == ("production", "prod", tmp_path)  # env wins over the file's home


def test_production_stores_share_one_database_in_their_own_schemas(tmp_path):
    s = Settings(home=tmp_path, profile="production", **PRODUCTION)
    assert s.mlflow_uri == "http://mlflow.internal:5000"
    urls = {store: s.postgres_store_url(store) for store in ("airflow", "mlflow", "feast")}
    for store, url in urls.items():
        assert url == f"postgresql+psycopg2://omnicart:pw@db.internal:5432/omnicart?options=-csearch_path%3D{store}"
    assert s.mlflow_backend_store_uri == urls["mlflow"]
    assert "pw" not in repr(s)


def test_production_never_generates_a_secret(tmp_path):
    s = Settings(home=tmp_path, profile="production", **PRODUCTION)
    assert s.secret("api_key") == "a" * 30
    assert not (tmp_path / "secrets").exists()
