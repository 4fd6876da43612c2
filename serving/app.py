"""The Ray Serve application: one FastAPI ingress (OpenAPI docs at /docs), API key required, thin handlers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from omnicart.realtime import PushResult, ShopEvent
from omnicart.settings import Settings
from serving.prediction_log import PredictionLog
from serving.pricing import PriceBatchRequest, PriceBatchResponse, PriceRequest, PriceResponse, PricingRequestError
from serving.recommend import (
    FEATURE_REFS,
    CustomerFeatureReader,
    ItemFeatureCache,
    RecommendRequest,
    RecommendRequestError,
    RecommendResponse,
    RecommendService,
    shop_state,
)
from serving.support import (
    FeedbackRequest,
    FeedbackResponse,
    SupportBatchRequest,
    SupportBatchResponse,
    SupportRequest,
    SupportResponse,
)

APP_NAME = "omnicart"

api = FastAPI(
    title="omnicart",
    description="Recommendations, support answers and prices for every shop channel.",
    version="0.1.0",
)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with a JSON body that names each offending field."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"error": "invalid request", "fields": errors})


@api.exception_handler(PricingRequestError)
async def _unpriceable(request: Request, exc: PricingRequestError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content=exc.body())


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


@serve.deployment(name="Ingress", num_replicas=1, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Ingress:
    """Loads the champions from the registry and answers the HTTP endpoints."""

    def __init__(self, settings: Settings) -> None:
        _bind_internal_grpc_to(settings.host)
        from omnicart import registry
        from omnicart.featurestore import feature_store, online_features, online_rows
        from omnicart.pricing.features import DEMAND_FEATURES, DEMAND_REFS
        from omnicart.recommend.predictor import CUSTOMER_REFS, online_customer_features
        from omnicart.schemas import C

        self.settings = settings
        self.api_key = settings.secret("api_key")
        self.predictions = PredictionLog.from_settings(settings)
        store = feature_store(settings)
        version = registry.champion_version(settings, "recommend")
        self.store = store
        # without a recommend champion (a platform may train pricing or support first) popular items answer
        unavailable, popular = shop_state(settings)
        self.recommender = RecommendService(
            load_model=lambda: registry.load(settings, "recommend"),
            read_features=lambda cid: online_features(store, FEATURE_REFS, C.customer_id, [cid])[0],
            model_version=version,
            unavailable=lambda: unavailable,
            popular=popular,
            item_features=ItemFeatureCache(
                lambda ids: online_features(store, DEMAND_REFS, C.item_id, ids), DEMAND_FEATURES
            ),
            customer_features=CustomerFeatureReader(
                online_customer_features(lambda rows: online_rows(store, CUSTOMER_REFS, rows))
            ),
        )
        self.pricer = None
        pricing_version = registry.champion_version(settings, "pricing")
        if pricing_version is not None:
            from omnicart import lake, schemas
            from serving.pricing import PricingService

            self.pricer = PricingService(
                load_model=lambda: registry.load(settings, "pricing"),
                catalog=lake.read_table(settings.lake_dir, schemas.ITEMS, columns=[C.item_id, C.cost, C.price]),
                model_version=pricing_version,
                read_features=lambda ids: online_features(store, DEMAND_REFS, C.item_id, ids),
            )
            self.price_period = self.pricer.model.next_period()  # what a request without a period is priced for
        self.support = None
        support_version = registry.champion_version(settings, "support")
        if support_version is not None:
            from serving.support import SupportService

            self.support = SupportService(
                load_model=lambda: registry.load(settings, "support"),
                home=settings.home_dir,
                pseudonym_key=settings.secret("pseudonym_key"),
                model_version=support_version,
            )

    def _check_key(self, x_api_key: str | None) -> None:
        if x_api_key != self.api_key:
            raise HTTPException(status_code=401, detail={"error": "missing or invalid API key", "field": "X-API-Key"})

    def _pricing(self) -> Any:
        if self.pricer is None:
            raise HTTPException(status_code=503, detail={"error": "no pricing champion deployed yet", "field": None})
        return self.pricer

    def _support(self) -> Any:
        if self.support is None:
            raise HTTPException(status_code=503, detail={"error": "no support champion deployed yet", "field": None})
        return self.support

    @api.get("/health")
    def health(self) -> dict[str, Any]:
        models = {"recommend": self.recommender.model_version}
        models["pricing"] = self.pricer.model_version if self.pricer else None
        models["support"] = self.support.model_version if self.support else None
        fallbacks = {"recommend": dict(self.recommender.fallbacks)}
        log_counts = dict(self.predictions.counts)
        return {"status": "ok", "models": models, "fallbacks": fallbacks, "prediction_log": log_counts}

    @api.post("/price", response_model=PriceResponse)
    def price(self, body: PriceRequest, x_api_key: str | None = Header(None)) -> PriceResponse:
        """The guarded, explained price of one product (guardrails are enforced whatever the model says)."""
        self._check_key(x_api_key)
        answer = self._pricing().price(body)
        self.predictions.pricing([body], [answer], self.price_period)
        return answer

    @api.post("/price/batch", response_model=PriceBatchResponse)
    def price_batch(self, body: PriceBatchRequest, x_api_key: str | None = Header(None)) -> PriceBatchResponse:
        self._check_key(x_api_key)
        answer = self._pricing().price_batch(body)
        self.predictions.pricing(body.items, answer.results, self.price_period)
        return answer

    @api.post("/events", response_model=PushResult, responses={404: {}, 410: {}})
    def events(self, body: ShopEvent, x_api_key: str | None = Header(None)) -> PushResult:
        """One customer event from any channel: its customer's real-time features are pushed to the online store."""
        from omnicart.realtime import push_event

        self._check_key(x_api_key)
        result = push_event(self.settings, body, store=self.store)
        if not result.pushed:
            # nobody to attach the event to (404), or a customer who asked to be erased (410): nothing is stored
            status = 410 if result.reason == "erased" else 404
            field = result.field or ("customer_id" if body.customer_id else "identifier")
            return JSONResponse(status_code=status, content={"error": result.reason, "field": field})
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _answer_together(self, requests: list[SupportRequest]) -> list[SupportResponse]:
        """Concurrent single questions are encoded as one batch; the model runs off the event loop."""
        answers = await asyncio.to_thread(self.support.answer_batch, requests)
        self.predictions.support(requests, answers)
        return answers

    @api.post("/support/answer", response_model=SupportResponse, responses={503: {}})
    async def support_answer(self, body: SupportRequest, x_api_key: str | None = Header(None)) -> SupportResponse:
        """The answer from the shop's past answers with its confidence and sources, or a handover to a person."""
        self._check_key(x_api_key)
        self._support()
        return await self._answer_together(body)

    @api.post("/support/answer/batch", response_model=SupportBatchResponse, responses={503: {}})
    def support_answer_batch(
        self, body: SupportBatchRequest, x_api_key: str | None = Header(None)
    ) -> SupportBatchResponse:
        """Up to 64 questions in one request, answered together."""
        self._check_key(x_api_key)
        answers = self._support().answer_batch(body.requests)
        self.predictions.support(body.requests, answers)
        return SupportBatchResponse(responses=answers)

    @api.post("/support/feedback", response_model=FeedbackResponse, responses={503: {}})
    def support_feedback(self, body: FeedbackRequest, x_api_key: str | None = Header(None)) -> FeedbackResponse:
        """Whether an answer helped; stored for evaluation and retraining."""
        self._check_key(x_api_key)
        stored = self._support().feedback(body)
        self.predictions.support_feedback(body)
        return stored

    @api.post("/recommend", response_model=RecommendResponse, responses={404: {}})
    def recommend(self, body: RecommendRequest, x_api_key: str | None = Header(None)) -> RecommendResponse:
        """Ranked, explained items for a customer under the shop's rules; a fallback answers whatever fails."""
        self._check_key(x_api_key)
        try:
            answer = self.recommender.recommend(body)
        except RecommendRequestError as exc:
            return JSONResponse(status_code=exc.status_code, content=exc.body())
        self.predictions.recommend(body, answer)
        return answer

    def __del__(self) -> None:
        """Serve calls this when it stops the replica (a redeploy): the buffered answers are written first."""
        if hasattr(self, "predictions"):  # not when __init__ failed before making it
            self.predictions.close()


def deploy(settings: Settings) -> str:
    """Start Serve's HTTP proxy on settings.host:serve_port (if not yet) and (re)deploy the app; returns its URL."""
    from omnicart.raycluster import ensure_ray

    ensure_ray(settings)
    serve.start(http_options={"host": settings.host, "port": settings.serve_port})
    serve.run(Ingress.bind(settings), name=APP_NAME, route_prefix="/", blocking=False)
    return settings.serve_url
