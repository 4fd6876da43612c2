"""Unit tests see no OMNICART_* environment: what they construct is what they get."""

import os

import pytest


@pytest.fixture(autouse=True)
def _no_omnicart_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("OMNICART_")]:
        monkeypatch.delenv(key)
