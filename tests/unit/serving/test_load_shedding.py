"""Load shedding without Ray: ``LoadShedder`` runs at most ``max_ongoing`` requests, holds ``max_queued`` more and
answers the rest 503 with Retry-After and a JSON body at once; the Ingress options size Serve around it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from omnicart.settings import Settings
from serving.app import PROXY_QUEUE_FLOOR, create_api, deployment_options, load_limits, replica_count
from serving.security import LoadShedder

OVERLOADED = {"error": "overloaded: too many requests in progress; retry after the Retry-After delay", "field": None}


def _slow_app(release: asyncio.Event, started: list[str]) -> FastAPI:
    api = FastAPI()

    @api.post("/work")
    async def work() -> dict[str, str]:
        started.append("work")
        await release.wait()
        return {"done": "yes"}

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return api


async def _burst(limits: tuple[int, int, int], n: int) -> tuple[list[httpx.Response], list[str], httpx.Response]:
    """``n`` concurrent requests against a handler that waits until all have arrived; then /health, then release."""
    release, started = asyncio.Event(), []
    app = LoadShedder(_slow_app(release, started), limits=lambda: limits)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
        tasks = [asyncio.create_task(client.post("/work")) for _ in range(n)]
        for _ in range(200):  # until every request is running, waiting or answered
            await asyncio.sleep(0.005)
            done = sum(t.done() for t in tasks)
            if len(started) + app.waiting + done >= n:
                break
        running_at_peak = list(started)
        health = await asyncio.wait_for(client.get("/health"), 1)  # exempt: answered while the replica is full
        release.set()
        return await asyncio.gather(*tasks), running_at_peak, health


def test_requests_beyond_running_and_waiting_are_shed_with_retry_after_and_json() -> None:
    answers, running_at_peak, health = asyncio.run(_burst((2, 3, 4), 9))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 5 + [503] * 4  # 2 running + 3 waiting served, the other 4 shed at once
    assert len(running_at_peak) == 2  # never more than max_ongoing at once
    for shed in (r for r in answers if r.status_code == 503):
        assert shed.headers["retry-after"] == "4"
        assert shed.headers["content-type"] == "application/json"
        assert shed.json() == OVERLOADED
    assert health.status_code == 200


def test_without_a_queue_only_the_running_requests_are_served() -> None:
    answers, _, _ = asyncio.run(_burst((1, 0, 1), 3))
    assert sorted(r.status_code for r in answers) == [200, 503, 503]


def test_waiting_requests_run_when_a_slot_frees() -> None:
    answers, _, _ = asyncio.run(_burst((1, 5, 1), 6))
    assert [r.status_code for r in answers] == [200] * 6
    assert all(r.json() == {"done": "yes"} for r in answers)


class _Backend:
    def __init__(self, settings: Settings) -> None:
        self.settings, self.api_key = settings, "k"


def test_the_api_sheds_with_the_settings_limits_after_the_key_check(tmp_path) -> None:
    """create_api puts LoadShedder behind EdgeGuard: a request without the key is 401 and takes no slot."""
    settings = Settings(home=tmp_path, serve_max_ongoing_requests=3, serve_max_queued_requests=4, serve_retry_after_s=2)
    assert load_limits(settings) == (3, 4, 2)
    api = create_api(lambda: _Backend(settings))
    shedders = []

    async def probe() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://replica") as client:
            response = await client.post("/recommend", json={"customer_id": "C1"})
        layer = api.middleware_stack
        while layer is not None and not isinstance(layer, LoadShedder):
            shedders.append(type(layer).__name__)
            layer = getattr(layer, "app", None)
        assert isinstance(layer, LoadShedder) and layer._slots is None  # the 401 never reached it
        return response.status_code

    assert asyncio.run(probe()) == 401
    assert "EdgeGuard" in shedders  # EdgeGuard runs before LoadShedder


@pytest.mark.parametrize(("cpus", "replicas"), [(1, 1), (1.5, 1), (2, 2), (16, 2)])
def test_two_replicas_when_the_cluster_has_the_cpus(tmp_path, cpus, replicas) -> None:
    assert replica_count(Settings(home=tmp_path), cpus) == replicas  # 2 x 0.5 CPU + 1 for the rest
    assert replica_count(Settings(home=tmp_path, serve_replicas=3), cpus) == 3
    assert replica_count(Settings(home=tmp_path, serve_replica_cpus=1), 2) == 1


def test_serve_gives_a_replica_more_than_the_shedder_holds_and_backs_it_with_its_own_queue(tmp_path) -> None:
    settings = Settings(home=tmp_path, serve_max_ongoing_requests=4, serve_max_queued_requests=6)
    options = deployment_options(settings, cluster_cpus=2)
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    assert options["max_ongoing_requests"] == 20  # twice the 4 + 6 LoadShedder lets a replica hold
    assert options["max_queued_requests"] == PROXY_QUEUE_FLOOR  # 4 x 10 x 2 is under the floor
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1}
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    assert options["max_surge_percent"] == 50  # a redeploy starts a replacement before it stops an old replica


def test_autoscaling_replaces_the_fixed_replica_count(tmp_path) -> None:
    scaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4}
    options = deployment_options(Settings(home=tmp_path, serve_autoscaling=scaling), cluster_cpus=16)
    assert "num_replicas" not in options and options["autoscaling_config"] == scaling
    assert options["max_queued_requests"] == PROXY_QUEUE_FLOOR  # 4 x 40 x 4 is under the floor
    big = Settings(home=tmp_path, serve_autoscaling=scaling | {"max_replicas": 8})
    assert deployment_options(big, cluster_cpus=16)["max_queued_requests"] == 4 * 40 * 8  # sized for the most replicas


def test_a_burst_the_replicas_take_never_meets_serves_plain_text_queue_limit(tmp_path) -> None:
    # the proxy's router counts a simultaneous burst as queued until each request is assigned; the test of the
    # tiny deployment (1 running, 1 waiting) sends 10 at once, and all of them must reach LoadShedder's JSON 503
    tiny = Settings(home=tmp_path, serve_replicas=1, serve_max_ongoing_requests=1, serve_max_queued_requests=1)
    assert deployment_options(tiny, cluster_cpus=2)["max_queued_requests"] >= 10
