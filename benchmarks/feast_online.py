"""Feast online read of one customer's ``/recommend`` features: Redis (the production profile) against SQLite (the
embedded default), in the same run on the same materialised days.

``omnicart bench feast_online``: a small simulated shop is ingested and its features built on a fresh home, then
materialised into both online stores; each store answers the reads ``/recommend`` makes per request (the customer's
segment and recent items, and the customer × channel windows the ranker reads) ``READS`` times for customers picked
at random. Reported: p50/p99/mean per read kind and store. Gate (PROTOCOLS.md, serving): Redis p99 ≤ 5 ms.
Redis: ``OMNICART_REDIS_URL`` when set, else a throwaway ``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.runner import BenchOptions, BenchResult, NotAvailable, gate
from omnicart import featurestore, lake, schemas, stores
from omnicart.schemas import C
from omnicart.settings import Settings

READS = 2_000
WARMUP = 100
GOAL_P99_MS = 5.0
SIM = {"sim_customers": 400, "sim_items": 60, "sim_days": 4}


@contextlib.contextmanager
def redis_server(workdir: Path, password: str | None = None) -> Iterator[str]:
    """A ``redis-server`` (Debian package ``redis-server``) on a free 127.0.0.1 port, data in ``workdir``, no
    persistence, ``password`` required when given; yields its URL and stops it after. NotAvailable when the binary
    is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise NotAvailable(
            "redis-server is not installed (Debian package redis-server) and OMNICART_REDIS_URL is unset"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    auth = b""
    if password:
        argv += ["--requirepass", password]
        auth = f"AUTH {password}\r\n".encode()
    proc = subprocess.Popen(argv, stdout=(workdir / "redis.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(auth + b"PING\r\n")
                if conn.recv(64).endswith(b"+PONG\r\n"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(workdir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _redis_store(settings: Settings, redis_url: str) -> Any:
    """The home's feature repo with a Redis online store (its own file registry beside the SQLite store's)."""
    from feast import FeatureStore, RepoConfig

    return FeatureStore(
        config=RepoConfig(
            project=featurestore.PROJECT,
            provider="local",
            registry=str(settings.feast_dir / "registry-redis.db"),
            online_store={"type": "redis", "connection_string": stores.redis_connection_string(redis_url)},
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
            repo_path=settings.feast_dir,
        )
    )


def _load(settings: Settings, store: Any, first: dt.date, last: dt.date) -> None:
    from feature_repo import definitions
    from feature_repo.apply import materialize_windows

    store.apply(definitions())
    for view, (start, end) in materialize_windows(settings, first, last).items():
        store.materialize(
            start_date=dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            end_date=dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC),
            feature_views=[view],
        )


def latencies_ms(read: Callable[[int], Any], reads: int, warmup: int = WARMUP) -> tuple[np.ndarray, float]:
    """Milliseconds of each of ``reads`` calls ``read(n)`` after ``warmup`` untimed ones, and the share of reads
    that found the entity (``read`` returns whether it did: a miss is a cheaper read, so it must not pass unseen)."""
    for n in range(warmup):
        read(n)
    out = np.empty(reads)
    found = 0
    for n in range(reads):
        started = time.perf_counter()
        hit = read(n)
        out[n] = (time.perf_counter() - started) * 1000
        found += bool(hit)
    return out, found / reads


def summary(store: str, read: str, timed: tuple[np.ndarray, float]) -> dict[str, Any]:
    ms, found = timed
    return {
        "model": f"{store}/{read}",
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "found": found,
        "reads": len(ms),
    }


def compare(
    stores_: dict[str, Any],
    customers: list[str],
    channel_pairs: list[tuple[str, str]],
    reads: int = READS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time both of ``/recommend``'s online reads on each store for the same random sequence of customers and of
    (customer, channel) pairs that the store holds."""
    from omnicart.featurestore import online_features, online_rows
    from omnicart.recommend.predictor import CUSTOMER_REFS
    from serving.recommend import FEATURE_REFS

    rng = np.random.default_rng(seed)
    who = rng.choice(customers, size=reads + WARMUP)
    pair = [channel_pairs[n] for n in rng.integers(len(channel_pairs), size=reads + WARMUP)]
    rows = []
    for name, store in stores_.items():

        def customer_read(n: int, s: Any = store) -> bool:
            row = online_features(s, FEATURE_REFS, C.customer_id, [who[n]])[0]
            return row[C.segment] is not None

        def channel_read(n: int, s: Any = store) -> bool:
            row = online_rows(s, CUSTOMER_REFS, [{C.customer_id: pair[n][0], C.channel: pair[n][1]}])[0]
            return any(row[ref.split(":", 1)[1]] is not None for ref in CUSTOMER_REFS)

        customer = latencies_ms(customer_read, reads)
        channel = latencies_ms(channel_read, reads)
        rows += [summary(name, "customer", customer), summary(name, "customer_channel", channel)]
    return rows


def run(settings: Settings, options: BenchOptions) -> BenchResult:
    if options.dataset or options.input:
        raise NotAvailable("feast_online runs on the shop simulator only (--seed)")
    from omnicart.features import build_feature_days, build_omnichannel_days
    from omnicart.ingest.daily import land_and_ingest

    with tempfile.TemporaryDirectory(prefix="omnicart-feast-online-") as tmp:
        home = Settings(home=Path(tmp) / "home", seed=options.seed, pseudonym_key="bench-" + "k" * 24, **SIM)
        first, last = home.sim_start, home.sim_end
        land_and_ingest(home, first, last)
        build_feature_days(home, first, last)
        build_omnichannel_days(home, first, last)
        customers = sorted(
            set(
                lake.read_table(home.lake_dir, schemas.CUSTOMER_FEATURES, last, last, columns=[C.customer_id])[
                    C.customer_id
                ]
            )
        )
        pairs = lake.read_table(
            home.lake_dir, schemas.CUSTOMER_CHANNEL_FEATURES, last, last, columns=[C.customer_id, C.channel]
        ).drop_duplicates()
        channel_pairs = list(zip(pairs[C.customer_id], pairs[C.channel], strict=True))
        sqlite = featurestore.feature_store(home)
        _load(home, sqlite, first, last)
        with contextlib.ExitStack() as stack:
            url = settings.redis_url or stack.enter_context(redis_server(Path(tmp) / "redis"))
            redis = _redis_store(home, url)
            _load(home, redis, first, last)
            rows = compare({"sqlite": sqlite, "redis": redis}, customers, channel_pairs, seed=options.seed)
    p99 = {row["model"]: row["p99_ms"] for row in rows}
    gates = [
        gate("redis customer read p99 ms (goal 5 ms)", p99["redis/customer"], GOAL_P99_MS, 1.0, higher_is_better=False),
        gate(
            "redis customer×channel read p99 ms (goal 5 ms)",
            p99["redis/customer_channel"],
            GOAL_P99_MS,
            1.0,
            higher_is_better=False,
        ),
    ]
    return "simulator", "feast-online", rows, gates
