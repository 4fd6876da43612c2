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
