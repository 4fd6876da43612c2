"""`omnicart bench serving`: PROTOCOLS.md "serving — loopback", in one run on a fresh home.

The platform comes up in a temporary home (simulated shop → lake → features → Feast SQLite online store → a champion
for recommend, pricing and support → Ray Serve on a free loopback port). Then:

- Saturation per endpoint with an open-loop client (asyncio + aiohttp): the offered rate steps up (10, 20, 40, ...
  req/s, a few seconds each, every request scheduled at a fixed time) until the achieved rate falls below 90 % of
  the offered one or a request fails (then halving or bisecting); saturation is the highest rate a step kept up
  with. First the latency of requests sent one at a time; at half saturation,
  p50/p95/p99 latency counted from each request's *scheduled* send time, so a queue in front of the server shows up
  as latency instead of slowing the client down (coordinated omission), and the errors by status.
- The same handler (``create_api`` over the ``Ingress`` class, instantiated without Serve) under bare uvicorn in a
  subprocess, measured in the same way in the same run: Serve / uvicorn throughput on ``/recommend``.
- The client's own ceiling against a trivial HTTP server in a subprocess: an endpoint near it is client-bound.
- Feast online reads of one customer's ``/recommend`` features (the two reads the service makes per request).
- Serve replica RSS before and after the load; then one replica killed under four closed-loop clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.runner import BenchOptions, BenchResult, NotAvailable, gate
from omnicart.settings import Settings

PROTOCOL = "loopback"
ENDPOINTS = ("/recommend", "/price", "/support/answer")
KEEP_UP = 0.90  # a step keeps up when it achieves this share of the offered rate without a failed request
P99_TARGET_MS = 25.0
SATURATION_TARGET = 100.0
SERVE_VS_UVICORN_TARGET = 0.5
KILL_SUCCESS_TARGET = 0.99
KILL_MAX_WAIT_S = 2.0
FEAST_P99_TARGET_MS = 5.0  # PROTOCOLS' gate for the Redis profile; reported, not gated, on SQLite
SUPPORT_PARAMS = {"epochs": 1, "max_pairs": 64, "batch_size": 16, "max_val": 40}  # ONNX on, as the platform trains it
PRICING_PARAMS = {"n_estimators": 40}


@dataclass(frozen=True)
class Plan:
    """How long and how hard the run pushes; ``QUICK`` is a smoke run a test can afford."""

    customers: int = 1000
    items: int = 60
    days: int = 13
    rates: tuple[float, ...] = (10, 20, 40, 80, 160, 320, 640)
    ceiling_rates: tuple[float, ...] = (160, 320, 640, 1280, 2560, 5120)
    step_seconds: float = 3.0
    half_seconds: float = 5.0
    timeout_s: float = 5.0  # a request not answered within this (from its scheduled time) is a timeout
    max_inflight: int = 256  # open connections of the client; a request beyond them waits (and that wait counts)
    refine: int = 3  # bisection steps between the last rate kept up and the first one not
    halvings: int = 4  # when the first rate is too much: halve it this often at most (10 → 0.625 req/s)
    unloaded_requests: int = 20  # sent one at a time before the steps, for the latency without a queue
    settle_s: float = 30.0  # after an overloaded step, how long to wait at most for the server to be idle again
    feast_reads: int = 300
    kill_seconds: float = 12.0
    kill_clients: int = 4
    pool: int = 200  # request bodies drawn per endpoint (fixed seed)


FULL = Plan()
QUICK = Plan(
    customers=400,
    items=40,
    days=10,
    rates=(10, 40, 160),
    ceiling_rates=(160, 640, 2560),
    refine=1,
    halvings=2,
    unloaded_requests=8,
    step_seconds=1.0,
    half_seconds=1.5,
    feast_reads=50,
    kill_seconds=5.0,
    pool=50,
)


# --- measuring: pure parts -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One request: its scheduled send time and when it ended (both seconds from the step's start), and its HTTP
    status (0: timed out or the connection failed)."""

    scheduled: float
    done: float
    status: int

    @property
    def latency(self) -> float:
        return self.done - self.scheduled

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Step:
    """One rate step (or a closed-loop run, ``offered`` 0) summarised."""

    offered: float
    sent: int
    ok: int
    achieved: float  # successful answers per second over the window in which answers arrived
    errors: dict[str, int] = field(default_factory=dict)  # "timeout" or the HTTP status → count
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None

    @property
    def kept_up(self) -> bool:
        return not self.errors and self.sent > 0 and self.achieved >= KEEP_UP * self.offered


def schedule(rate: float, seconds: float) -> np.ndarray:
    """Send times (seconds from the start) of an open loop at ``rate`` for ``seconds``: evenly spaced, so every run
    offers the same load."""
    if rate <= 0 or seconds <= 0:
        return np.zeros(0)
    return np.arange(int(round(rate * seconds))) / rate


def summarise(offered: float, outcomes: Sequence[Outcome]) -> Step:
    """Achieved rate, error counts and latency percentiles of the successful requests (milliseconds, from the
    scheduled time). The achieved rate is successful answers per second over the step: the scheduled span, or
    longer when the last answer came later than the fastest answer's latency after it (a queue draining). A server
    that keeps up achieves the offered rate; one that falls behind, its own."""
    good = [o for o in outcomes if o.ok]
    errors = Counter("timeout" if o.status == 0 else str(o.status) for o in outcomes if not o.ok)
    if not good:
        return Step(offered, len(outcomes), 0, 0.0, dict(errors))
    first = min(o.scheduled for o in outcomes)
    scheduled_span = len(outcomes) / offered if offered > 0 else 0.0
    drained = max(o.done for o in good) - min(o.latency for o in good) - first
    span = max(scheduled_span, drained)
    achieved = len(good) / span if span > 0 else 0.0
    lat = np.asarray([o.latency for o in good]) * 1000.0
    p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
    worst = float(max(o.latency for o in outcomes) * 1000.0)
    return Step(offered, len(outcomes), len(good), achieved, dict(errors), p50, p95, p99, worst)


def saturation(steps: Sequence[Step]) -> float:
    """The highest rate sustained: the highest achieved rate of a step that kept up; when none did, the highest
    achieved by any (what an overloaded server still answered)."""
    kept = [s.achieved for s in steps if s.kept_up]
    return max(kept or [s.achieved for s in steps], default=0.0)


# --- load generation ---------------------------------------------------------------------------------------------
async def _send(session: Any, url: str, body: Any | None, timeout_s: float) -> int:
    """One request (POST ``body``, or GET without one) within ``timeout_s``: its status, 0 when it got none."""
    import aiohttp

    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body) if body is not None else session.get(url) as response:
                await response.read()
                return response.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0


async def _open_loop(
    url: str,
    bodies: Sequence[dict],
    rate: float,
    seconds: float,
    headers: dict[str, str],
    timeout_s: float,
    max_inflight: int,
) -> list[Outcome]:
    import aiohttp

    times = schedule(rate, seconds)
    connector = aiohttp.TCPConnector(limit=max_inflight, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05 + 2e-5 * len(times)  # the tasks are made before the first send

        async def one(n: int, at: float) -> Outcome:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            remaining = max(0.001, start + at + timeout_s - loop.time())
            status = await _send(session, url, bodies[n % len(bodies)] if bodies else None, remaining)
            return Outcome(float(at), loop.time() - start, status)

        return list(await asyncio.gather(*(one(n, float(at)) for n, at in enumerate(times))))


def open_loop(
    url: str, bodies: Sequence[dict], rate: float, seconds: float, headers: dict[str, str], plan: Plan
) -> Step:
    """Offer ``rate`` req/s for ``seconds`` (POST the bodies in turn; GET without bodies) and summarise."""
    outcomes = asyncio.run(_open_loop(url, bodies, rate, seconds, headers, plan.timeout_s, plan.max_inflight))
    return summarise(rate, outcomes)


def find_saturation(
    url: str, bodies: Sequence[dict], headers: dict[str, str], plan: Plan, rates: Sequence[float] | None = None
) -> list[Step]:
    """Step the offered rate up until a step does not keep up (or the rates run out); when even the first does not,
    halve it (``plan.halvings`` times at most) until one does. Then bisect (in log space, ``plan.refine`` times)
    between the last rate kept up and the first one not: an overloaded step's own achieved rate understates the
    capacity, since the server also works on requests the client has given up on."""
    steps: list[Step] = []

    def step(rate: float) -> bool:
        steps.append(open_loop(url, bodies, rate, plan.step_seconds, headers, plan))
        if not steps[-1].kept_up:  # the server may still be working off what the client gave up on
            settle(url, bodies, headers, plan)
        return steps[-1].kept_up

    for rate in rates or plan.rates:
        if not step(rate):
            break
    if steps[-1].kept_up:
        return steps
    low, high = (steps[-2].offered if len(steps) > 1 else 0.0), steps[-1].offered
    for _ in range(plan.halvings if low == 0 else 0):
        if step(high / 2):
            low = high / 2
            break
        high /= 2
    for _ in range(plan.refine if low > 0 else 0):
        rate = float(np.sqrt(low * high))
        low, high = (rate, high) if step(rate) else (low, rate)
    return steps


def settle(url: str, bodies: Sequence[dict], headers: dict[str, str], plan: Plan) -> bool:
    """Wait (``plan.settle_s`` at most) until one request sent alone is answered within the timeout: after an
    overloaded step, the queue of abandoned requests has drained and the next step starts from an idle server."""
    deadline = time.monotonic() + plan.settle_s
    while time.monotonic() < deadline:
        if unloaded(url, bodies, headers, 1, plan.timeout_s).ok:
            return True
    return False


def unloaded(url: str, bodies: Sequence[dict], headers: dict[str, str], n: int, timeout_s: float) -> Step:
    """One client, one request at a time: the latency with no queue at all."""
    outcomes = asyncio.run(_closed_loop(url, bodies, headers, 1, float("inf"), timeout_s, 0.0, lambda: None, n))
    return summarise(0.0, outcomes)


async def _closed_loop(
    url: str,
    bodies: Sequence[dict],
    headers: dict[str, str],
    clients: int,
    seconds: float,
    timeout_s: float,
    at: float,
    action: Callable[[], Any],
    max_requests: int | None = None,
) -> list[Outcome]:
    """``clients`` loops, each sending its next request when the last one ended, for ``seconds`` or until
    ``max_requests`` were sent; ``action`` runs (in a thread) once ``at`` seconds in."""
    import aiohttp

    loop = asyncio.get_running_loop()
    start = loop.time()
    outcomes: list[Outcome] = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client(c: int) -> None:
            n = c
            while loop.time() - start < seconds and (max_requests is None or n < max_requests):
                sent = loop.time() - start
                status = await _send(session, url, bodies[n % len(bodies)] if bodies else None, timeout_s)
                outcomes.append(Outcome(sent, loop.time() - start, status))
                n += clients

        async def trigger() -> None:
            await asyncio.sleep(at)
            await asyncio.to_thread(action)

        await asyncio.gather(trigger(), *(client(c) for c in range(clients)))
    return outcomes


# --- the platform ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_settings(settings: Settings, home: Path, plan: Plan) -> Settings:
    """A fresh demo platform in ``home``: an in-process Ray and SQLite MLflow (never a cluster the user runs), Serve
    on a free loopback port, a small clean simulated shop."""
    return Settings(
        home=home,
        mode="demo",
        seed=settings.seed,
        sim_customers=plan.customers,
        sim_items=plan.items,
        sim_days=plan.days,
        drift_kind="none",
        drift_day=None,
        host="127.0.0.1",
        serve_port=free_port(),
        ray_address=None,
        mlflow_tracking_uri=None,
        pseudonym_key="bench-serving-pseudonym-key",
        api_key="bench-serving-api-key",
        use_gpu="no",
    )


def build_platform(settings: Settings, say: Callable[[str], None]) -> dict[str, float]:
    """Ingest, build and materialize features, train a champion per family and deploy; seconds per stage."""
    from feature_repo.apply import apply_and_materialize
    from omnicart import registry
    from omnicart.features import build_feature_days, build_omnichannel_days
    from omnicart.ingest.daily import land_and_ingest
    from serving.app import deploy
    from training.run import train_family

    first, day = settings.sim_start, settings.sim_end
    stages: dict[str, float] = {}
    started = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal started
        stages[name] = round(time.perf_counter() - started, 1)
        say(f"{name}: {stages[name]} s")
        started = time.perf_counter()

    land_and_ingest(settings, first, day)
    stage("ingest")
    build_feature_days(settings, first, day)
    build_omnichannel_days(settings, first, day)
    apply_and_materialize(settings, first, day)
    stage("features")
    for family, params in (("recommend", None), ("pricing", PRICING_PARAMS), ("support", SUPPORT_PARAMS)):
        train_family(settings, family, day, params=params)
        if registry.champion_version(settings, family) is None:
            raise RuntimeError(f"no {family} champion after training; the serving benchmark needs one per family")
        stage(f"train {family}")
    deploy(settings)
    stage("deploy")
    return stages


def request_bodies(settings: Settings, size: int) -> dict[str, list[dict]]:
    """Per endpoint, ``size`` bodies drawn with a fixed seed: known customers (buyers of the last week) with k = 10;
    catalog items to price; the questions of past support tickets."""
    from omnicart import lake, schemas
    from omnicart.schemas import C

    rng = np.random.default_rng(0)
    day = settings.sim_end
    events = lake.read_table(settings.lake_dir, schemas.EVENTS, day - dt.timedelta(days=7), day)
    customers = np.sort(events.loc[events[C.event_type] == "purchase", C.customer_id].dropna().unique())
    items = np.sort(lake.read_table(settings.lake_dir, schemas.ITEMS)[C.item_id].dropna().unique())
    questions = np.sort(lake.read_table(settings.lake_dir, schemas.SUPPORT)[C.question].dropna().unique())
    if not len(customers) or not len(items) or not len(questions):
        raise RuntimeError("the simulated shop has no buyers, items or support questions to ask about")
    return {
        "/recommend": [{"customer_id": str(c), "k": 10} for c in rng.choice(customers, size)],
        "/price": [{"product_id": str(i)} for i in rng.choice(items, size)],
        "/support/answer": [{"question": str(q)} for q in rng.choice(questions, size)],
    }


def feast_reads(settings: Settings, customers: Sequence[str], n: int) -> dict[str, float]:
    """p50/p99 (ms) of the online reads ``/recommend`` makes for a customer, in this process: the customer's
    segment and recent items, then the customer × channel windows; and of both together."""
    from omnicart.featurestore import feature_store, online_features, online_rows
    from omnicart.recommend.predictor import CUSTOMER_REFS
    from omnicart.schemas import ALL_CHANNELS, C
    from serving.recommend import FEATURE_REFS

    store = feature_store(settings)
    customer_view, channel_view, both = [], [], []
    for k in range(n + 5):
        cid = customers[k % len(customers)]
        t0 = time.perf_counter()
        online_features(store, FEATURE_REFS, C.customer_id, [cid])
        t1 = time.perf_counter()
        online_rows(store, CUSTOMER_REFS, [{C.customer_id: cid, C.channel: ALL_CHANNELS}])
        t2 = time.perf_counter()
        if k >= 5:  # the first reads open the store and warm its caches
            customer_view.append(t1 - t0)
            channel_view.append(t2 - t1)
            both.append(t2 - t0)
    out = {}
    for name, values in (("customer", customer_view), ("customer_channel", channel_view), ("per_request", both)):
        p50, p99 = np.percentile(np.asarray(values) * 1000.0, [50, 99])
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = float(p50), float(p99)
    return out


@dataclass(frozen=True)
class Replica:
    name: str  # the actor's name in Ray's "serve" namespace
    pid: int


def replica_actors() -> list[Replica]:
    """The live Serve replicas of the omnicart app. From the GCS actor table: ``ray.util.state.list_actors`` asks
    the dashboard, which the embedded Ray runs without (and which would find other Ray instances on the machine)."""
    from ray._private import state

    from serving.app import APP_NAME

    prefix = f"SERVE_REPLICA::{APP_NAME}#"
    return [
        Replica(a["Name"], int(a["Pid"]))
        for a in state.actors().values()
        if a.get("State") == "ALIVE" and str(a.get("Name") or "").startswith(prefix) and a.get("Pid")
    ]


def replica_rss_mb() -> dict[str, float]:
    import psutil

    out = {}
    for actor in replica_actors():
        with contextlib.suppress(psutil.Error):
            out[actor.name] = psutil.Process(actor.pid).memory_info().rss / 2**20
    return out


def kill_one_replica() -> str:
    """ray.kill one live replica (Serve starts a new one); its actor name."""
    import ray

    actors = replica_actors()
    if not actors:
        raise RuntimeError("no live Serve replica to kill")
    victim = sorted(actors, key=lambda a: a.name)[0]
    ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    return victim.name


def wait_http(url: str, seconds: float, process: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before answering {url}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def start_subprocess(args: list[str], log: Path) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serving", *args], cwd=root, env=env, stdout=out, stderr=out
        )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# --- subprocess entry points: bare uvicorn over the same backend, and a trivial server for the client ceiling ----
def serve_bare(settings_file: Path, port: int) -> None:
    """The Serve app's handler without Serve: ``create_api`` over one instance of the class ``Ingress`` wraps."""
    import uvicorn

    from serving.app import Ingress, create_api

    settings = pickle.loads(settings_file.read_bytes())
    backend = Ingress.func_or_class.__bases__[0](settings)  # the user class under Serve's ingress wrapper
    uvicorn.run(create_api(lambda: backend), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_trivial(port: int, service_ms: float = 0.0) -> None:
    """A keep-alive HTTP/1.1 server answering every request with a fixed 2-byte JSON body: about as fast as a
    server in Python gets, so the client's rate against it is the client's ceiling. With ``service_ms``, requests
    are served one at a time taking that long each: a server of known capacity (1000 / service_ms req/s)."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> None:
        one_at_a_time = asyncio.Lock()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if length:
                        await reader.readexactly(length)
                    if service_ms > 0:
                        async with one_at_a_time:
                            await asyncio.sleep(service_ms / 1000.0)
                    writer.write(reply)
                    await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- the benchmark -----------------------------------------------------------------------------------------------
def _row(model: str, steps: Sequence[Step], half: Step | None = None, alone: Step | None = None) -> dict[str, Any]:
    """One measured server: its saturation and steps; the latency one at a time and at half saturation."""
    row: dict[str, Any] = {"model": model, "saturation_rps": saturation(steps)}
    # offered→achieved per step, in the order run; "!" marks a step that did not keep up
    row["steps"] = ", ".join(f"{s.offered:.3g}→{s.achieved:.3g}" + ("" if s.kept_up else "!") for s in steps)
    step_errors: Counter[str] = Counter()
    for s in steps:
        step_errors.update(s.errors)
    row["step_errors"] = dict(step_errors) or None
    if alone is not None:
        row.update(unloaded_p50_ms=alone.p50_ms, unloaded_p99_ms=alone.p99_ms, unloaded_errors=alone.errors or None)
    if half is not None:
        row.update(
            half_rate=half.offered,
            p50_ms=half.p50_ms,
            p95_ms=half.p95_ms,
            p99_ms=half.p99_ms,
            half_ok=half.ok,
            half_sent=half.sent,
            half_errors=half.errors or None,
        )
    row["load_average"] = round(os.getloadavg()[0], 1)  # the machine is shared: how busy it was
    return row


@dataclass
class Figures:
    """What the gates read."""

    saturation: dict[str, float] = field(default_factory=dict)  # Serve, per endpoint
    recommend_p99_ms: float | None = None
    bare_saturation: float = 0.0
    kill_share: float = 0.0
    kill_max_wait_s: float = 0.0


def _saturate(
    label: str, url: str, bodies: Sequence[dict], headers: dict[str, str], plan: Plan, say: Callable[[str], None]
) -> tuple[list[Step], Step, Step]:
    """Warm up; the latency one at a time; saturation; then a run at half of it."""
    say(f"{label}: stepping the offered rate")
    unloaded(url, bodies, headers, 10, plan.timeout_s)  # warm-up: the first answers load models and open stores
    alone = unloaded(url, bodies, headers, plan.unloaded_requests, plan.timeout_s)
    steps = find_saturation(url, bodies, headers, plan)
    settle(url, bodies, headers, plan)
    half_rate = saturation(steps) / 2
    half = open_loop(url, bodies, half_rate, plan.half_seconds, headers, plan) if half_rate > 0 else Step(0, 0, 0, 0.0)
    say(f"{label}: saturation {saturation(steps):.1f} req/s; at half, p99 {_fmt_ms(half.p99_ms)}")
    return steps, half, alone


def _fmt_ms(value: float | None) -> str:
    return "none answered" if value is None else f"{value:.1f} ms"


def measure(s: Settings, plan: Plan, workdir: Path, say: Callable[[str], None]) -> tuple[list[dict], Figures]:
    """Every measurement on a platform that is up (Serve deployed with its champions); rows and gate figures."""
    headers = {"X-API-Key": s.secret("api_key")}
    bodies = request_bodies(s, plan.pool)
    rows: list[dict[str, Any]] = []
    fig = Figures()
    trivial_port, bare_port = free_port(), free_port()
    settings_file = workdir / "settings.pkl"
    settings_file.write_bytes(pickle.dumps(s))
    # the bare server loads its champions (and precomputes rankings) before anything is measured: that start-up
    # would otherwise take CPU from the Serve steps; then it idles until its turn
    bare = start_subprocess(["uvicorn", str(settings_file), str(bare_port)], workdir / "uvicorn.log")
    trivial = start_subprocess(["trivial", str(trivial_port)], workdir / "trivial.log")
    try:
        wait_http(f"http://127.0.0.1:{bare_port}/health", 300, bare)
        wait_http(f"{s.serve_url}/health", 120)
        rss_before = replica_rss_mb()
        for endpoint in ENDPOINTS:
            url = f"{s.serve_url}{endpoint}"
            steps, half, alone = _saturate(f"Serve {endpoint}", url, bodies[endpoint], headers, plan, say)
            fig.saturation[endpoint] = saturation(steps)
            if endpoint == "/recommend":
                fig.recommend_p99_ms = half.p99_ms
            rows.append(_row(f"serve {endpoint}", steps, half, alone))
        rss_after = replica_rss_mb()

        url = f"http://127.0.0.1:{bare_port}/recommend"
        steps, half, alone = _saturate("uvicorn /recommend", url, bodies["/recommend"], headers, plan, say)
        fig.bare_saturation = saturation(steps)
        rows.append(_row("uvicorn /recommend (same handler, no Serve)", steps, half, alone))
        stop(bare)

        wait_http(f"http://127.0.0.1:{trivial_port}/", 30, trivial)
        say("load client ceiling against a trivial server")
        steps = find_saturation(f"http://127.0.0.1:{trivial_port}/", [], {}, plan, rates=plan.ceiling_rates)
        ceiling = saturation(steps)
        rows.append(_row("load client ceiling (trivial server)", steps))
        stop(trivial)
    finally:
        for process in (bare, trivial):
            if process.poll() is None:
                stop(process)
    for row in rows:  # an endpoint within half the client's own ceiling is measured, not the client
        if not row["model"].startswith("load client"):
            row["client_bound"] = row["saturation_rps"] >= 0.5 * ceiling

    say("Feast online reads")
    customers = [b["customer_id"] for b in bodies["/recommend"]]
    feast = feast_reads(s, customers, plan.feast_reads)
    rows.append(
        {"model": "feast online read (sqlite, in-process)", **feast, "p99_target_ms_redis": FEAST_P99_TARGET_MS}
    )
    rows.append(
        {
            "model": "serve replica RSS",
            "replicas": len(rss_before),
            "rss_before_mb": round(sum(rss_before.values()), 1),
            "rss_after_mb": round(sum(rss_after.values()), 1),
        }
    )

    say(f"kill test: {plan.kill_clients} clients on /recommend, one of {len(replica_actors())} replicas killed")
    killed: list[str] = []
    outcomes = asyncio.run(
        _closed_loop(
            f"{s.serve_url}/recommend",
            bodies["/recommend"],
            headers,
            plan.kill_clients,
            plan.kill_seconds,
            plan.kill_seconds,  # a request's own limit: long enough to see how long it really waits
            plan.kill_seconds / 3,
            lambda: killed.append(kill_one_replica()),
        )
    )
    kill = summarise(0.0, outcomes)
    fig.kill_share = kill.ok / kill.sent if kill.sent else 0.0
    fig.kill_max_wait_s = max((o.latency for o in outcomes), default=0.0)
    rows.append(
        {
            "model": "kill test /recommend",
            "replicas": len(rss_before),
            "killed": killed[0] if killed else None,
            "sent": kill.sent,
            "success_share": fig.kill_share,
            "max_wait_s": fig.kill_max_wait_s,
            "errors": kill.errors or None,
        }
    )
    return rows, fig


def gates(fig: Figures, plan: Plan) -> list[dict[str, Any]]:
    """The PROTOCOLS gates. Absolute targets put the target in the baseline column (ratio = value / target)."""
    p99 = fig.recommend_p99_ms if fig.recommend_p99_ms is not None else plan.timeout_s * 1000  # nothing answered
    return [
        gate("/recommend p99 ms at half saturation", p99, P99_TARGET_MS, 1.0, higher_is_better=False),
        *(gate(f"{e} saturation req/s", fig.saturation.get(e, 0.0), SATURATION_TARGET, 1.0) for e in ENDPOINTS),
        gate(
            "/recommend throughput Serve / uvicorn",
            fig.saturation.get("/recommend", 0.0),
            fig.bare_saturation,
            SERVE_VS_UVICORN_TARGET,
        ),
        gate("kill test success share", fig.kill_share, 1.0, KILL_SUCCESS_TARGET),
        gate("kill test max wait s", fig.kill_max_wait_s, KILL_MAX_WAIT_S, 1.0, higher_is_better=False),
    ]


def run(settings: Settings, options: BenchOptions) -> BenchResult:
    if options.dataset or options.input:
        raise NotAvailable("serving runs on a simulated shop of its own: no --dataset/--input")
    from omnicart import raycluster

    plan = QUICK if options.quick else FULL
    say = Console(stderr=True).log
    with tempfile.TemporaryDirectory(prefix="omnicart-bench-serving-") as tmp:
        s = bench_settings(settings, Path(tmp) / "home", plan)
        try:
            stages = build_platform(s, say)
            rows, fig = measure(s, plan, Path(tmp), say)
        finally:
            raycluster.shutdown()
    rows.insert(0, {"model": "setup", **{f"{k}_s": v for k, v in stages.items()}})
    name = f"simulated shop (customers={plan.customers}, items={plan.items}, days={plan.days})"
    return name + (" quick" if options.quick else ""), PROTOCOL, rows, gates(fig, plan)


def main(argv: Sequence[str]) -> None:
    """``python -m benchmarks.serving uvicorn SETTINGS_PICKLE PORT`` or ``... trivial PORT [SERVICE_MS]`` (the
    run's helper servers)."""
    if argv[:1] == ["uvicorn"] and len(argv) == 3:
        serve_bare(Path(argv[1]), int(argv[2]))
    elif argv[:1] == ["trivial"] and len(argv) in (2, 3):
        serve_trivial(int(argv[1]), float(argv[2]) if len(argv) == 3 else 0.0)
    else:
        raise SystemExit(main.__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
