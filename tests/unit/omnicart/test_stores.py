import pytest

from omnicart import featurestore
from omnicart.settings import Settings
from omnicart.stores import redis_connection_string


def test_redis_url_becomes_feasts_connection_string():
    assert redis_connection_string("redis://cache:6380/2") == "cache:6380,db=2"
    assert redis_connection_string("redis://127.0.0.1") == "127.0.0.1:6379,db=0"
    assert redis_connection_string("redis://:p%40ss@cache:6379/0") == "cache:6379,db=0,password=p@ss"
    assert (
        redis_connection_string("rediss://app:pw@cache:6379/1") == "cache:6379,db=1,username=app,password=pw,ssl=true"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://cache:6379", "redis://"), ("redis://cache:6379/x", "a number"), ("redis://:a,b@cache:1/0", "comma")],
)
def test_a_redis_url_feast_cannot_use_is_refused_by_name(url, why):
    with pytest.raises(ValueError, match=why):
        redis_connection_string(url)


def test_feast_store_config_follows_the_profile(tmp_path):
    embedded = featurestore.store_config(Settings(home=tmp_path))
    assert embedded["online_store"] == {"type": "sqlite", "path": str(tmp_path / "feast" / "online.db")}
    assert embedded["registry"] == str(tmp_path / "feast" / "registry.db")

    production = Settings(
        home=tmp_path,
        profile="production",
        postgres_url="postgresql://u:pw@db:5432/omnicart",
        redis_url="redis://cache:6379/0",
        mlflow_tracking_uri="http://mlflow:5000",
        ray_address="ray:6379",
        api_key="k",
        pseudonym_key="p",
    )
    config = featurestore.store_config(production)
    assert config["online_store"] == {"type": "redis", "connection_string": "cache:6379,db=0"}
    assert config["registry"]["registry_type"] == "sql"
    assert config["registry"]["path"].endswith("/omnicart?options=-csearch_path%3Dfeast")
