"""``omnicart experiments start|status|stop FAMILY``: online tests of a registered version against the champion."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Online experiments: canary and A/B of a challenger version against the champion.")
console = Console()
FAMILY_HELP = "Model family: recommend, pricing or support."
# the CLI's own family check and redeploy (edge/cli.py hands them over in ``build``, so this module needs no import
# of it): check_family(family) exits on an unknown family; serving(settings) says whom to redeploy, redeploy does it
_HOOKS: dict[str, Callable[..., Any]] = {}


def build(
    check_family: Callable[[str], None],
    serving: Callable[[Any], Any],
    redeploy: Callable[[Any], None],
) -> typer.Typer:
    """The ``experiments`` command group, wired to the CLI's family check and redeploy."""
    _HOOKS.update(check_family=check_family, serving=serving, redeploy=redeploy)
    return app


def _settings():
    from omnicart.settings import get_settings

    return get_settings()


def _redeploy(settings) -> None:
    """Serve reads experiments at start-up: a rolling update makes a start or stop take effect, when it serves."""
    serving = _HOOKS["serving"](settings)
    if serving is not None:
        _HOOKS["redeploy"](serving)


def _family(family: str) -> None:
    _HOOKS["check_family"](family)


@app.command("start")
def start(
    family: Annotated[str, typer.Argument(help=FAMILY_HELP)],
    version: Annotated[str, typer.Option(help="The registered version to test (it becomes the `challenger` alias).")],
    stages: Annotated[
        str | None, typer.Option(help="Canary shares, comma-separated, e.g. 0.05,0.1,0.25,0.5 (default: settings).")
    ] = None,
    mde: Annotated[float | None, typer.Option(help="Smallest relative uplift to plan for, e.g. 0.03.")] = None,
    stage_days: Annotated[int | None, typer.Option(help="Days each canary stage runs at least.")] = None,
    day: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD); default today.")] = None,
) -> None:
    """Start sending a canary share of FAMILY's traffic (sticky per customer; per product for pricing) to VERSION;
    the daily `evaluate_experiments` DAG widens, promotes or rolls back."""
    from omnicart.experiments import lifecycle

    _family(family)
    settings = _settings()
    try:
        shares = tuple(float(s) for s in stages.split(",")) if stages else None
        experiment = lifecycle.start(
            settings,
            family,
            version,
            dt.date.fromisoformat(day) if day else dt.date.today(),
            stages=shares,
            mde=mde,
            stage_days=stage_days,
        )
    except ValueError as exc:  # ExperimentError and invalid options alike
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(
        f"{family}: experiment {experiment.config.name} started, {experiment.share:.0%} of units to version {version}"
    )
    _redeploy(settings)


@app.command("status")
def status(family: Annotated[str, typer.Argument(help=FAMILY_HELP)]) -> None:
    """The family's experiment: stage, share, and every daily decision with its reason."""
    from omnicart.experiments import config as xconfig

    _family(family)
    experiment = xconfig.load(_settings().home_dir, family)
    if experiment is None:
        console.print(f"{family}: no experiment")
        raise typer.Exit(0)
    cfg, st = experiment.config, experiment.state
    console.print(
        f"{family}: {cfg.name} — {st.status}, challenger version {cfg.challenger_version}, share {experiment.share:.0%}"
        f" (stages {', '.join(f'{s:.0%}' for s in cfg.stages)}), started {st.started}"
    )
    table = Table(title="decisions")
    for column in ("day", "action", "share", "reason"):
        table.add_column(column)
    for h in st.history:
        share = f"{h.get('share', 0):.0%} → {h.get('next_share', 0):.0%}" if "share" in h else ""
        table.add_row(str(h.get("day", "")), str(h.get("action", "")), share, str(h.get("reason", "")))
    console.print(table)


@app.command("stop")
def stop(family: Annotated[str, typer.Argument(help=FAMILY_HELP)]) -> None:
    """End the family's experiment: the champion takes all traffic again (the `challenger` alias is removed)."""
    from omnicart.experiments import lifecycle

    _family(family)
    settings = _settings()
    try:
        experiment = lifecycle.stop(settings, family)
    except lifecycle.ExperimentError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"{family}: experiment {experiment.config.name} stopped; the champion serves all traffic")
    _redeploy(settings)
