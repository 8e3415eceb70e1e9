"""aiohttp plumbing every process shares: request ids, metrics + access log, problem+json errors,
JSON parsing and rendering, and the identity forwarded by the gateway."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from pydantic import BaseModel, ValidationError
from pymongo.errors import PyMongoError

from libs.common.errors import (
    BadRequest,
    Conflict,
    Internal,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PorticoError,
    Unauthenticated,
    UnsupportedMediaType,
    UpstreamUnavailable,
)
from libs.common.identity import IDENTITY_HEADER, IdentityError, Principal, verify_identity
from libs.common.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS
from libs.common.transient import is_database_unreachable, is_transient_conflict

__all__ = [
    "MAX_JSON_BODY",
    "PRINCIPAL",
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "Handler",
    "error_middleware",
    "field_errors",
    "identity_middleware",
    "json_response",
    "observe_middleware",
    "optional_principal",
    "parse",
    "parse_query",
    "principal",
    "problem_parts",
    "problem_response",
    "request_id_of",
    "route_template",
    "sane_request_id",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
MAX_JSON_BODY = 1024 * 1024
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_log = structlog.get_logger("portico.http")


def sane_request_id(value: str | None) -> str:
    """The client's request id when it is short and printable, else a fresh one."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def request_id_of(request: web.Request) -> str | None:
    value: str | None = request.get(REQUEST_ID)
    return value


def route_template(request: web.Request) -> str:
    """The matched route's template (`/api/v1/users/{id}`), never the raw path."""
    match_info = request.match_info
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    return str(resource.canonical)


def problem_parts(error: PorticoError, request_id: str | None) -> tuple[bytes, CIMultiDict[str]]:
    """A domain error's RFC 9457 problem+json body and headers, never to be stored by a cache:
    an error is about this moment (a 404 before an invitation is accepted, a 429, a 503), and a
    stored one would outlive its cause with nothing to purge it."""
    headers = CIMultiDict({"Content-Type": "application/problem+json", "Cache-Control": "no-store"})
    headers.update(error.headers)
    return orjson.dumps(error.to_problem(request_id)), headers


def problem_response(error: PorticoError, request_id: str | None) -> web.Response:
    """`problem_parts` as an aiohttp response."""
    body, headers = problem_parts(error, request_id)
    return web.Response(body=body, status=error.status, headers=headers)


def _http_exception_to_error(exc: web.HTTPException) -> PorticoError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound()
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(allowed=list(exc.allowed_methods))
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge()
    if exc.status == 401:
        return Unauthenticated()
    if exc.status == 415:
        return UnsupportedMediaType()
    return BadRequest(status=exc.status) if exc.status < 500 else Internal(status=exc.status)


def observe_middleware(service: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Outermost: request id, metrics by route template, and one access-log line per request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = sane_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        except asyncio.CancelledError:
            # The client went away mid-request (aiohttp cancels the handler): nginx's 499, not a
            # 500 that error-rate alerts would count against the service.
            status = 499
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(request)
            labels = (service, route, request.method, str(status))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_REQUEST_DURATION.labels(*labels).observe(elapsed)
            who = request.get(PRINCIPAL)
            _log.info(
                "request",
                method=request.method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                principal_id=who.id if who is not None else None,
            )
            structlog.contextvars.unbind_contextvars("request_id")

    return middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes problem+json; unexpected ones are logged and hidden as 500."""
    try:
        return await handler(request)
    except PorticoError as exc:
        return problem_response(exc, request_id_of(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _http_exception_to_error(exc)
        return problem_response(error, request_id_of(request))
    except RequestPayloadError as exc:
        # The body broke on the way in (bad chunking, an undecodable Content-Encoding): the
        # client's fault. aiohttp's message can quote the body's bytes, so only its kind is logged.
        _log.info("malformed request body", route=route_template(request),
                  error=type(exc.__cause__ or exc).__name__)  # fmt: skip
        response = problem_response(
            BadRequest("the request body is malformed"), request_id_of(request)
        )
        # The rest of the body cannot be read past the error, so the connection cannot carry
        # another request: say so, or a keep-alive client (the gateway) reuses a closing socket.
        response.force_close()
        return response
    except (PyMongoError, RuntimeError) as exc:
        if is_database_unreachable(exc):
            # Down, restarting, failing over: the client may retry, so it is a 503 like any
            # other unavailable dependency, not an opaque 500.
            _log.warning("database unreachable", route=route_template(request),
                         error=type(exc).__name__)  # fmt: skip
            return problem_response(UpstreamUnavailable(), request_id_of(request))
        if is_transient_conflict(exc):
            # A transaction lost a race and was not retried where it ran: the client may retry.
            _log.warning("write conflict", route=route_template(request))
            return problem_response(
                Conflict("the resource was changed concurrently; try again"),
                request_id_of(request),
            )
        _log.exception("unhandled error", route=route_template(request))
        return problem_response(Internal(), request_id_of(request))
    except Exception:
        # The route template, not the path: paths can carry secrets (invitation tokens).
        _log.exception("unhandled error", route=route_template(request))
        return problem_response(Internal(), request_id_of(request))


def identity_middleware(secret: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Verify the gateway's identity assertion when present; a bad one is a 401."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        value = request.headers.get(IDENTITY_HEADER)
        if value:
            try:
                request[PRINCIPAL] = verify_identity(value, secret)
            except IdentityError:
                raise Unauthenticated("invalid identity") from None
        return await handler(request)

    return middleware


def principal(request: web.Request) -> Principal:
    """The caller, or 401 when the request carries no verified identity."""
    who: Principal | None = request.get(PRINCIPAL)
    if who is None:
        raise Unauthenticated()
    return who


def optional_principal(request: web.Request) -> Principal | None:
    who: Principal | None = request.get(PRINCIPAL)
    return who


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic errors as the contract's `errors: [{field, message}]`."""
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "body"
        out.append({"field": field, "message": error["msg"]})
    return out


async def parse(request: web.Request, model: type[M], *, max_size: int = MAX_JSON_BODY) -> M:
    """Read a JSON body (capped, 413 beyond) and validate it into `model` (422 on failure)."""
    if request.content_length is not None and request.content_length > max_size:
        raise PayloadTooLarge(f"JSON bodies are limited to {max_size} bytes")
    if request.content_type not in ("application/json", "") and not request.content_type.endswith(
        "+json"
    ):
        raise UnsupportedMediaType("expected application/json")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        raw.extend(chunk)
        if len(raw) > max_size:
            raise PayloadTooLarge(f"JSON bodies are limited to {max_size} bytes")
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(errors=field_errors(exc)) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """Validate query parameters into `model`; repeated keys keep their last value."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise InvalidInput("invalid query parameters", errors=field_errors(exc)) from None


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(type(obj).__name__)


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Serialize with orjson; pydantic models are dumped in JSON mode (RFC 3339 datetimes)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return web.Response(
        body=orjson.dumps(data, default=_default),
        status=status,
        content_type="application/json",
        headers=headers,
    )
