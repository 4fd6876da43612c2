"""Security at the edge: the API key and the body size limit, checked before any route reads a byte of the body.

FastAPI resolves a route's dependencies and validates its body together, so a key checked in a dependency comes
too late (a 6 MB body without a key would get field errors). ``EdgeGuard`` is a pure ASGI middleware in front of
every route: it answers 401 for a missing or wrong key and 413 for a body over the limit, before the app reads it.
``api_key_scheme`` only declares the same key as the ``apiKey`` security scheme in OpenAPI. ``LoadShedder``, behind
it, bounds the requests a replica runs and holds, and answers the rest 503 with ``Retry-After`` at once.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import Any

from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_KEY_HEADER = "X-API-Key"
# Reachable without a key: liveness (which then shows only {"status": "ok"}) and the API docs.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
KEY_VALID = "omnicart.api_key_valid"  # the scope entry where EdgeGuard leaves its verdict for open paths

api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="apiKey",
    description="The platform's API key (in demo mode: .omnicart/secrets/api_key).",
    auto_error=False,  # EdgeGuard rejects first; this only documents the scheme
)


class ErrorBody(BaseModel):
    """Every error answer except 422: what went wrong, and the input it is about (if one)."""

    error: str = Field(description="What went wrong, in plain words.")
    field: str | None = Field(description="The offending input (header or body field), if one.")


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the field, e.g. 'context.item_id' or 'items.2.cost'.")
    message: str
    type: str = Field(description="The pydantic error type, e.g. 'missing' or 'extra_forbidden'.")


class InvalidRequestBody(BaseModel):
    """422 (and pricing's 404): each offending field of the body."""

    error: str = "invalid request"
    fields: list[FieldError]


UNAUTHORISED = ErrorBody(error="missing or invalid API key", field=API_KEY_HEADER)
TOO_LARGE = ErrorBody(error="request body too large", field=None)
OVERLOADED = ErrorBody(error="overloaded: too many requests in progress; retry after the Retry-After delay", field=None)
_DESCRIPTIONS = {
    401: "Missing or invalid API key (checked before the body is read).",
    404: "Unknown item, product, store or customer; the body names the field.",
    410: "The customer asked to be erased; nothing is stored.",
    413: "Request body over the size limit (setting max_body_bytes).",
    422: "Invalid body; each offending field is named.",
    503: "No champion of this family is deployed yet, or the service is overloaded (then with Retry-After).",
}


def error_responses(*statuses: int, invalid: tuple[int, ...] = (422,)) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses; those in ``invalid`` carry field lists, the others ErrorBody."""
    return {
        status: {"model": InvalidRequestBody if status in invalid else ErrorBody, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


def key_is_valid(given: bytes | str | None, expected: str) -> bool:
    """The one place the API key is compared: in constant time, so response times tell nothing about the key."""
    if given is None or not expected:
        return False
    if isinstance(given, str):
        given = given.encode("latin-1", errors="replace")
    return hmac.compare_digest(given, expected.encode("latin-1", errors="replace"))


class _BodyTooLarge(Exception):
    pass


class EdgeGuard:
    """Pure ASGI middleware: the key (401) first, then the body size (413, from Content-Length and while streaming).

    ``api_key`` and ``max_body_bytes`` are read per request, so the app can be built before its settings exist
    (Serve freezes the app at import; the replica knows its settings only once constructed).
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: Callable[[], str],
        max_body_bytes: Callable[[], int],
        open_paths: frozenset[str] = OPEN_PATHS,
    ) -> None:
        self.app, self.api_key, self.max_body_bytes, self.open_paths = app, api_key, max_body_bytes, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # lower-case names; of a repeated header, the last
        valid = key_is_valid(headers.get(API_KEY_HEADER.lower().encode()), self.api_key())
        if scope["path"] in self.open_paths:
            scope[KEY_VALID] = valid
        elif not valid:
            await _reply(send, 401, UNAUTHORISED)
            return
        limit = self.max_body_bytes()
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > limit
            except ValueError:
                await _reply(send, 400, ErrorBody(error="invalid Content-Length", field="Content-Length"))
                return
            if too_large:
                await _reply(send, 413, TOO_LARGE)
                return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app, counting body bytes as it reads them (a chunked body declares no length)."""
        received = 0
        tripped = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if tripped:  # whatever the app makes of the aborted read (FastAPI: a 400), the answer is 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not tripped:
                raise
        if tripped and not started:
            await _reply(send, 413, TOO_LARGE)


class LoadShedder:
    """Pure ASGI middleware: a replica runs at most ``max_ongoing`` requests at once and holds at most ``max_queued``
    more waiting; any further one is answered 503 at once, with ``Retry-After`` and a JSON ``ErrorBody``.

    Serve's own ``max_queued_requests`` answers back-pressure in its proxy with a plain-text body, which no setting
    changes; shedding here, in the replica, gives the one error shape of this API. ``limits`` returns
    ``(max_ongoing, max_queued, retry_after_s)`` and is read per request, like EdgeGuard's settings; the first request
    fixes ``max_ongoing`` for the replica's life (a new setting comes with a redeploy). ``exempt`` paths (liveness,
    docs) are never queued or shed.
    """

    def __init__(
        self, app: ASGIApp, limits: Callable[[], tuple[int, int, int]], exempt: frozenset[str] = OPEN_PATHS
    ) -> None:
        self.app, self.limits, self.exempt = app, limits, exempt
        self._slots: asyncio.Semaphore | None = None
        self.waiting = 0
        self.shed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        max_ongoing, max_queued, retry_after_s = self.limits()
        if self._slots is None:
            self._slots = asyncio.Semaphore(max_ongoing)
        if self._slots.locked() and self.waiting >= max_queued:
            self.shed += 1
            await _reply(send, 503, OVERLOADED, retry_after_s=retry_after_s)
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()


async def _reply(send: Send, status: int, body: BaseModel, retry_after_s: int | None = None) -> None:
    """A JSON answer sent straight from the middleware; the request body stays unread."""
    content = json.dumps(body.model_dump()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
