"""Counters summed over every Ingress replica, for ``GET /health``.

Each replica counts its own fallbacks and prediction-log rows. A ``Reporter`` thread in each replica sends that
snapshot to one named Ray actor, ``Tally``, whenever it changed (checked every ``period`` seconds), and /health reads
the sum there, so the answer does not depend on which replica served it. The sum covers every replica the app has had
on this Ray cluster (a redeploy keeps the counts) and may trail a replica's own counters by one period.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Snapshot = dict[str, dict[str, int]]  # group (e.g. "fallbacks.recommend", "prediction_log") -> counter -> count
TALLY_NAME = "omnicart-tally"
TALLY_NAMESPACE = "omnicart"


def sum_snapshots(snapshots: Iterable[Mapping[str, Mapping[str, int]]]) -> Snapshot:
    """Each group's counters added over the snapshots."""
    totals: dict[str, Counter[str]] = {}
    for snapshot in snapshots:
        for group, counts in snapshot.items():
            totals.setdefault(group, Counter()).update(counts)
    return {group: dict(counts) for group, counts in totals.items()}


class Tally:
    """The latest snapshot of each replica; their sum on request. Run as a named, detached Ray actor (``connect``)."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}

    def put(self, replica: str, snapshot: Snapshot) -> None:
        self._snapshots[replica] = snapshot

    def totals(self) -> Snapshot:
        return sum_snapshots(self._snapshots.values())


def connect() -> Any:
    """The cluster's one ``Tally`` actor, started by the first replica that asks (no CPU, outlives redeploys)."""
    import ray

    options = {"name": TALLY_NAME, "namespace": TALLY_NAMESPACE, "lifetime": "detached", "num_cpus": 0}
    try:
        return ray.remote(Tally).options(get_if_exists=True, **options).remote()
    except ValueError:  # another replica created it between the lookup and the creation
        return ray.get_actor(TALLY_NAME, namespace=TALLY_NAMESPACE)


class Reporter:
    """Sends ``snapshot()`` under ``replica`` through ``send`` whenever it changed: from a daemon thread every
    ``period`` seconds or when poked, and at once on ``flush``. A failed read or send is logged and retried on the
    next check."""

    def __init__(
        self,
        replica: str,
        snapshot: Callable[[], Snapshot],
        send: Callable[[str, Snapshot], None],
        *,
        period: float = 0.1,
    ) -> None:
        self.replica = replica
        self.snapshot = snapshot
        self.send = send
        self.period = period
        self._last: Snapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tally-reporter", daemon=True)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def flush(self) -> None:
        with self._lock:
            try:
                current = self.snapshot()
                if current == self._last:
                    return
                self.send(self.replica, current)
            except Exception:  # a counter that changed while read, or an unreachable actor: the next check retries
                log.exception("could not report this replica's counters; retrying")
                return
            self._last = current

    def poke(self) -> None:
        """Report now from the thread (a counter that readers wait for changed), without blocking the caller."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period)
            self._wake.clear()
            if not self._stop.is_set():
                self.flush()
