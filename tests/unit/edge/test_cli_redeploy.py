"""Whom `omnicart train` and `omnicart models rollback` redeploy: nothing when nothing serves; otherwise the Serve
app on the Ray cluster this process is in, the configured one, or the head that `omnicart up` started."""

from __future__ import annotations

import os
import socket

import pytest

from edge import services
from edge.cli import _serving
from omnicart.raycluster import JOIN_ENV
from omnicart.settings import Settings


@pytest.fixture
def listening():
    """A loopback port something listens on, as Serve's proxy does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_is_redeployed_when_nothing_serves(tmp_path) -> None:
    assert _serving(Settings(home=tmp_path, serve_port=_free_port())) is None


def test_a_configured_cluster_is_used_as_it_is(tmp_path, listening) -> None:
    settings = Settings(home=tmp_path, serve_port=listening, ray_address="127.0.0.1:7000")
    assert _serving(settings) is settings


def test_without_a_cluster_the_head_of_omnicart_up_is_joined(tmp_path, listening, monkeypatch) -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("this process is in a Ray cluster already")
    for key in JOIN_ENV:  # restored after the test: _serving sets them for Ray's client
        monkeypatch.setenv(key, "")
    settings = Settings(home=tmp_path, serve_port=listening)
    joined = _serving(settings)
    assert joined is not None and joined.ray_address == services.ray_address(settings)
    assert joined.serve_port == listening and joined.home == settings.home
    assert all(os.environ[key] == value for key, value in JOIN_ENV.items())
