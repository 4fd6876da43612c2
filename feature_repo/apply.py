"""``feast apply`` of this repo and materialisation into the online store, for the DAGs and the CLI."""

from __future__ import annotations

import datetime as dt

from feature_repo import definitions
from omnicart import featurestore
from omnicart.settings import Settings


def apply_and_materialize(settings: Settings, first: dt.date, last: dt.date) -> None:
    """Register every definition with Feast, then load the days [first, last] into the online store."""
    featurestore.apply(settings, definitions())
    featurestore.materialize(settings, first, last)
