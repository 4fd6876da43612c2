"""`omnicart demo`: start the local services, run the skeleton DAG with Airflow, and show what came out."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from edge import orchestration
from omnicart import lake, schemas
from omnicart.raycluster import JOIN_ENV
from omnicart.schemas import C
from omnicart.settings import Settings, get_settings

DAG_ID = "shop_daily"


@dataclass
class DemoReport:
    ok: bool
    task_states: dict[str, str]
    reports: list[Path] = field(default_factory=list)
    mails: list[Path] = field(default_factory=list)
    curl: str = ""


def example_customer(settings: Settings, day: dt.date) -> str:
    """A customer who bought something in the last days: a good first `curl`."""
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, day - dt.timedelta(days=7), day)
    buyers = events.loc[events[C.event_type] == "purchase", C.customer_id].dropna()
    return str(buyers.value_counts().index[0])


def curl_command(settings: Settings, customer_id: str) -> str:
    return (
        f"curl -s -X POST {settings.serve_url}/recommend -H 'Content-Type: application/json' "
        f'-H \'X-API-Key: {settings.secret("api_key")}\' -d \'{{"customer_id": "{customer_id}", "k": 5}}\''
    )


def run(settings: Settings, *, start_services: bool, console: Console) -> DemoReport:
    from edge import services

    dags = orchestration.dags_folder()
    if start_services:
        # Before anything imports Ray: the DAG's tasks run in this process and join the head that `up` starts.
        os.environ.update(JOIN_ENV)
        with console.status("starting Airflow, Ray + Serve, MLflow, Evidently and the mail sink on 127.0.0.1…"):
            statuses = services.up(settings, dags)
        # DAG tasks run in this process and read their settings from the environment: join the Ray just started.
        os.environ["OMNICART_RAY_ADDRESS"] = services.ray_address(settings)
        get_settings.cache_clear()
        settings = get_settings()
    else:
        statuses = []
    day = settings.sim_end
    with console.status(f"running DAG {DAG_ID} for {day} with Airflow ({settings.sim_days} days of history)…"):
        orchestration.prepare(settings, dags)
        dag_run = orchestration.run_dag(DAG_ID, day, conf={"history_days": settings.sim_days - 1}, dags=dags)
    states = orchestration.task_states(dag_run)

    table = Table(title=f"DAG {DAG_ID}: run {dag_run.run_id} → {dag_run.state}")
    table.add_column("task")
    table.add_column("state")
    for task, state in states.items():
        table.add_row(task, f"[green]{state}[/]" if state == "success" else f"[red]{state}[/]")
    console.print(table)

    reports = sorted(settings.reports_dir.rglob("*.html"))
    mails = sorted(settings.mail_dir.glob("*.eml"))
    customer = example_customer(settings, day)
    curl = curl_command(settings, customer)
    answered = _check_recommend(settings, customer)
    ok = str(dag_run.state) == "success" and answered

    lines = [
        f"data lake:        {settings.lake_dir}",
        f"drift reports:    {', '.join(str(p) for p in reports[-2:]) or 'none'}",
        f"alert mails:      {len(mails)} in {settings.mail_dir}" + (f" (latest {mails[-1].name})" if mails else ""),
    ]
    for s in statuses:
        lines.append(f"{s.name + ':':<17} {s.url}")
    password = services.airflow_admin_password(settings) if start_services else None
    if password:
        lines.append(f"Airflow login:    admin / {password}")
    lines += ["", f"API docs: {settings.serve_url}/docs   Stop everything: omnicart down"]
    console.print(Panel("\n".join(lines), title="omnicart demo " + ("[green]ok[/]" if ok else "[red]failed[/]")))
    console.print("Try it:")
    print(curl)  # plain print: a terminal-width wrap would break copy and paste
    return DemoReport(ok, states, reports, mails, curl)


def _check_recommend(settings: Settings, customer_id: str) -> bool:
    """Whether /recommend answers the printed curl right now."""
    try:
        response = httpx.post(
            f"{settings.serve_url}/recommend",
            json={"customer_id": customer_id, "k": 5},
            headers={"X-API-Key": settings.secret("api_key")},
            timeout=30,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and len(response.json()["items"]) == 5
