"""The Ray Serve application: one FastAPI ingress (OpenAPI docs at /docs), API key required, thin handlers.

``create_api`` builds the HTTP surface over a ``Backend`` (the replica's services), so unit tests build it with
stubs and no Ray; ``Ingress`` is the Serve deployment that loads the champions and is that backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException

from omnicart.realtime import PushResult, ShopEvent
from omnicart.settings import Settings
from serving import tally
from serving.experiments import explore_recommend, groups, pick, running_experiments, tagged
from serving.prediction_log import PredictionLog
from serving.pricing import (
    PriceBatchRequest,
    PriceBatchResponse,
    PriceItemError,
    PriceRequest,
    PriceResponse,
    PricingRequestError,
)
from serving.recommend import (
    FEATURE_REFS,
    CustomerFeatureReader,
    ItemFeatureCache,
    RecommendRequest,
    RecommendRequestError,
    RecommendResponse,
    RecommendService,
    active_since,
    shop_state,
)
from serving.security import KEY_VALID, EdgeGuard, ErrorBody, LoadShedder, api_key_scheme, error_responses
from serving.support import (
    FeedbackRequest,
    FeedbackResponse,
    SupportBatchRequest,
    SupportBatchResponse,
    SupportRequest,
    SupportResponse,
)

APP_NAME = "omnicart"


class Backend(Protocol):
    """What the HTTP handlers use: the Serve replica (``Ingress``) in production, a stub in unit tests."""

    settings: Settings
    api_key: str
    predictions: PredictionLog
    recommender: RecommendService
    pricer: Any | None  # PricingService, once a pricing champion exists
    support: Any | None  # SupportService, once a support champion exists
    store: Any
    price_period: Any
    experiments: dict[str, Any]  # family → the running Experiment (omnicart.experiments.config)
    challengers: dict[str, Any]  # family → the challenger's service

    async def answer_together(self, request: SupportRequest) -> SupportResponse: ...

    async def price_together(self, request: PriceRequest) -> Any: ...  # PriceResponse, or the PricingRequestError

    async def counters(self) -> dict[str, dict[str, int]]: ...  # summed over the replicas (serving.tally)


class ServiceUnavailable(Exception):
    """A family without a deployed champion: 503."""

    def __init__(self, family: str) -> None:
        super().__init__(f"no {family} champion deployed yet")


def load_limits(settings: Settings) -> tuple[int, int, int]:
    """What ``LoadShedder`` enforces in each replica: requests at once, requests waiting, Retry-After seconds."""
    return settings.serve_max_ongoing_requests, settings.serve_max_queued_requests, settings.serve_retry_after_s


def create_api(backend: Callable[[], Backend]) -> FastAPI:
    """The FastAPI app over ``backend()`` (called per request): EdgeGuard in front, the key scheme on every
    protected operation, and each error status documented with its body."""
    api = FastAPI(
        title="omnicart",
        description="Recommendations, support answers and prices for every shop channel.",
        version="0.1.0",
    )
    # the last added runs first: the key and size checks, then the load limits (a rejected request takes no slot)
    api.add_middleware(LoadShedder, limits=lambda: load_limits(backend().settings))
    api.add_middleware(
        EdgeGuard, api_key=lambda: backend().api_key, max_body_bytes=lambda: backend().settings.max_body_bytes
    )

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with a JSON body that names each offending field."""
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"error": "invalid request", "fields": errors})

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own errors in this API's shape. Its only 400 is a body it cannot decode (bytes that are no
        UTF-8 JSON): a 422 naming the body, like any other body that is not JSON."""
        if exc.status_code == 400:
            error = {"field": "body", "message": "the body is not UTF-8 JSON", "type": "json_invalid"}
            return JSONResponse(status_code=422, content={"error": "invalid request", "fields": [error]})
        body = ErrorBody(error=str(exc.detail), field=None).model_dump()
        return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)

    @api.exception_handler(PricingRequestError)
    async def _unpriceable(request: Request, exc: PricingRequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=exc.body())

    @api.exception_handler(ServiceUnavailable)
    async def _unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content=ErrorBody(error=str(exc), field=None).model_dump())

    def pricer() -> Any:
        if backend().pricer is None:
            raise ServiceUnavailable("pricing")
        return backend().pricer

    def support() -> Any:
        if backend().support is None:
            raise ServiceUnavailable("support")
        return backend().support

    # EdgeGuard enforces the key before any body is read; the dependency only marks the operations in OpenAPI
    protected = APIRouter(dependencies=[Security(api_key_scheme)], responses=error_responses(401, 413, 422, 503))

    @api.get(
        "/health",
        dependencies=[Security(api_key_scheme)],
        openapi_extra={"security": [{}]},  # the key is optional here (an empty requirement)
    )
    async def health(request: Request) -> dict[str, Any]:
        """Liveness for anyone; with a valid key also the answering replica's champion versions and the fallback
        and prediction-log counters summed over every replica (at most ~0.1 s behind each)."""
        if not request.scope.get(KEY_VALID, False):
            return {"status": "ok"}
        b = backend()
        models = {"recommend": b.recommender.model_version}
        models["pricing"] = b.pricer.model_version if b.pricer else None
        models["support"] = b.support.model_version if b.support else None
        counts = await b.counters()
        fallbacks = {"recommend": counts.get("fallbacks.recommend", {})}
        log_counts = counts.get("prediction_log", {})
        return {"status": "ok", "models": models, "fallbacks": fallbacks, "prediction_log": log_counts}

    @protected.post("/price", response_model=PriceResponse, responses=error_responses(404, 503, invalid=(404, 422)))
    async def price(body: PriceRequest) -> PriceResponse:
        """The guarded, explained price of one product (guardrails are enforced whatever the model says)."""
        champion, b = pricer(), backend()
        started = time.perf_counter()
        service, variant = pick("pricing", champion, body.product_id, *_arms(b))
        if service is champion:
            answer = await b.price_together(body)  # priced with concurrent requests; tagged and logged there
            if isinstance(answer, PricingRequestError):
                raise answer
            return answer
        answer = tagged(await asyncio.to_thread(service.price, body), variant)
        b.predictions.pricing([body], [answer], b.price_period, latency_ms=_ms(started))
        return answer

    @protected.post(
        "/price/batch", response_model=PriceBatchResponse, responses=error_responses(404, 503, invalid=(404, 422))
    )
    def price_batch(body: PriceBatchRequest) -> PriceBatchResponse:
        champion, b = pricer(), backend()
        started = time.perf_counter()
        split = groups("pricing", champion, [getattr(i, "product_id", None) for i in body.items], *_arms(b))
        if len(split) == 1:
            service, variant, _ = split[0]
            answer = service.price_batch(body)
            answer.results = [tagged(r, variant) if isinstance(r, PriceResponse) else r for r in answer.results]
        else:  # during a price test: each variant prices its own products; errors keep their item's position
            results: list[Any] = [None] * len(body.items)
            for service, variant, positions in split:
                part = service.price_batch(PriceBatchRequest.model_construct(items=[body.items[i] for i in positions]))
                for j, (i, r) in enumerate(zip(positions, part.results, strict=True)):
                    if isinstance(r, PriceItemError):
                        r = r.model_copy(update={"field": r.field.replace(f"items[{j}]", f"items[{i}]", 1)})
                    results[i] = tagged(r, variant) if isinstance(r, PriceResponse) else r
            answer = PriceBatchResponse(results=results, model_version=champion.model_version)
        b.predictions.pricing(body.items, answer.results, b.price_period, latency_ms=_ms(started))
        return answer

    @protected.post("/events", response_model=PushResult, responses=error_responses(404, 410))
    def events(body: ShopEvent) -> PushResult:
        """One customer event from any channel: its customer's real-time features are pushed to the online store."""
        from omnicart.realtime import push_event

        b = backend()
        result = push_event(b.settings, body, store=b.store)
        if not result.pushed:
            # nobody to attach the event to (404), or a customer who asked to be erased (410): nothing is stored
            status = 410 if result.reason == "erased" else 404
            field = result.field or ("customer_id" if body.customer_id else "identifier")
            return JSONResponse(status_code=status, content={"error": result.reason, "field": field})
        return result

    @protected.post("/support/answer", response_model=SupportResponse, responses=error_responses(503))
    async def support_answer(body: SupportRequest) -> SupportResponse:
        """The answer from the shop's past answers with its confidence and sources, or a handover to a person."""
        champion, b = support(), backend()
        service, variant = pick("support", champion, body.customer_id, *_arms(b))
        if service is champion:
            return await b.answer_together(body)  # batched with concurrent questions; logged there
        answer = tagged((await asyncio.to_thread(service.answer_batch, [body]))[0], variant)
        b.predictions.support([body], [answer])
        return answer

    @protected.post("/support/answer/batch", response_model=SupportBatchResponse, responses=error_responses(503))
    def support_answer_batch(body: SupportBatchRequest) -> SupportBatchResponse:
        """Up to 64 questions in one request, answered together."""
        champion, b = support(), backend()
        answers: list[Any] = [None] * len(body.requests)
        for service, variant, positions in groups(
            "support", champion, [r.customer_id for r in body.requests], *_arms(b)
        ):
            part = service.answer_batch([body.requests[i] for i in positions])
            for i, a in zip(positions, part, strict=True):
                answers[i] = tagged(a, variant)
        b.predictions.support(body.requests, answers)
        return SupportBatchResponse(responses=answers)

    @protected.post("/support/feedback", response_model=FeedbackResponse, responses=error_responses(503))
    def support_feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Whether an answer helped; stored for evaluation and retraining."""
        stored = support().feedback(body)
        backend().predictions.support_feedback(body)
        return stored

    @protected.post("/recommend", response_model=RecommendResponse, responses=error_responses(404))
    def recommend(body: RecommendRequest) -> RecommendResponse:
        """Ranked, explained items for a customer under the shop's rules; a fallback answers whatever fails."""
        b = backend()
        started = time.perf_counter()
        service, variant = pick("recommend", b.recommender, body.customer_id, *_arms(b))
        epsilon = b.settings.recommend_exploration
        try:
            if epsilon > 0:
                pool, rng = b.settings.recommend_exploration_pool, np.random.default_rng()
                answer = explore_recommend(service, body, epsilon, pool, rng)
            else:
                answer = service.recommend(body)
        except RecommendRequestError as exc:
            return JSONResponse(status_code=exc.status_code, content=exc.body())
        answer = tagged(answer, variant)
        b.predictions.recommend(body, answer, latency_ms=_ms(started))
        return answer

    api.include_router(protected)
    return api


def _arms(b: Backend) -> tuple[dict[str, Any], dict[str, Any]]:
    """The backend's running experiments and challengers (none for a backend without them)."""
    return getattr(b, "experiments", None) or {}, getattr(b, "challengers", None) or {}


def price_champion(b: Backend, requests: list[PriceRequest]) -> list[Any]:
    """The pricing champion's answer (or ``PricingRequestError``) for each of concurrent single requests, from one
    feature and model pass (``PricingService.price_each``); tagged during a price test, and logged."""
    started = time.perf_counter()
    answers = b.pricer.price_each(requests)
    if "pricing" in _arms(b)[0]:  # the challenger's requests never come here: these are the champion's
        answers = [a if isinstance(a, Exception) else tagged(a, "champion") for a in answers]
    priced = [(r, a) for r, a in zip(requests, answers, strict=True) if not isinstance(a, Exception)]
    if priced:
        b.predictions.pricing([r for r, _ in priced], [a for _, a in priced], b.price_period, latency_ms=_ms(started))
    return answers


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _replica() -> Backend:
    """The Ingress instance answering this request (Serve's replica context)."""
    return serve.get_replica_context().servable_object


api = create_api(_replica)


def _bind_internal_grpc_to(host: str) -> None:
    """Ray Serve 2.60 opens each replica's inter-deployment gRPC server on "[::]:0" (every interface), with no
    setting to change it; rebind it to ``host`` so that nothing of ours listens beyond loopback by default."""
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "__omnicart_host__", None) == host:
        return

    def add_port(server: Any, address: str) -> Any:
        return original(server, address.replace("[::]", host, 1))

    add_port.__omnicart_host__ = host  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.5})  # deploy() sets replicas and limits
@serve.ingress(api)
class Ingress:
    """Loads the champions from the registry; the ``Backend`` of the HTTP endpoints (``create_api``)."""

    def __init__(self, settings: Settings) -> None:
        _bind_internal_grpc_to(settings.host)
        from omnicart import registry
        from omnicart.featurestore import feature_store, online_features, online_rows
        from omnicart.pricing.features import DEMAND_FEATURES, DEMAND_REFS
        from omnicart.recommend.predictor import CUSTOMER_REFS, online_customer_features
        from omnicart.schemas import FAMILIES, C

        self.settings = settings
        self.api_key = settings.secret("api_key")
        self.predictions = PredictionLog.from_settings(settings)
        store = feature_store(settings)
        self.store = store
        # without a recommend champion (a platform may train pricing or support first) popular items answer
        unavailable, popular = shop_state(settings)
        catalog: list[Any] = []  # read once, when a pricing model needs it

        def recommend_service(alias: str, version: str | None) -> RecommendService:
            return RecommendService(
                load_model=lambda: registry.load(settings, "recommend", alias),
                read_features=lambda cid: online_features(store, FEATURE_REFS, C.customer_id, [cid])[0],
                read_features_many=lambda ids: online_features(store, FEATURE_REFS, C.customer_id, ids),
                model_version=version,
                unavailable=lambda: unavailable,
                popular=popular,
                item_features=ItemFeatureCache(
                    lambda ids: online_features(store, DEMAND_REFS, C.item_id, ids), DEMAND_FEATURES
                ),
                customer_features=CustomerFeatureReader(
                    online_customer_features(lambda rows: online_rows(store, CUSTOMER_REFS, rows))
                ),
                newcomers=lambda cut: active_since(settings, cut),
            )

        def pricing_service(alias: str, version: str) -> Any:
            from omnicart import lake, schemas
            from serving.pricing import PricingService

            if not catalog:
                catalog.append(lake.read_table(settings.lake_dir, schemas.ITEMS, columns=[C.item_id, C.cost, C.price]))
            return PricingService(
                load_model=lambda: registry.load(settings, "pricing", alias),
                catalog=catalog[0],
                model_version=version,
                read_features=lambda ids: online_features(store, DEMAND_REFS, C.item_id, ids),
            )

        def support_service(alias: str, version: str) -> Any:
            from serving.support import SupportService

            return SupportService(
                load_model=lambda: registry.load(settings, "support", alias),
                home=settings.home_dir,
                pseudonym_key=settings.secret("pseudonym_key"),
                model_version=version,
            )

        self.recommender = recommend_service(registry.CHAMPION, registry.champion_version(settings, "recommend"))
        self.pricer = None
        self.price_period = None
        pricing_version = registry.champion_version(settings, "pricing")
        if pricing_version is not None:
            self.pricer = pricing_service(registry.CHAMPION, pricing_version)
            self.price_period = self.pricer.model.next_period()  # what a request without a period is priced for
        self.support = None
        support_version = registry.champion_version(settings, "support")
        if support_version is not None:
            self.support = support_service(registry.CHAMPION, support_version)
        # online experiments: each running one's challenger, where its family has a champion to compare with
        builders = {"recommend": recommend_service, "pricing": pricing_service, "support": support_service}
        champions = {"recommend": self.recommender.model, "pricing": self.pricer, "support": self.support}
        served = tuple(f for f in FAMILIES if f in builders and champions.get(f) is not None)
        self.experiments, self.challengers = running_experiments(
            settings.home_dir,
            served,
            lambda family, exp: builders[family](registry.CHALLENGER, exp.config.challenger_version),
        )
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except RayServeException:  # the handler outside Serve (the serving bench's bare uvicorn): one local tally
            replica, self._tally = "local", tally.Tally()
            send = self._tally.put
        else:
            self._tally = tally.connect()
            send = lambda replica, snapshot: self._tally.put.remote(replica, snapshot)  # noqa: E731
        self._reporter = tally.Reporter(
            replica,
            lambda: {
                "fallbacks.recommend": dict(self.recommender.fallbacks),
                "prediction_log": dict(self.predictions.counts),
            },
            send,
        ).start()
        self.recommender.on_fallback = self._reporter.poke

    async def counters(self) -> dict[str, dict[str, int]]:
        """The counters of every replica, this one's current (its report is sent, in order, before the read)."""
        self._reporter.flush()
        if isinstance(self._tally, tally.Tally):
            return self._tally.totals()
        return await self._tally.totals.remote()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def answer_together(self, requests: list[SupportRequest]) -> list[SupportResponse]:
        """Concurrent single questions are encoded as one batch; the model runs off the event loop."""
        answers = await asyncio.to_thread(self.support.answer_batch, requests)
        if "support" in self.experiments:  # the challenger's questions never come here: these are the champion's
            answers = [tagged(a, "champion") for a in answers]
        self.predictions.support(requests, answers)
        return answers

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def price_together(self, requests: list[PriceRequest]) -> list[Any]:
        """Concurrent single prices share one feature and model pass (``PricingService.price_each``), off the
        event loop; each request gets its own answer or error. One price costs ~7 ms alone and ~0.75 ms in a batch
        of 16, so the batch waits up to 10 ms to fill, as the support answers do."""
        return await asyncio.to_thread(price_champion, self, requests)

    def __del__(self) -> None:
        """Serve calls this when it stops the replica (a redeploy): the buffered answers are written first."""
        if hasattr(self, "predictions"):  # not when __init__ failed before making it
            self.predictions.close()
        if hasattr(self, "_reporter"):
            self._reporter.close()


def replica_count(settings: Settings, cluster_cpus: float) -> int:
    """``serve_replicas``, or two when the cluster has their CPUs and one more for the rest of the platform (training,
    the proxy, Feast), so one replica's death or restart leaves another answering; else one."""
    if settings.serve_replicas is not None:
        return settings.serve_replicas
    return 2 if cluster_cpus >= 2 * settings.serve_replica_cpus + 1 else 1


PROXY_QUEUE_FLOOR = 1024  # the least Serve's proxy holds unassigned before its own plain-text 503


def deployment_options(settings: Settings, cluster_cpus: float) -> dict[str, Any]:
    """The Ingress deployment's options: replicas (fixed or autoscaled), CPUs and the request limits.

    Serve may give a replica twice what ``LoadShedder`` lets it run and hold, so an overflow reaches LoadShedder
    (503 + Retry-After, JSON) at once instead of waiting in Serve's proxy; Serve's own queue (``max_queued_requests``,
    503 + Retry-After, plain text) is only a backstop for a flood beyond that. Its router counts every request of a
    simultaneous burst as queued until it is assigned to a replica, so even a burst the replicas would take in full
    can overrun a small bound: it is at least ``PROXY_QUEUE_FLOOR``. A rolling update starts each
    replacement before it stops an old replica (``max_surge_percent``: one extra replica of two, or of one)."""
    capacity = settings.serve_max_ongoing_requests + settings.serve_max_queued_requests
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.serve_replica_cpus},
        "max_ongoing_requests": 2 * capacity,
        "backpressure_config": {"status_code": 503, "retry_after_s": settings.serve_retry_after_s},
        "max_surge_percent": 50,
    }
    if settings.serve_autoscaling:
        options["autoscaling_config"] = dict(settings.serve_autoscaling)
        most = int(settings.serve_autoscaling.get("max_replicas", 1))
    else:
        most = options["num_replicas"] = replica_count(settings, cluster_cpus)
    options["max_queued_requests"] = max(4 * capacity * most, PROXY_QUEUE_FLOOR)
    return options


def build_app(args: dict[str, Any]) -> Any:
    """Serve's application builder for a cluster that runs the app from its config (KubeRay's RayService,
    ``serve run serving.app:build_app``): the Ingress over the settings of the environment (``args`` is unused)."""
    from omnicart.settings import get_settings

    return Ingress.bind(get_settings())


def deploy(settings: Settings) -> str:
    """Start Serve's HTTP proxy on settings.host:serve_port (if not yet) and (re)deploy the app; returns its URL.

    A redeploy is Serve's rolling update: each replacement replica starts before an old one stops, and an old one
    finishes its requests first, so no request is dropped. The proxy's request timeout applies from its first start."""
    import ray

    from omnicart.raycluster import ensure_ray

    ensure_ray(settings)
    serve.start(
        http_options={
            "host": settings.host,
            "port": settings.serve_port,
            "request_timeout_s": settings.serve_request_timeout_s,
        }
    )
    options = deployment_options(settings, ray.cluster_resources().get("CPU", 1.0))
    serve.run(Ingress.options(**options).bind(settings), name=APP_NAME, route_prefix="/", blocking=False)
    return settings.serve_url
