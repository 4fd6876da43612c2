"""The ``omnicart`` command: run the demo, start and stop the local services, manage models, run benchmarks."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge import experiments_cli
from omnicart.schemas import FAMILIES, REGISTERED_MODELS
from omnicart.settings import Settings, get_settings

app = typer.Typer(
    help="omnicart — the MLOps platform for e-commerce AI. Start with `omnicart demo`.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
models_app = typer.Typer(help="Inspect, promote and roll back registered models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()


def _settings() -> Settings:
    return get_settings()


def _print_services(statuses) -> None:
    table = Table(title="services (all on loopback)")
    for column in ("service", "url", "state", "log"):
        table.add_column(column)
    for s in statuses:
        table.add_row(s.name, s.url, "[green]running[/]" if s.running else "[red]stopped[/]", str(s.log))
    console.print(table)


@app.command()
def up(
    only: Annotated[
        list[str] | None, typer.Option(help="Start only these: airflow, ray, mlflow, evidently, mail.")
    ] = None,
) -> None:
    """Start Airflow, Ray with Serve, the MLflow UI, the Evidently UI and the mail sink on 127.0.0.1."""
    from edge import orchestration, services

    settings = _settings()
    with console.status("starting services (Airflow takes a minute the first time)…"):
        statuses = services.up(settings, orchestration.dags_folder(), only=only)
    _print_services(statuses)
    password = services.airflow_admin_password(settings)
    if password:
        console.print(f"Airflow UI login: [bold]admin[/] / [bold]{password}[/]")


@app.command()
def down() -> None:
    """Stop every service that `omnicart up` started."""
    from edge import services

    stopped = services.down(_settings())
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def status() -> None:
    """Show which local services run, and where."""
    from edge import services

    _print_services(services.status(_settings()))


@app.command()
def demo(
    services_: Annotated[
        bool, typer.Option("--services/--no-services", help="Start the local services (needed for the final curl).")
    ] = True,
) -> None:
    """Run the main job end to end on the embedded default: simulate → ingest → Feast → Ray Train → MLflow →
    Ray Serve → Evidently → email. Safe to run again."""
    from edge import demo as demo_mod

    report = demo_mod.run(_settings(), start_services=services_, console=console)
    raise typer.Exit(0 if report.ok else 1)


FAMILY_HELP = f"Model family: {', '.join(FAMILIES)}."


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        console.print(f"[red]unknown model family {family!r}; known: {', '.join(FAMILIES)}[/]")
        raise typer.Exit(2)


MODEL_HELP = f"Registered model: {', '.join(REGISTERED_MODELS)}."


def _check_model(name: str) -> None:
    if name not in REGISTERED_MODELS:
        console.print(f"[red]unknown registered model {name!r}; known: {', '.join(REGISTERED_MODELS)}[/]")
        raise typer.Exit(2)


@models_app.command("list")
def models_list(family: Annotated[str, typer.Argument(help=MODEL_HELP)] = "recommend") -> None:
    """List a family's (or the federated model's) registered versions and which one is champion."""
    from omnicart import registry

    _check_model(family)
    settings = _settings()
    mlc = registry.client(settings)
    champion = registry.champion_version(settings, family)
    table = Table(title=f"{registry.model_name(family)}")
    for column in ("version", "aliases", "run", "created"):
        table.add_column(column)
    for mv in sorted(mlc.search_model_versions(f"name='{registry.model_name(family)}'"), key=lambda v: int(v.version)):
        aliases = ", ".join(mv.aliases) or ("champion" if str(mv.version) == champion else "")
        created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000).isoformat(timespec="seconds")
        table.add_row(str(mv.version), aliases, mv.run_id, created)
    console.print(table)


def _serving(settings: Settings) -> Settings | None:
    """The settings to redeploy with after a promotion or rollback, or None when nothing serves on serve_url.

    A process already in a Ray cluster (the in-process platform) deploys there; otherwise it joins the configured
    cluster or the head that `omnicart up` started, where the Serve app runs."""
    from edge import services

    if not services.port_open(settings.host, settings.serve_port):
        return None
    ray = sys.modules.get("ray")
    if (ray is not None and ray.is_initialized()) or settings.ray_address:
        return settings
    from omnicart.raycluster import JOIN_ENV

    os.environ.update(JOIN_ENV)  # before Ray is imported: its client reads them at import
    return settings.model_copy(update={"ray_address": services.ray_address(settings)})


def _redeploy(settings: Settings) -> None:
    """Serve's rolling update to the champions the registry names now: replicas are replaced one at a time."""
    from serving.app import deploy

    deploy(settings)  # no status spinner of its own: train's is still showing
    console.print(f"redeployed {settings.serve_url} with the current champions")


app.add_typer(experiments_cli.build(_check_family, _serving, _redeploy), name="experiments")


@models_app.command("rollback")
def models_rollback(family: Annotated[str, typer.Argument(help=MODEL_HELP)]) -> None:
    """Point `champion` back at the previous champion and, when the platform serves, redeploy the Serve app
    (a rolling update: replicas are replaced one at a time, so requests keep being answered)."""
    from omnicart import registry

    _check_model(family)
    settings = _settings()
    try:
        version = registry.rollback(settings, family)
    except LookupError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"{family}: champion is now version {version}")
    serving = _serving(settings)
    if serving is not None:
        _redeploy(serving)


@app.command()
def train(
    family: Annotated[str, typer.Argument(help=FAMILY_HELP)],
    as_of: Annotated[
        str | None, typer.Option(help="Train on data before this day (YYYY-MM-DD); default: the last day.")
    ] = None,
) -> None:
    """Train one family as a Ray Train job, evaluate it against the champion and promote it if it wins; a promoted
    champion is deployed at once when the platform serves (on the platform's Ray cluster, where it trains too)."""
    from training.run import train_family

    _check_family(family)
    settings = _settings()
    day = dt.date.fromisoformat(as_of) if as_of else settings.sim_end
    serving = _serving(settings)
    with console.status(f"training {family} as of {day}…"):
        outcome = train_family(serving or settings, family, day, deploy=_redeploy if serving else None)
    console.print_json(data=outcome.to_dict())


federated_app = typer.Typer(help="Federated training: the data owners' files.", no_args_is_help=True)
app.add_typer(federated_app, name="federated")


@federated_app.command("owners")
def federated_owners(
    dataset: Annotated[str, typer.Option(help="The public dataset whose stores become owners: dominicks_beer.")],
    stores: Annotated[int | None, typer.Option(help="Only the first N stores (by number).")] = None,
) -> None:
    """Write each store of a public dataset as its own data owner's file (in `federated_owners_dir`), standing in
    for the owners' sites; the `train_federated` DAG trains over them."""
    from benchmarks.runner import datasets_dir
    from omnicart.datasets import dominicks
    from omnicart.federated.owners import dominicks_owners

    if dataset != dominicks.NAME:
        console.print(f"[red]owners can be cut from --dataset {dominicks.NAME} only (got {dataset!r})[/]")
        raise typer.Exit(2)
    root = datasets_dir() / dominicks.NAME
    if not dominicks.available(root):
        console.print(f"[red]{dominicks.NAME} is not in {root}[/]")
        raise typer.Exit(1)
    settings = _settings()
    with console.status(f"writing {dominicks.NAME}'s stores as owners…"):
        written = dominicks_owners(root, settings.owners_dir, stores)
    console.print(f"{len(written)} owner file(s) in {settings.owners_dir}")


@app.command("import")
def import_(
    mapping: Annotated[Path, typer.Option("--mapping", help="YAML mapping onto the canonical schema.", exists=True)],
    source_path: Annotated[Path | None, typer.Option(help="The file to import (default: the mapping's own).")] = None,
    limit: Annotated[int | None, typer.Option(help="Read only the first N records of each file.")] = None,
) -> None:
    """Import a shop's files through a column mapping: validate, quarantine bad rows, pseudonymise, write the lake."""
    from omnicart.ingest import importer

    try:
        with console.status(f"importing {mapping}…"):
            report = importer.import_file(_settings(), mapping, source_path, limit=limit)
    except importer.INPUT_ERRORS as exc:
        console.print(f"[red]import failed, nothing written:[/] {exc}")
        raise typer.Exit(1) from exc
    for line in importer.summary_lines(report):
        console.print(line)


@app.command()
def erase(
    email: Annotated[str | None, typer.Option(help="The customer's email.")] = None,
    phone: Annotated[str | None, typer.Option(help="The customer's phone number.")] = None,
    customer_id: Annotated[str | None, typer.Option(help="The customer's id.")] = None,
) -> None:
    """Erase a customer everywhere (lake, landing, Feast offline and online, support and prediction logs, model
    artefacts in MLflow) across all linked identifiers; when the platform serves, redeploy so that replicas load the
    rewritten artefacts."""
    from omnicart.privacy.erasure import erase as erase_customer

    if not any((email, phone, customer_id)):
        console.print("[red]name the customer with --email, --phone or --customer-id[/]")
        raise typer.Exit(2)
    settings = _settings()
    report = erase_customer(settings, email=email, phone=phone, customer_id=customer_id)
    console.print(
        f"erasure {report.erasure_id}: {len(report.resolved_ids)} linked id(s), {report.total_rows} rows "
        f"in {report.partitions_rewritten} partitions, {report.online_rows_removed} online rows removed"
    )
    for table, rows in sorted({**report.rows_removed, **report.artifact_rows_removed}.items()):
        console.print(f"  {table}: {rows}")
    if report.retrain:
        console.print(f"trained on removed rows (their next training leaves them out): {', '.join(report.retrain)}")
    if report.artifact_rows_removed and (serving := _serving(settings)) is not None:
        _redeploy(serving)  # the replicas hold the artefacts they loaded at start


BENCHMARKS = (
    "recommend",
    "support",
    "pricing",
    "identity",
    "drift",
    "serving",
    "feast_online",
    "experiments",
    "offpolicy",
    "scale",
    "federated",
)


@app.command("channel-report")
def channel_report(
    day: Annotated[str, typer.Option(help="The day to report (YYYY-MM-DD).")],
) -> None:
    """Release a day's per-channel report (buying customers, orders, revenue) with differential privacy, spending
    the day's ε budget once (the `ingest_omnichannel` DAG does it daily); a release beyond the budget is refused."""
    from omnicart.privacy.dp import BudgetAccountant, BudgetExceededError
    from omnicart.privacy.reports import budget_dataset, release_channel_report

    settings = _settings()
    try:
        when = dt.date.fromisoformat(day)
    except ValueError as exc:
        console.print(f"[red]--day: {exc}[/]")
        raise typer.Exit(2) from exc
    try:
        path = release_channel_report(settings, when)
    except BudgetExceededError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    accountant = BudgetAccountant.for_settings(settings, default_budget=settings.dp_report_epsilon)
    dataset = budget_dataset(when)
    console.print(f"{path} (ε spent {accountant.spent(dataset):g} of {accountant.budget(dataset):g})")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Folder for interactions.parquet and items.parquet.")],
    purchases: Annotated[float, typer.Option(help="Millions of purchase lines (bench scale's sizing rule).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulator.")] = 0,
) -> None:
    """Write a simulated shop in the canonical input format, e.g. for `omnicart bench recommend --input`: about
    PURCHASES million purchase lines over 56 days, with customers and items growing as in `bench scale`."""
    from benchmarks import scale

    try:
        lvl = scale.level(int(round(purchases * 1e6)))
    except ValueError as exc:
        console.print(f"[red]--purchases:[/] {exc}")
        raise typer.Exit(2) from exc
    settings = scale.shop_settings(_settings(), lvl, out, seed)  # the simulator writes nothing into its home
    with console.status(f"simulating {lvl.customers:,} customers and {lvl.items:,} items over {lvl.days} days…"):
        rows = scale.write_canonical(settings, out)
    console.print(
        f"wrote {out / 'interactions.parquet'} ({rows['lines']:,} purchase lines, {rows['customers']:,} customers, "
        f"{settings.sim_start:%Y-%m-%d} to {settings.sim_end:%Y-%m-%d}) "
        f"and {out / 'items.parquet'} ({rows['items']:,} items)"
    )


@app.command()
def bench(
    family: Annotated[str, typer.Argument(help=f"One of: {', '.join(BENCHMARKS)}.")],
    dataset: Annotated[str | None, typer.Option(help="A public dataset in ../shared/datasets.")] = None,
    input: Annotated[Path | None, typer.Option("--input", help="Canonical input file (CSV or Parquet).")] = None,
    items: Annotated[Path | None, typer.Option(help="Canonical items file.")] = None,
    split: Annotated[str | None, typer.Option(help="Temporal cut (YYYY-MM-DD) for --input.")] = None,
    protocol: Annotated[str | None, typer.Option(help="Protocol variant, e.g. reqa or intent.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulator and of model training.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the PROTOCOLS.md JSON here.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A short smoke run (serving).")] = False,
    levels: Annotated[
        str | None, typer.Option(help="Sizes in millions of purchase events, e.g. 0.05,0.2 (scale; default 0.25,1,4).")
    ] = None,
    time_limit: Annotated[
        float | None, typer.Option(help="Seconds one family may take at one level (scale); past it, a failed level.")
    ] = None,
    families: Annotated[
        str | None, typer.Option(help="Families to run, e.g. recommend,support (scale; default all three).")
    ] = None,
) -> None:
    """Run a benchmark side by side with its baselines (see PROTOCOLS.md); prints a table, gates and ratios."""
    from benchmarks import runner

    if family not in BENCHMARKS:
        console.print(f"[red]unknown benchmark {family!r}[/]; choose one of {', '.join(BENCHMARKS)}")
        raise typer.Exit(2)
    try:
        options = runner.BenchOptions(dataset, input, items, split, protocol, seed, quick, levels, time_limit, families)
        result = runner.run(_settings(), family, options)
    except runner.NotAvailable as exc:
        console.print(f"[yellow]{exc}[/]")
        raise typer.Exit(2) from exc
    runner.print_result(result, console)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_path}")
    raise typer.Exit(0 if all(g["pass"] for g in result["gates"]) else 1)


def main() -> None:  # pragma: no cover - console-script shim
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
