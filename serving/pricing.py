"""The price endpoint's logic, free of Ray: request and response models and the service that answers.

``POST /price`` takes one ``PriceRequest`` (or ``{"items": [...]}`` for a batch) and answers with a guarded,
explained price per item. Requests that cannot be priced raise ``PricingRequestError`` naming the field; the ingress
turns it into ``error.status_code`` with ``error.body()``, the same JSON shape as request validation errors. In a
batch, an item that cannot be priced gets a ``PriceItemError`` in its slot and the others are answered.

Every number a request carries is bounded (``MIN_PRICE`` ≤ prices ≤ ``MAX_PRICE``, costs ≤ ``MAX_PRICE``, inventory
≤ ``MAX_INVENTORY``; finite), so no input the schema accepts makes the optimiser fail or work harder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

from omnicart.pricing.model import DemandModel
from omnicart.pricing.optimiser import (
    MAX_INVENTORY,
    MAX_PRICE,
    MIN_PRICE,
    PricingItem,
    PricingPolicy,
    Suggestion,
    optimise,
    validate_item,
)
from omnicart.pricing.pricer import suggest
from omnicart.schemas import C

log = logging.getLogger("omnicart.serving.pricing")

MAX_BATCH = 1000


class PricingRequestError(ValueError):
    """A request the service cannot price; ``field`` names the offending input (e.g. ``items[2].cost``)."""

    def __init__(self, field: str, message: str, status_code: int = 422, kind: str = "value_error") -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status_code, self.kind = field, message, status_code, kind

    def body(self) -> dict[str, Any]:
        return {
            "error": "invalid request",
            "fields": [{"field": self.field, "message": self.message, "type": self.kind}],
        }


# Prices are whole cents (under one nothing can be set) up to MAX_PRICE (1e7, above any shop's unit price; the
# optimiser's cents stay exact in float64 far beyond it).
_PRICE: dict[str, Any] = {"ge": MIN_PRICE, "le": MAX_PRICE, "allow_inf_nan": False}
# The periods a request may name: the model's calendar features are computed in datetime64[ns] (1677-2262); a
# period outside these years could only fail the model and fall back to a guarded current price.
FIRST_PERIOD, LAST_PERIOD = dt.date(1970, 1, 1), dt.date(2199, 12, 31)


class PriceRequest(BaseModel):
    """One product (at one store, where the model prices per store) to price for the next period."""

    model_config = ConfigDict(extra="forbid")

    product_id: str = Field(min_length=1, max_length=128, description="The product (catalog id).")
    store_id: str | None = Field(None, max_length=128, description="The store, when prices are set per store.")
    current_price: float | None = Field(None, description="Today's price; default: catalog.", **_PRICE)
    cost: float | None = Field(None, ge=0, le=MAX_PRICE, allow_inf_nan=False, description="Unit cost; default: catalog")
    competitor_price: float | None = Field(None, **_PRICE)
    inventory: float | None = Field(
        None, ge=0, le=MAX_INVENTORY, allow_inf_nan=False, description="Units available for the period."
    )
    min_price: float | None = Field(None, **_PRICE)
    max_price: float | None = Field(None, **_PRICE)
    promo: bool | None = Field(None, description="Whether the product will be on promotion / display.")
    period: dt.date | None = Field(
        None, ge=FIRST_PERIOD, le=LAST_PERIOD, description="The period to price; default: the next after training."
    )
    objective: Literal["profit", "revenue"] | None = Field(None, description="Default: the service's policy.")
    explain: bool = Field(True, description="Include TreeSHAP demand drivers.")

    @field_validator("max_price")
    @classmethod
    def _bounds_in_order(cls, value: float | None, info: Any) -> float | None:
        low = info.data.get("min_price")
        if value is not None and low is not None and low > value:
            raise ValueError(f"max_price {value} is below min_price {low}")
        return value


@dataclasses.dataclass(frozen=True)
class InvalidItem:
    """A batch item that failed its own validation: kept in its slot so that the others are still priced."""

    raw: Any
    field: str
    message: str
    kind: str

    @property
    def product_id(self) -> str | None:
        found = self.raw.get("product_id") if isinstance(self.raw, Mapping) else None
        return found if isinstance(found, str) else None


def _item_or_invalid(value: Any, handler: ValidatorFunctionWrapHandler) -> PriceRequest | InvalidItem:
    try:
        return handler(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        return InvalidItem(value, ".".join(str(p) for p in first["loc"]), first["msg"], first["type"])


class PriceBatchRequest(BaseModel):
    """Up to ``MAX_BATCH`` items; an invalid item is answered in its slot by a ``PriceItemError``, not the batch."""

    model_config = ConfigDict(extra="forbid")

    items: list[Annotated[PriceRequest, WrapValidator(_item_or_invalid)]] = Field(min_length=1, max_length=MAX_BATCH)


class OutcomeModel(BaseModel):
    price: float
    units: float | None = Field(description="Expected units sold in the period.")
    revenue: float | None
    profit: float | None


class Driver(BaseModel):
    feature: str
    effect: float = Field(description="Contribution to predicted log units (TreeSHAP); exp(effect) multiplies demand.")
    value: float | None


class PriceResponse(BaseModel):
    product_id: str
    store_id: str | None
    objective: str
    current_price: float
    suggested_price: float
    current: OutcomeModel
    suggested: OutcomeModel
    elasticity: float | None = Field(
        description="Own-price elasticity at the current price (d log units / d log price)."
    )
    elasticity_low: float | None
    elasticity_high: float | None
    drivers: list[Driver]
    binding: list[str] = Field(description="Guardrails that bound the suggestion.")
    relaxed: list[str] = Field(description="Guardrails that could not hold together with higher-priority ones.")
    allowed_low: float
    allowed_high: float
    fallback: str | None
    reason: str
    model_version: str | None
    variant: str | None = Field(
        None, description="During an online experiment: 'champion' or 'challenger', the model version that answered."
    )


class PriceItemError(BaseModel):
    """The answer in a batch slot whose item could not be priced: what went wrong, and where."""

    product_id: str | None = Field(description="The item's product_id, when it gave a valid one.")
    error: str = Field(description="Why the item could not be priced.")
    field: str = Field(description="The offending input, e.g. items[2].cost.")
    status_code: int = Field(description="The status the item alone would have got (404 unknown, 422 invalid).")


class PriceBatchResponse(BaseModel):
    results: list[PriceResponse | PriceItemError] = Field(
        description="One entry per item, in order: its price, or a PriceItemError when it could not be priced."
    )
    model_version: str | None


def _catalog_table(catalog: pd.DataFrame | Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    if catalog is None:
        return {}
    if isinstance(catalog, pd.DataFrame):
        key = C.product_id if C.product_id in catalog.columns else C.item_id
        return {str(r[key]): r for r in catalog.to_dict("records")}
    return {str(k): dict(v) for k, v in catalog.items()}


def _item_error(request: Any, error: PricingRequestError) -> PriceItemError:
    if isinstance(request, PriceRequest | InvalidItem):
        product = request.product_id
    else:
        found = request.get("product_id") if isinstance(request, Mapping) else None
        product = found if isinstance(found, str) else None
    return PriceItemError(product_id=product, error=error.message, field=error.field, status_code=error.status_code)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class PricingService:
    """Validates requests, prices them with the model and the guarded optimiser, and explains each answer.

    ``load_model`` returns a ``DemandModel`` or the registry's ``PricingPredictor`` (its ``model_``); ``catalog``
    (product_id → cost, price) supplies defaults and, when given, the set of products that may be priced.
    """

    def __init__(
        self,
        load_model: Callable[[], Any],
        catalog: pd.DataFrame | Mapping[str, Mapping[str, Any]] | None = None,
        policy: PricingPolicy = PricingPolicy(),
        model_version: str | None = None,
        read_features: Callable[[list[str]], list[dict[str, Any]]] | None = None,
    ) -> None:
        loaded = load_model()
        self.model: DemandModel = getattr(loaded, "model_", None) or loaded
        self.catalog = _catalog_table(catalog)
        self.policy = policy
        self.model_version = model_version
        self.read_features = read_features
        self.feature_failures = 0

    # --- validation -------------------------------------------------------------------------------------------
    def _parse(self, request: PriceRequest | Mapping[str, Any], prefix: str = "") -> PriceRequest:
        if isinstance(request, PriceRequest):
            return request
        try:
            return PriceRequest.model_validate(request)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise PricingRequestError(prefix + field, first["msg"], 422, first["type"]) from exc

    def _item(self, request: PriceRequest, prefix: str = "") -> PricingItem:
        product = request.product_id
        known = self.model.known_product(product)
        if (self.catalog and product not in self.catalog) or (not self.catalog and not known):
            raise PricingRequestError(prefix + "product_id", f"unknown product {product!r}", 404, "not_found")
        if not known:
            raise PricingRequestError(prefix + "product_id", f"no demand history for product {product!r}", 404)
        spec = self.model.spec_
        if spec.has_store and request.store_id is None:
            raise PricingRequestError(prefix + "store_id", "required: this model sets prices per store", 422, "missing")
        if spec.has_store and not self.model.known_store(request.store_id):
            raise PricingRequestError(prefix + "store_id", f"unknown store {request.store_id!r}", 404, "not_found")
        entry = self.catalog.get(product, {})
        current = request.current_price or _number(entry.get(C.price))
        if current is None:
            current = self._last_price(product, request.store_id)
        if current is None:
            raise PricingRequestError(prefix + "current_price", "required: no catalog or recent price for this product")
        cost = request.cost if request.cost is not None else _number(entry.get(C.cost))
        item = PricingItem(
            product_id=product,
            current_price=float(current),
            cost=cost,
            store_id=request.store_id if spec.has_store else None,
            competitor_price=request.competitor_price,
            inventory=request.inventory,
            min_price=request.min_price,
            max_price=request.max_price,
        )
        if item.min_price is not None and item.max_price is not None and item.min_price > item.max_price:
            raise PricingRequestError(prefix + "min_price", f"{item.min_price} is above max_price {item.max_price}")
        try:  # catalog or history defaults are not checked by the schema: out of range, the item is a 422 too
            validate_item(item)
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            raise PricingRequestError(prefix + field, message or str(exc)) from exc
        return item

    def _last_price(self, product: str, store: str | None) -> float | None:
        state = self.model.state_
        rows = state[state[C.series_id] == self.model.series_id(product, store)]
        return _number(rows[C.price].iloc[-1]) if len(rows) else None

    # --- answering --------------------------------------------------------------------------------------------
    def price(self, request: PriceRequest | Mapping[str, Any]) -> PriceResponse:
        """Price one item; raises ``PricingRequestError`` (4xx) for requests that cannot be priced."""
        return self._answer([self._parse(request)], [""])[0]

    def price_batch(
        self, requests: PriceBatchRequest | Sequence[PriceRequest | Mapping[str, Any]]
    ) -> PriceBatchResponse:
        """Price many items at once. An item that cannot be priced (invalid, unknown) gets a ``PriceItemError``
        naming it (``items[i].field``) in its slot; the others are answered. Only a batch that is empty or too
        long is rejected whole."""
        items = requests.items if isinstance(requests, PriceBatchRequest) else list(requests)
        if not items:
            raise PricingRequestError("items", "at least one item is required")
        if len(items) > MAX_BATCH:
            raise PricingRequestError("items", f"at most {MAX_BATCH} items per batch")
        prefixes = [f"items[{i}]." for i in range(len(items))]
        answers: list[PriceResponse | PriceItemError | None] = [None] * len(items)
        parsed: list[PriceRequest] = []
        slots: list[int] = []
        for i, (r, p) in enumerate(zip(items, prefixes, strict=True)):
            try:
                if isinstance(r, InvalidItem):
                    raise PricingRequestError(p + r.field if r.field else p.rstrip("."), r.message, 422, r.kind)
                parsed.append(self._parse(r, p))
                slots.append(i)
            except PricingRequestError as exc:
                answers[i] = _item_error(r, exc)
        for i, answer in zip(slots, self._answer(parsed, [prefixes[i] for i in slots], _item_error), strict=True):
            answers[i] = answer
        return PriceBatchResponse(results=[a for a in answers if a is not None], model_version=self.model_version)

    def price_each(self, requests: Sequence[PriceRequest]) -> list[PriceResponse | PricingRequestError]:
        """Single requests priced together (one feature and model pass for all, as ``price_batch``): each gets the
        answer ``price`` would give it, or the ``PricingRequestError`` ``price`` would raise, in its slot."""
        return self._answer(list(requests), [""] * len(requests), lambda _request, error: error)

    def _answer(
        self,
        requests: list[PriceRequest],
        prefixes: list[str],
        isolate: Callable[[PriceRequest, PricingRequestError], Any] | None = None,
    ) -> list[Any]:
        """The answers in order; an item that cannot be priced raises, or with ``isolate`` answers what it makes
        of the item and its error."""
        answers: list[PriceResponse | PriceItemError | None] = [None] * len(requests)
        items: dict[int, PricingItem] = {}
        for i, (r, p) in enumerate(zip(requests, prefixes, strict=True)):
            try:
                items[i] = self._item(r, p)
            except PricingRequestError as exc:
                if isolate is None:
                    raise
                answers[i] = isolate(r, exc)
        groups: dict[tuple, list[int]] = {}
        for i in items:
            r = requests[i]
            groups.setdefault((r.period, r.objective or self.policy.objective, r.explain), []).append(i)
        for (period, objective, explain), idx in groups.items():
            policy = dataclasses.replace(self.policy, objective=objective)
            group = [items[i] for i in idx]
            promo = [None if requests[i].promo is None else float(requests[i].promo) for i in idx]
            for i, s in zip(idx, self._suggest(group, policy, period, promo, explain), strict=True):
                answers[i] = self._response(s)
        return [a for a in answers if a is not None]

    def _suggest(
        self, items: list[PricingItem], policy: PricingPolicy, period: Any, promo: list, explain: bool
    ) -> list[Suggestion]:
        features = self._features(items)
        try:
            return suggest(self.model, items, policy, period=period, promo=promo, features=features, explain=explain)
        except Exception:  # the model failing must not fail the request: guardrails still give a safe price
            log.exception("pricing model failed; answering with guarded current prices")

            def no_demand(grids: list[np.ndarray]) -> list[np.ndarray]:
                return [np.full(len(g), np.nan) for g in grids]

            return optimise(items, no_demand, policy)

    def _features(self, items: list[PricingItem]) -> list[dict[str, Any]] | None:
        """The items' current values of the model's extra features (online store); None — the model's latest
        history fills them — when the model has none, no reader is set, or the store fails (logged and counted)."""
        if self.read_features is None or not self.model.spec_.extras:
            return None
        try:
            return self.read_features([i.product_id for i in items])
        except Exception:
            self.feature_failures += 1
            log.exception("online features unavailable; pricing with the model's latest history instead")
            return None

    def _response(self, s: Suggestion) -> PriceResponse:
        return PriceResponse(
            product_id=s.product_id,
            store_id=s.store_id,
            objective=s.objective,
            current_price=s.current.price,
            suggested_price=s.suggested.price,
            current=OutcomeModel(**dataclasses.asdict(s.current)),
            suggested=OutcomeModel(**dataclasses.asdict(s.suggested)),
            elasticity=s.elasticity,
            elasticity_low=s.elasticity_low,
            elasticity_high=s.elasticity_high,
            drivers=[Driver(**d) for d in s.drivers],
            binding=s.binding,
            relaxed=s.relaxed,
            allowed_low=s.allowed_low,
            allowed_high=s.allowed_high,
            fallback=s.fallback,
            reason=s.reason,
            model_version=self.model_version,
        )
