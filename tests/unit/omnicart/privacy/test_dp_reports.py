"""The day's per-channel report: one noisy row per channel, the noise at its declared scale, the day's ε spent and
persisted, and a release beyond the budget refused with nothing written."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from omnicart import lake, schemas
from omnicart.privacy import dp, reports
from omnicart.schemas import C
from omnicart.settings import Settings

DAY = dt.date(2026, 3, 2)


def _events(seed: int = 0) -> pd.DataFrame:
    """400 customers with 3 purchase lines each in web, app and store (none in social or service), and views that
    count for nothing."""
    rng = np.random.default_rng(seed)
    n = 1200
    frame = pd.DataFrame(
        {
            C.customer_id: [f"C{i:04d}" for i in np.repeat(np.arange(400), 3)],
            C.channel: rng.choice(["web", "app", "store"], n, p=[0.5, 0.3, 0.2]),
            C.event_type: "purchase",
            C.quantity: rng.integers(1, 3, n),
            C.price: rng.uniform(5.0, 60.0, n).round(2),
        }
    )
    views = frame.head(300).assign(**{C.event_type: "view"})
    return pd.concat([frame, views], ignore_index=True)


def _exact(events: pd.DataFrame) -> pd.DataFrame:
    """The figures without noise, under the same caps (no customer has more than 5 lines here, no line over 200)."""
    buys = events[events[C.event_type] == "purchase"]
    assert buys.groupby(C.customer_id).size().max() <= reports.MAX_ORDERS_PER_CUSTOMER
    assert (buys[C.quantity] * buys[C.price]).max() <= reports.LINE_REVENUE_BOUNDS[1]
    by = buys.groupby(C.channel)
    return (
        pd.DataFrame(
            {
                "customers": by[C.customer_id].nunique(),
                "orders": by.size(),
                "revenue": (buys[C.quantity] * buys[C.price]).groupby(buys[C.channel]).sum(),
            }
        )
        .reindex(list(schemas.CHANNELS))
        .fillna(0.0)
    )


def test_report_has_one_noisy_row_per_channel_within_the_noise_scale(tmp_path):
    accountant = dp.BudgetAccountant(tmp_path / "budget.json", default_budget=reports.EPSILON)
    events = _events()
    report = reports.channel_report(events, DAY, accountant, seed=0)
    table = pd.DataFrame(report["channels"]).set_index(C.channel)
    assert list(table.index) == list(schemas.CHANNELS)  # social and service too: which channels sold is not leaked
    exact = _exact(events)
    scales = report["noise_scale"]
    assert scales["customers"] == pytest.approx(len(schemas.CHANNELS) / 1.0)  # Δ = 5 channels, ε = 1 per figure
    assert scales["orders"] == pytest.approx(reports.MAX_ORDERS_PER_CUSTOMER / 1.0)
    assert scales["revenue"] == pytest.approx(reports.MAX_ORDERS_PER_CUSTOMER * reports.LINE_REVENUE_BOUNDS[1])
    for figure in reports.FIGURES:
        error = (table[figure] - exact[figure]).abs()
        # |Laplace(b)| > 15 b has probability e^-15 per cell; rounding and clipping at 0 move a figure by ≤ 0.5 more
        assert (error <= 15 * scales[figure] + 0.5).all(), (figure, error.to_dict())
    sold = ["web", "app", "store"]  # where noise below 0 is not clipped back to the truth
    assert (table.loc[sold, "revenue"] != exact.loc[sold, "revenue"].round(2)).all()  # continuous noise
    counts = pd.concat([table["customers"] - exact["customers"], table["orders"] - exact["orders"]])
    assert (counts != 0).any()  # 10 counts all unchanged by Laplace(5) noise: probability < 1e-9


def test_report_spends_the_day_s_budget_and_refuses_a_second_release(tmp_path):
    path = tmp_path / "privacy" / "budget.json"
    events = _events()
    reports.channel_report(events, DAY, dp.BudgetAccountant(path, default_budget=reports.EPSILON))
    again = dp.BudgetAccountant(path, default_budget=reports.EPSILON)  # a fresh accountant reads the persisted spend
    dataset = reports.budget_dataset(DAY)
    assert again.spent(dataset) == pytest.approx(reports.EPSILON)
    assert len(json.loads(path.read_text())[dataset]["queries"]) == 3
    with pytest.raises(dp.BudgetExceededError, match="nothing was released"):
        reports.channel_report(events, DAY, again)
    assert again.spent(dataset) == pytest.approx(reports.EPSILON)  # the refused report spent nothing
    assert again.remaining(reports.budget_dataset(DAY + dt.timedelta(days=1))) == reports.EPSILON  # a new day


def test_release_from_the_lake_writes_once_and_refuses_beyond_the_budget(tmp_path):
    settings = Settings(home=tmp_path / "home")
    events = _events()
    events[C.event_timestamp] = pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(hours=12)
    lake.write_partition(settings.lake_dir, schemas.EVENTS, DAY, events)
    path = reports.release_channel_report(settings, DAY)
    assert path == settings.reports_dir / "channels" / f"{DAY}.json"
    first = json.loads(path.read_text())
    assert [row[C.channel] for row in first["channels"]] == list(schemas.CHANNELS)
    assert first["epsilon_left"] == pytest.approx(0.0)
    assert reports.release_channel_report(settings, DAY) == path  # a re-run returns the released report...
    assert json.loads(path.read_text()) == first  # ...unchanged, without spending again
    path.unlink()
    with pytest.raises(dp.BudgetExceededError):  # the budget is persisted under the home, not in the file
        reports.release_channel_report(settings, DAY)
    assert not path.exists()


def test_the_cli_releases_with_the_configured_budget_and_refuses_once_it_is_spent(tmp_path, monkeypatch):
    """`omnicart channel-report` (the DAG's release, by hand): the settings' ε is the day's budget; once spent, a
    later run is refused with a clear message, even after the setting is raised, and writes nothing."""
    from typer.testing import CliRunner

    from edge.cli import app
    from omnicart.settings import get_settings

    home = tmp_path / "home"
    events = _events().assign(**{C.event_timestamp: pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(hours=12)})
    lake.write_partition(home / "lake", schemas.EVENTS, DAY, events)
    monkeypatch.setenv("OMNICART_HOME", str(home))
    monkeypatch.setenv("OMNICART_DP_REPORT_EPSILON", "1.5")
    get_settings.cache_clear()
    runner = CliRunner()

    first = runner.invoke(app, ["channel-report", "--day", DAY.isoformat()])
    assert first.exit_code == 0, first.output
    assert "ε spent 1.5 of 1.5" in first.output
    path = reports.report_path(get_settings(), DAY)
    assert json.loads(path.read_text())["epsilon"] == 1.5
    path.unlink()  # the report is lost; the spend is not
    monkeypatch.setenv("OMNICART_DP_REPORT_EPSILON", "3")  # nor does a larger setting reopen a spent day
    get_settings.cache_clear()

    again = runner.invoke(app, ["channel-report", "--day", DAY.isoformat()])

    assert again.exit_code == 1 and "nothing was released" in again.output
    assert not path.exists()
    accountant = dp.BudgetAccountant.for_settings(get_settings())
    assert (
        accountant.budget(reports.budget_dataset(DAY)) == 1.5 and accountant.spent(reports.budget_dataset(DAY)) == 1.5
    )
    bad = runner.invoke(app, ["channel-report", "--day", "2026-13-01"])
    assert bad.exit_code == 2 and "--day" in bad.output
    get_settings.cache_clear()
