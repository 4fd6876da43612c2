"""`omnicart bench serving`: PROTOCOLS.md "serving — loopback", in one run on a fresh home.

The platform comes up in a temporary home (simulated shop → lake → features → Feast SQLite online store → a champion
for recommend, pricing and support → Ray Serve on a free loopback port). Then:

- Saturation per endpoint with an open-loop client (asyncio + aiohttp): the offered rate steps up (10, 20, 40, ...
  req/s, a few seconds each, every request scheduled at a fixed time) until the achieved rate falls below 90 % of
  the offered one or a request fails; saturation is the highest achieved rate of successful answers. At half of it,
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
SUPPORT_PARAMS = {"epochs": 1, "max_pairs": 64, "batch_size": 16, "max_val": 40, "onnx": False}
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
    timeout_s: float = 2.0  # a request not answered within this (from its scheduled time) is a timeout
    max_inflight: int = 256  # open connections of the client; a request beyond them waits (and that wait counts)
    refine: int = 2  # bisection steps between the last rate kept up and the first one not
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
    """The highest achieved rate of successful answers over the steps."""
    return max((s.achieved for s in steps), default=0.0)


# --- load generation ---------------------------------------------------------------------------------------------
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
            status = 0
            try:
                async with asyncio.timeout(remaining):
                    method = session.post(url, json=bodies[n % len(bodies)]) if bodies else session.get(url)
                    async with method as response:
                        await response.read()
                        status = response.status
            except (TimeoutError, aiohttp.ClientError, OSError):
                status = 0
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
    """Step the offered rate up until a step does not keep up (or the rates run out), then bisect (in log space,
    ``plan.refine`` times) between the last rate kept up and the first one not: an overloaded step's own achieved
    rate understates the capacity, since the server also works on requests the client has given up on."""
    steps: list[Step] = []
    for rate in rates or plan.rates:
        steps.append(open_loop(url, bodies, rate, plan.step_seconds, headers, plan))
        if not steps[-1].kept_up:
            break
    if steps[-1].kept_up:
        return steps
    low, high = (steps[-2].offered if len(steps) > 1 else 0.0), steps[-1].offered
    for _ in range(plan.refine):
        rate = float(np.sqrt(low * high)) if low > 0 else high / 2
        steps.append(open_loop(url, bodies, rate, plan.step_seconds, headers, plan))
        low, high = (rate, high) if steps[-1].kept_up else (low, rate)
    return steps


async def _closed_loop(
    url: str,
    bodies: Sequence[dict],
    headers: dict[str, str],
    clients: int,
    seconds: float,
    timeout_s: float,
    at: float,
    action: Callable[[], Any],
) -> list[Outcome]:
    """``clients`` loops, each sending its next request when the last one ended; ``action`` runs (in a thread) once
    ``at`` seconds in."""
    import aiohttp

    loop = asyncio.get_running_loop()
    start = loop.time()
    outcomes: list[Outcome] = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client(c: int) -> None:
            n = c
            while loop.time() - start < seconds:
                sent = loop.time() - start
                status = 0
                try:
                    async with asyncio.timeout(timeout_s):
                        async with session.post(url, json=bodies[n % len(bodies)]) as response:
                            await response.read()
                            status = response.status
                except (TimeoutError, aiohttp.ClientError, OSError):
                    status = 0
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


def replica_actors() -> list[Any]:
    """The live Serve replicas of the omnicart app (Ray's state API): name, pid, actor id."""
    from ray.util.state import list_actors

    from serving.app import APP_NAME

    prefix = f"ServeReplica:{APP_NAME}:"
    return [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000) if a.class_name.startswith(prefix)]


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
def _row(model: str, steps: Sequence[Step], half: Step | None = None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "saturation_rps": saturation(steps)}
    # offered→achieved per step, in the order run; "!" marks a step that did not keep up
    row["steps"] = ", ".join(f"{s.offered:.0f}→{s.achieved:.0f}" + ("" if s.kept_up else "!") for s in steps)
    step_errors = Counter()
    for s in steps:
        step_errors.update(s.errors)
    if step_errors:
        row["step_errors"] = dict(step_errors)
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
    row.update(extra)
    return row


def run(settings: Settings, options: BenchOptions) -> BenchResult:
    if options.dataset or options.input:
        raise NotAvailable("serving runs on a simulated shop of its own: no --dataset/--input")
    plan = QUICK if options.quick else FULL
    console = Console(stderr=True)
    say = console.log
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="omnicart-bench-serving-") as tmp:
        home = Path(tmp)
        s = bench_settings(settings, home / "home", plan)
        from omnicart import raycluster

        processes: list[subprocess.Popen] = []
        try:
            stages = build_platform(s, say)
            headers = {"X-API-Key": s.secret("api_key")}
            bodies = request_bodies(s, plan.pool)
            rows.append({"model": "setup", **{f"{k}_s": v for k, v in stages.items()}})

            trivial_port, bare_port = free_port(), free_port()
            trivial = start_subprocess(["trivial", str(trivial_port)], home / "trivial.log")
            processes.append(trivial)
            settings_file = home / "settings.pkl"
            settings_file.write_bytes(pickle.dumps(s))
            bare = start_subprocess(["uvicorn", str(settings_file), str(bare_port)], home / "uvicorn.log")
            processes.append(bare)
            wait_http(f"{s.serve_url}/health", 120)

            rss_before = replica_rss_mb()
            serve_sat: dict[str, float] = {}
            for endpoint in ENDPOINTS:
                url = f"{s.serve_url}{endpoint}"
                say(f"Serve {endpoint}: stepping the offered rate")
                open_loop(url, bodies[endpoint], 5, 1.0, headers, plan)  # warm-up: first answers load lazily
                steps = find_saturation(url, bodies[endpoint], headers, plan)
                serve_sat[endpoint] = saturation(steps)
                half = open_loop(
                    url, bodies[endpoint], max(serve_sat[endpoint] / 2, 1.0), plan.half_seconds, headers, plan
                )
                rows.append(_row(f"serve {endpoint}", steps, half))
            rss_after = replica_rss_mb()

            wait_http(f"http://127.0.0.1:{bare_port}/health", 300, bare)
            say("bare uvicorn /recommend: stepping the offered rate")
            url = f"http://127.0.0.1:{bare_port}/recommend"
            open_loop(url, bodies["/recommend"], 5, 1.0, headers, plan)
            steps = find_saturation(url, bodies["/recommend"], headers, plan)
            bare_sat = saturation(steps)
            half = open_loop(url, bodies["/recommend"], max(bare_sat / 2, 1.0), plan.half_seconds, headers, plan)
            rows.append(_row("uvicorn /recommend (same handler, no Serve)", steps, half))
            stop(bare)

            wait_http(f"http://127.0.0.1:{trivial_port}/", 30, trivial)
            say("load client ceiling against a trivial server")
            steps = find_saturation(f"http://127.0.0.1:{trivial_port}/", [], {}, plan, rates=plan.ceiling_rates)
            ceiling = saturation(steps)
            rows.append(_row("load client ceiling (trivial server)", steps))
            stop(trivial)
            for row in rows:
                if "saturation_rps" in row and not row["model"].startswith("load client"):
                    row["client_bound"] = row["saturation_rps"] >= 0.5 * ceiling

            say("Feast online reads")
            customers = [b["customer_id"] for b in bodies["/recommend"]]
            rows.append(
                {"model": "feast online read (sqlite, in-process)", **feast_reads(s, customers, plan.feast_reads)}
            )

            rows.append(
                {
                    "model": "serve replica RSS",
                    "replicas": len(rss_before),
                    "rss_before_mb": round(sum(rss_before.values()), 1),
                    "rss_after_mb": round(sum(rss_after.values()), 1),
                }
            )

            say(f"kill test: {plan.kill_clients} clients on /recommend, one replica killed")
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
            kill_share = kill.ok / kill.sent if kill.sent else 0.0
            kill_wait = max((o.latency for o in outcomes), default=0.0)
            rows.append(
                {
                    "model": "kill test /recommend",
                    "replicas": len(rss_before),
                    "killed": killed[0] if killed else None,
                    "sent": kill.sent,
                    "success_share": kill_share,
                    "max_wait_s": kill_wait,
                    "errors": kill.errors or None,
                }
            )
        finally:
            for process in processes:
                if process.poll() is None:
                    stop(process)
            raycluster.shutdown()

    feast = next(r for r in rows if r["model"].startswith("feast"))
    serve_rec = next(r for r in rows if r["model"] == "serve /recommend")
    gates = [
        # Absolute targets: the baseline column holds the target, so the ratio is value / target.
        gate(
            "/recommend p99 ms at half saturation",
            serve_rec["p99_ms"] or plan.timeout_s * 1000,
            P99_TARGET_MS,
            1.0,
            higher_is_better=False,
        ),
        gate("/recommend saturation req/s", serve_sat["/recommend"], SATURATION_TARGET, 1.0),
        gate("/price saturation req/s", serve_sat["/price"], SATURATION_TARGET, 1.0),
        gate("/support/answer saturation req/s", serve_sat["/support/answer"], SATURATION_TARGET, 1.0),
        gate("/recommend throughput Serve / uvicorn", serve_sat["/recommend"], bare_sat, SERVE_VS_UVICORN_TARGET),
        gate("kill test success share", kill_share, 1.0, KILL_SUCCESS_TARGET),
        gate("kill test max wait s", kill_wait, KILL_MAX_WAIT_S, 1.0, higher_is_better=False),
    ]
    feast["p99_target_ms (redis profile, not gated on sqlite)"] = FEAST_P99_TARGET_MS
    name = f"simulated shop (customers={plan.customers}, items={plan.items}, days={plan.days})"
    name += " quick" if options.quick else ""
    return name, PROTOCOL, rows, gates


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
