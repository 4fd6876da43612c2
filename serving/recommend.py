"""The recommend endpoint's logic, free of Ray: request and response models, business rules and fallbacks.

The Serve deployment (serving/app.py) only wires HTTP to ``RecommendService``, so unit tests reach all of this.
The model ranks and explains; the service applies the shop's rules on top: unavailable and excluded items never
appear, already-bought items on request, at most N items per category, boosted items first and buried ones last.
Whatever fails (the online store, the model, a missing champion), an answer still comes back, with the reason
logged and counted in ``fallbacks``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, Literal

import numpy as np
import pandas as pd
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from omnicart.schemas import CHANNELS, C, F

log = logging.getLogger("omnicart.serving.recommend")

FEATURE_REFS = [f"{F.customer_view}:{C.segment}", f"{F.customer_recent_view}:{F.recent_items}"]
OVERFETCH = 4  # candidates asked of the model per returned item, so the rules can still fill k
Channel = Literal[CHANNELS]  # type: ignore[valid-type]
# The outside feature sources that failed while answering the current request. A context variable, not a counter
# compared before and after: the Serve app answers requests in parallel threads, and each sees only its own.
_FAILED_SOURCES: ContextVar[list[object] | None] = ContextVar("omnicart_failed_sources", default=None)


def _source_failed(source: object) -> None:
    """Count a failed read of ``source`` and note it for the request being answered (if any)."""
    source.failures += 1  # type: ignore[attr-defined]
    failed = _FAILED_SOURCES.get()
    if failed is not None:
        failed.append(source)


class RecommendContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str | None = Field(None, min_length=1, max_length=128, description="The item the customer is looking at.")
    channel: Channel | None = Field(None, description="Where the request comes from.")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=128, description="The customer's platform id.")
    k: int = Field(10, ge=1, le=100, description="How many items to return.")
    context: RecommendContext = Field(default_factory=RecommendContext)
    exclude_items: list[str] = Field(default_factory=list, max_length=1000, description="Items never to return.")
    exclude_bought: bool = Field(False, description="Only items the customer has never bought.")
    max_per_category: int | None = Field(None, ge=1, le=100, description="Diversity: at most this many per category.")
    boost: list[str] = Field(default_factory=list, max_length=100, description="Put these first when they qualify.")
    bury: list[str] = Field(default_factory=list, max_length=1000, description="Put these last when they qualify.")
    new_items: int = Field(
        0,
        ge=0,
        le=100,
        description=(
            "How many of the k slots go to catalog items that have not sold yet, chosen by the content model (at "
            "most k; they come last, with a reason saying they are new). 0 by default: a slot given to an unsold "
            "item is taken from the ranked items the customer is likeliest to buy, so each placement opts in."
        ),
    )

    @field_validator("new_items")
    @classmethod
    def _new_items_fit_in_k(cls, value: int, info: ValidationInfo) -> int:
        k = info.data.get("k")
        if k is not None and value > k:
            raise ValueError(f"new_items ({value}) cannot exceed k ({k})")
        return value


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str
    category: str = ""
    reason: str = Field(description="Why this item, in plain words.")
    contributions: dict[str, float] = Field(
        default_factory=dict, description="The ranker's TreeSHAP contribution of each reason family."
    )
    propensity: float | None = Field(
        None, description="With exploration on: the probability that this item was shown in this slot."
    )


class RecommendResponse(BaseModel):
    customer_id: str
    items: list[RecommendedItem]
    source: str = Field(description="'personal' (the customer's history), 'context' (the current item) or 'popular'.")
    fallback: str | None = Field(None, description="Why a fallback answered, when one did.")
    model_version: str | None
    variant: str | None = Field(
        None, description="During an online experiment: 'champion' or 'challenger', the model version that answered."
    )


class ItemFeatureCache:
    """The ranker's item features from the online store, each item's values kept ``ttl_s`` seconds (the item windows
    change once a day), so most requests cost a cache lookup rather than a store read of every candidate.

    ``read(ids)`` returns one dict per id. A failing read is logged and counted in ``failures``; the items then rank
    with those features missing (the model's NaN branch), never with an error."""

    def __init__(
        self,
        read: Callable[[list[str]], list[dict[str, Any]]],
        names: Sequence[str],
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_items: int = 1_000_000,
    ) -> None:
        self.read, self.names = read, list(names)
        self.failures = 0
        self._values: TTLCache[str, list[float]] = TTLCache(maxsize=max_items, ttl=ttl_s, timer=clock)
        self._lock = threading.Lock()  # the Serve app answers in parallel threads; TTLCache is not thread-safe

    def __call__(self, item_ids: np.ndarray, at: pd.Timestamp) -> pd.DataFrame | None:
        ids = [str(i) for i in item_ids]
        with self._lock:
            known = {i: self._values[i] for i in ids if i in self._values}
        stale = [i for i in dict.fromkeys(ids) if i not in known]
        if stale:
            try:
                rows = self.read(stale)
            except Exception:  # the online store is down: rank without these features this time
                log.exception("online item features unavailable for %d items", len(stale))
                _source_failed(self)
                return None
            for item, row in zip(stale, rows, strict=True):
                known[item] = [np.nan if row.get(n) is None else float(row[n]) for n in self.names]
            with self._lock:
                self._values.update((i, known[i]) for i in stale)
        return pd.DataFrame([known[i] for i in ids], index=ids, columns=self.names)


class CustomerFeatureReader:
    """The customer's features in the request's channel from the online store, read on every request (they change
    with every purchase). ``source`` is ``omnicart.recommend.predictor.online_customer_features``; a failing read is
    logged and counted in ``failures``, and the customer then ranks with those features missing."""

    def __init__(self, source: Callable[[np.ndarray, list[str | None], pd.Timestamp], pd.DataFrame]) -> None:
        self.source = source
        self.failures = 0

    def __call__(self, customers: np.ndarray, channels: list[str | None], at: pd.Timestamp) -> pd.DataFrame | None:
        try:
            return self.source(customers, channels, at)
        except Exception:  # the online store is down: rank without these features this time
            log.exception("online customer features unavailable for %d customers", len(customers))
            _source_failed(self)
            return None


class RecommendRequestError(ValueError):
    """A request the service cannot answer as asked (an unknown context item): a 4xx naming the field."""

    def __init__(self, status_code: int, error: str, field: str) -> None:
        super().__init__(error)
        self.status_code, self.error, self.field = status_code, error, field

    def body(self) -> dict[str, str]:
        return {"error": self.error, "field": self.field}


class RecommendService:
    """Reads the customer's online features, asks the model, applies the rules; falls back instead of failing.

    ``load_model`` returns a ``omnicart.recommend.predictor.Recommender`` (or raises: the service then answers with
    ``popular``, see ``popular_items``); ``read_features`` returns the customer's online features; ``unavailable``
    the item ids that cannot be sold now. With ``precompute`` (the default) the model precomputes every known
    customer's ranking once here (``Recommender.prepare``), after the feature sources are wired, with the recent
    items the online store holds now (``read_features_many``: the online features of many customers in one read),
    and that of each customer ``newcomers(cut)`` names (e.g. those active since the model's cut) whose recent items
    the model knows."""

    def __init__(
        self,
        load_model: Callable[[], Any],
        read_features: Callable[[str], dict[str, Any]],
        model_version: str | None = None,
        *,
        unavailable: Callable[[], set[str]] = set,
        popular: list[dict[str, Any]] | None = None,
        item_features: ItemFeatureCache | None = None,
        customer_features: CustomerFeatureReader | None = None,
        precompute: bool = True,
        read_features_many: Callable[[list[str]], list[dict[str, Any]]] | None = None,
        on_fallback: Callable[[], None] = lambda: None,
        newcomers: Callable[[Any], list[str]] | None = None,
    ) -> None:
        self.fallbacks: Counter[str] = Counter()
        self.on_fallback = on_fallback  # told after each count (the replica reports its counters at once)
        # each outside feature source with the fallback reason its failure during a request is counted under
        self.sources = {
            "item_features_error": item_features,
            "customer_features_error": customer_features,
        }
        self.read_features = read_features
        self.unavailable = unavailable
        self.popular = popular or []
        self.model_version = model_version
        try:
            self.model = load_model()
        except Exception:  # no champion, or one that cannot load: answer from popularity until a redeploy
            log.exception("recommend model could not be loaded; serving popular items")
            self.model = None
        if self.model is not None and item_features is not None:
            self.model.use_item_features(item_features)
        if self.model is not None and customer_features is not None:
            self.model.use_customer_features(customer_features)
        if self.model is not None and precompute and hasattr(self.model, "prepare"):
            try:
                joined = newcomers(self.model.cut) if newcomers is not None else []
                self.model.prepare(recent_of=self._recent_of(read_features_many), newcomers=joined)
            except Exception:  # the live path still answers every request, only slower
                log.exception("could not precompute the recommend rankings; every request takes the live path")

    def _recent_of(
        self, read_many: Callable[[list[str]], list[dict[str, Any]]] | None
    ) -> Callable[[list[str]], list[list[str]]]:
        """Each customer's online ``recent_items`` now (one online read per block with ``read_many``), for the
        precomputed rankings; a customer whose read fails gets none there, and the live path answers them."""

        def recent_of(ids: list[str]) -> list[list[str]]:
            try:
                rows = read_many(ids) if read_many is not None else [self.read_features(i) for i in ids]
            except Exception:
                log.exception("online recent items unreadable at start; those customers take the live path")
                return [[] for _ in ids]
            return [list(row.get(F.recent_items) or []) for row in rows]

        return recent_of

    def _fallback(self, reason: str, customer_id: str) -> str:
        self.fallbacks[reason] += 1
        self.on_fallback()
        log.warning("recommend fallback %s for customer %s", reason, customer_id)
        return reason

    def recommend(self, request: RecommendRequest) -> RecommendResponse:
        cid = request.customer_id
        try:
            blocked = set(self.unavailable())
        except Exception:
            log.exception("availability unknown; only the request's exclusions apply")
            self._fallback("availability_error", cid)
            blocked = set()
        blocked |= set(request.exclude_items)
        if self.model is None:
            reason = self._fallback("no_model", cid)
            items = [i for i in self.popular if i[C.item_id] not in blocked]
            return self._respond(request, items, "popular", reason)
        context_item = request.context.item_id
        if context_item is not None and not self.model.known_item(context_item):
            raise RecommendRequestError(404, "unknown item", "context.item_id")

        fallback = None
        try:
            features = self.read_features(cid)
        except Exception:  # a feature store outage must not fail the request
            log.exception("online features unavailable for %s", cid)
            fallback = self._fallback("features_error", cid)
            features = {}
        recent = list(features.get(F.recent_items) or [])
        known = self.model.knows(cid) or bool(recent)
        source = "personal" if known else ("context" if context_item else "popular")
        if source == "popular":
            fallback = fallback or self._fallback("unknown_customer", cid)
        fetch = request.k * OVERFETCH + len(request.boost) + len(request.bury)
        failed: list[object] = []
        token = _FAILED_SOURCES.set(failed)
        rules_applied = False
        try:
            if source == "popular":
                items = self.model.popular(fetch, exclude=blocked)
            else:
                n_new = request.new_items

                def select(ranked: list[dict[str, Any]], new: int) -> list[dict[str, Any]]:
                    # the rules pick from the ranked items; only those picked are explained
                    return select_items(ranked, request.k - new, request.boost, request.bury, request.max_per_category)

                items = self.model.recommend(
                    cid,
                    fetch,
                    recent_items=recent,
                    context_item=context_item,
                    exclude=blocked,
                    discover=request.exclude_bought,
                    channel=request.context.channel,
                    new_items=n_new,
                    select=select,
                )
                rules_applied = True
        except Exception:
            log.exception("recommend model failed for %s", cid)
            fallback, source = self._fallback("model_error", cid), "popular"
            items = self.model.popular(fetch, exclude=blocked)
            rules_applied = False
        finally:
            _FAILED_SOURCES.reset(token)
        for reason, feature_source in self.sources.items():
            if feature_source is not None and any(f is feature_source for f in failed):
                fallback = fallback or self._fallback(reason, cid)
        return self._respond(request, items, source, fallback, rules_applied)

    def _respond(
        self,
        request: RecommendRequest,
        items: list[dict[str, Any]],
        source: str,
        fallback: str | None,
        rules_applied: bool = False,
    ) -> RecommendResponse:
        if rules_applied:  # the model picked with ``select_items``: only the featured mark is left to add
            picked = _mark_boosted(items[: request.k], request.boost)
        else:
            picked = apply_rules(items, request.k, request.boost, request.bury, request.max_per_category)
        return RecommendResponse(
            customer_id=request.customer_id,
            items=[
                RecommendedItem(**{k: v for k, v in i.items() if k in RecommendedItem.model_fields}) for i in picked
            ],
            source=source,
            fallback=fallback,
            model_version=self.model_version,
        )


def apply_rules(
    items: list[dict[str, Any]], k: int, boost: list[str], bury: list[str], max_per_category: int | None
) -> list[dict[str, Any]]:
    """The top ``k`` of the model's ranked ``items`` after the business rules: boosted items first and buried ones
    last (each keeping the model's order among themselves), then at most ``max_per_category`` per category."""
    return _mark_boosted(select_items(items, k, boost, bury, max_per_category), boost)


def select_items(
    items: list[dict[str, Any]], k: int, boost: list[str], bury: list[str], max_per_category: int | None
) -> list[dict[str, Any]]:
    """The items ``apply_rules`` keeps, in its order, as they are (without the featured mark)."""
    boosted, buried = set(boost), set(bury) - set(boost)

    def tier(item: dict[str, Any]) -> int:
        return 0 if item[C.item_id] in boosted else 2 if item[C.item_id] in buried else 1

    ordered = sorted(items, key=tier)  # stable: the model's order within a tier
    out: list[dict[str, Any]] = []
    per_category: Counter[str] = Counter()
    for item in ordered:
        if len(out) >= k:
            break
        category = item.get(C.category) or ""
        if max_per_category is not None and category and per_category[category] >= max_per_category:
            continue
        per_category[category] += 1
        out.append(item)
    return out


def _mark_boosted(items: list[dict[str, Any]], boost: list[str]) -> list[dict[str, Any]]:
    boosted = set(boost)
    return [
        {**item, "reason": f"{item['reason']} (featured by the shop)"} if item[C.item_id] in boosted else item
        for item in items
    ]


def popular_items(purchases: pd.DataFrame, catalog: pd.DataFrame, limit: int = 200) -> list[dict[str, Any]]:
    """Items by distinct buyers in ``purchases`` (customer_id, item_id), with their catalog title and category:
    the answer when no model can be loaded."""
    buyers = purchases.groupby(C.item_id)[C.customer_id].nunique().sort_values(ascending=False, kind="stable")
    info = catalog.drop_duplicates(C.item_id).set_index(C.item_id)
    out = []
    for item, n in buyers.head(limit).items():
        row = info.loc[item] if item in info.index else {}
        out.append(
            {
                C.item_id: str(item),
                C.title: str(row.get(C.title, "") or ""),
                C.category: str(row.get(C.category, "") or ""),
                "score": float(n),
                "reason": f"Popular: {n} customers bought it recently",
                "contributions": {},
            }
        )
    return out


def shop_state(settings: Any, days: int = 30) -> tuple[set[str], list[dict[str, Any]]]:
    """From the lake: the catalog items that cannot be sold now (no price on the latest price day) and the popular
    items of the last ``days`` days of purchases (the answer without a model)."""
    from omnicart import lake, schemas

    root = settings.lake_dir
    catalog = lake.read_table(root, schemas.ITEMS)
    unavailable: set[str] = set()
    price_days = lake.partitions(root, schemas.PRICES)
    if price_days and not catalog.empty:
        priced = set(lake.read_partition(root, schemas.PRICES, price_days[-1], columns=[C.item_id])[C.item_id])
        unavailable = set(catalog[C.item_id].astype(str)) - set(map(str, priced))
    event_days = lake.partitions(root, schemas.EVENTS)[-days:]
    if not event_days or catalog.empty:
        return unavailable, []
    events = lake.read_table(root, schemas.EVENTS, event_days[0], event_days[-1])
    buys = events[(events[C.event_type] == "purchase") & ~events[C.item_id].isin(unavailable)]
    return unavailable, popular_items(buys, catalog)


def active_since(settings: Any, cut: Any) -> list[str]:
    """The customers with an event in the lake on or after the day of ``cut`` (a model's training cut): those a
    model trained then may not know yet, whose recent items ``Recommender.prepare`` ranks ahead."""
    from omnicart import lake, schemas

    events = lake.read_table(settings.lake_dir, schemas.EVENTS, start=pd.Timestamp(cut).date(), columns=[C.customer_id])
    return sorted(events[C.customer_id].dropna().astype(str).unique())


def time_requests(service: RecommendService, requests: Sequence[RecommendRequest]) -> dict[str, float]:
    """In-process latency of ``service.recommend`` over ``requests``, one at a time: p50, p99 and mean in ms (the
    handler's own cost, without HTTP; a benchmark calls it with a warm service)."""
    spent = []
    for request in requests:
        started = time.perf_counter()
        service.recommend(request)
        spent.append(time.perf_counter() - started)
    ms = np.array(spent) * 1000.0
    return {
        "n": float(len(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }
