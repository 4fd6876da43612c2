"""Security at the edge, without Ray: the app built by ``create_api`` over stub services answers 401 before it
reads a body, 413 above the size limit (declared or streamed), 422 for unknown fields, a bare /health without a
key, and documents all of it in OpenAPI."""

from __future__ import annotations

from collections import Counter

import pytest
from fastapi.testclient import TestClient

from omnicart.settings import Settings
from serving.app import create_api
from serving.recommend import RecommendResponse
from serving.security import key_is_valid
from serving.tally import sum_snapshots

KEY = "test-api-key"
LIMIT = 2_000
OK = {"X-API-Key": KEY}
UNAUTHORISED = {"error": "missing or invalid API key", "field": "X-API-Key"}
TOO_LARGE = {"error": "request body too large", "field": None}
PROTECTED = [
    ("/recommend", {"customer_id": "C1"}),
    ("/price", {"product_id": "I1"}),
    ("/price/batch", {"items": [{"product_id": "I1"}]}),
    ("/events", {"customer_id": "C1", "event_type": "view"}),
    ("/support/answer", {"question": "hours?"}),
    ("/support/answer/batch", {"requests": [{"question": "hours?"}]}),
    ("/support/feedback", {"request_id": "r1", "helpful": True}),
]


class StubRecommender:
    model_version = "7"

    def __init__(self) -> None:
        self.fallbacks: Counter[str] = Counter(unknown_customer=2)
        self.asked: list = []

    def recommend(self, request):
        self.asked.append(request)
        return RecommendResponse(customer_id=request.customer_id, items=[], source="popular", model_version="7")


class StubLog:
    counts = Counter(logged=3)

    def __init__(self) -> None:
        self.logged: list = []

    def recommend(self, request, answer, latency_ms=None) -> None:
        self.logged.append(request)


OTHER_REPLICA = {"fallbacks.recommend": {"unknown_customer": 1, "model_error": 1}, "prediction_log": {"logged": 4}}


class StubBackend:
    """The services the handlers use; no pricing or support champion yet."""

    def __init__(self, tmp_path) -> None:
        self.settings = Settings(home=tmp_path, max_body_bytes=LIMIT)
        self.api_key = KEY
        self.predictions = StubLog()
        self.recommender = StubRecommender()
        self.pricer = None
        self.support = None
        self.store = None
        self.price_period = None

    async def answer_together(self, request):
        raise AssertionError("no support champion: never reached")

    async def price_together(self, request):
        raise AssertionError("no pricing champion: never reached")

    async def counters(self):
        mine = {
            "fallbacks.recommend": dict(self.recommender.fallbacks),
            "prediction_log": dict(self.predictions.counts),
        }
        return sum_snapshots([mine, OTHER_REPLICA])


@pytest.fixture
def backend(tmp_path) -> StubBackend:
    return StubBackend(tmp_path)


@pytest.fixture
def client(backend) -> TestClient:
    return TestClient(create_api(lambda: backend))


def test_key_compared_in_constant_time_and_only_equal_keys_pass() -> None:
    assert key_is_valid(KEY, KEY) and key_is_valid(KEY.encode(), KEY)
    assert not key_is_valid(None, KEY) and not key_is_valid("", KEY) and not key_is_valid(KEY + "x", KEY)
    assert not key_is_valid("", "")  # an unset key lets nobody in
    assert not key_is_valid("kéy", KEY)  # a non-ASCII header is a wrong key, not a crash


@pytest.mark.parametrize(("path", "body"), PROTECTED)
def test_every_protected_endpoint_wants_the_key_before_the_body(client, path, body) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}):
        for payload in (body, {"unknown": 1}, "not json"):  # valid, invalid and unparseable bodies alike
            kwargs = {"json": payload} if isinstance(payload, dict) else {"content": payload}
            response = client.post(path, headers=headers, **kwargs)
            assert response.status_code == 401, (path, headers, payload, response.text)
            assert response.json() == UNAUTHORISED


def test_a_huge_body_without_a_key_is_401_not_422_or_413(client, backend) -> None:
    huge = b'{"customer_id": "' + b"x" * 6_000_000 + b'"}'
    response = client.post("/recommend", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 401 and response.json() == UNAUTHORISED
    assert backend.recommender.asked == []


def test_a_body_over_the_limit_is_413_from_its_content_length(client, backend) -> None:
    body = {"customer_id": "C1", "exclude_items": ["x" * 100] * 30}  # ~3.3 kB > LIMIT
    response = client.post("/recommend", json=body, headers=OK)
    assert response.status_code == 413 and response.json() == TOO_LARGE
    assert backend.recommender.asked == []
    # just under the limit passes
    small = client.post("/recommend", json={"customer_id": "C1", "exclude_items": ["x" * 100] * 10}, headers=OK)
    assert small.status_code == 200, small.text


def test_a_chunked_body_over_the_limit_is_413_while_streaming(client, backend) -> None:
    sent = []

    def chunks():
        for _ in range(10):  # 10 x 500 bytes, no Content-Length: counted as it arrives
            sent.append(1)
            yield b" " * 500

    response = client.post("/recommend", content=chunks(), headers={**OK, "Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413 and response.json() == TOO_LARGE
    assert backend.recommender.asked == []


def test_a_chunked_body_under_the_limit_is_answered(client, backend) -> None:
    def chunks():
        yield b'{"customer_id": '
        yield b'"C1", "k": 3}'

    response = client.post("/recommend", content=chunks(), headers={**OK, "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert backend.recommender.asked[0].k == 3


def test_a_lying_content_length_is_rejected(client) -> None:
    response = client.post("/recommend", content=b"{}", headers={**OK, "Content-Length": "many"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/recommend", {"customer_id": "C1", "top_k": 5}, "top_k"),
        ("/recommend", {"customer_id": "C1", "context": {"item_id": "I1", "page": "home"}}, "context.page"),
        ("/price", {"product_id": "I1", "discount": 0.1}, "discount"),
        ("/price/batch", {"items": [{"product_id": "I1"}], "qty": 2}, "qty"),  # an item's own fields: its slot
        ("/support/answer", {"question": "hours?", "lang": "en"}, "lang"),
        ("/support/answer/batch", {"requests": [{"question": "hours?", "lang": "en"}]}, "requests.0.lang"),
        ("/support/feedback", {"request_id": "r1", "helpful": True, "stars": 5}, "stars"),
        ("/events", {"customer_id": "C1", "event_type": "view", "extra": 1}, "extra"),
    ],
)
def test_unknown_fields_are_rejected_everywhere_naming_the_field(client, path, body, field) -> None:
    response = client.post(path, json=body, headers=OK)
    assert response.status_code == 422, response.text
    fields = {f["field"]: f["type"] for f in response.json()["fields"]}
    assert fields.get(field) == "extra_forbidden", fields


def test_health_is_bare_without_a_valid_key_and_detailed_with_it(client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/health", headers={"X-API-Key": "wrong"}).json() == {"status": "ok"}
    detailed = client.get("/health", headers=OK).json()
    assert detailed == {
        "status": "ok",
        "models": {"recommend": "7", "pricing": None, "support": None},
        "fallbacks": {"recommend": {"unknown_customer": 3, "model_error": 1}},  # summed over both replicas
        "prediction_log": {"logged": 7},
    }


def test_docs_need_no_key(client) -> None:
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_a_family_without_champion_is_503_with_an_error_body(client) -> None:
    for path, body in [("/price", {"product_id": "I1"}), ("/support/answer", {"question": "hours?"})]:
        response = client.post(path, json=body, headers=OK)
        assert response.status_code == 503
        assert response.json()["field"] is None and "champion" in response.json()["error"]


def test_a_valid_request_reaches_the_service_and_the_log(client, backend) -> None:
    response = client.post("/recommend", json={"customer_id": "C1", "k": 4}, headers=OK)
    assert response.status_code == 200 and response.json()["source"] == "popular"
    assert [r.k for r in backend.recommender.asked] == [4] and len(backend.predictions.logged) == 1


def test_openapi_declares_the_key_scheme_and_every_error_status(client) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": spec["components"]["securitySchemes"]["apiKey"]["description"],
    }
    schemas = spec["components"]["schemas"]
    assert set(schemas["ErrorBody"]["properties"]) == {"error", "field"}
    expected = {
        "/recommend": {401, 404, 413, 422, 503},  # 503: every protected endpoint sheds load
        "/price": {401, 404, 413, 422, 503},
        "/price/batch": {401, 404, 413, 422, 503},
        "/events": {401, 404, 410, 413, 422, 503},
        "/support/answer": {401, 413, 422, 503},
        "/support/answer/batch": {401, 413, 422, 503},
        "/support/feedback": {401, 413, 422, 503},
    }
    for path, statuses in expected.items():
        operation = spec["paths"][path]["post"]
        assert operation["security"] == [{"apiKey": []}], path
        assert not any(p["name"].lower() == "x-api-key" for p in operation.get("parameters", [])), path
        documented = {int(s) for s in operation["responses"] if s != "200"}
        assert documented == statuses, path
        for status in statuses:
            ref = operation["responses"][str(status)]["content"]["application/json"]["schema"]["$ref"]
            field_list = status == 422 or (status == 404 and path.startswith("/price"))  # pricing's 404s name fields
            model = "InvalidRequestBody" if field_list else "ErrorBody"
            assert ref.endswith("/" + model), (path, status, ref)
    health = spec["paths"]["/health"]["get"]
    assert {} in health["security"] and {"apiKey": []} in health["security"]  # optional: more with a key
    assert "HTTPValidationError" not in schemas  # FastAPI's default 422 body is not what we answer


def test_a_body_that_is_no_utf8_json_is_a_422_naming_the_body(client) -> None:
    """FastAPI answers bytes it cannot decode with its own 400 {"detail": ...}; this API names the body (found by
    schemathesis)."""
    for body in (b"\xf0\x07\xca\xae#\xff", b"\x80"):
        response = client.post("/recommend", content=body, headers={**OK, "Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["fields"] == [
            {"field": "body", "message": "the body is not UTF-8 JSON", "type": "json_invalid"}
        ]


def test_an_unknown_route_or_method_answers_in_the_error_shape(client) -> None:
    missing = client.get("/nowhere", headers=OK)
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found", "field": None}
    wrong = client.get("/recommend", headers=OK)
    assert wrong.status_code == 405 and wrong.json()["field"] is None and "POST" in wrong.headers["allow"]
