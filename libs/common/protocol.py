"""Malformed HTTP answered with the contract's problem+json, not aiohttp's plain text.

aiohttp parses a request head in its connection protocol (`aiohttp.web_protocol.RequestHandler`)
before any middleware runs. A head it cannot parse — a header line over `max_field_size`, more
than `max_headers` fields, a bad request line, an invalid Content-Length, a NUL in a header —
never reaches the app: `RequestHandler.handle_error` answers a text/plain 400 whose body is the
parser's message, and logs the exception on `aiohttp.server`. That message quotes the offending
bytes, so a header carrying a token would reach both the response and the log.

`ProblemRequestHandler` answers those with problem+json (431 `HEADER_FIELDS_TOO_LARGE` for header
fields too large, RFC 6585 §5; 400 `VALIDATION_FAILED` otherwise) and logs only the kind of error.
aiohttp (3.14) has no public hook for this (aio-libs/aiohttp#3287, open): `answer_malformed_http`
makes the `web.Server` an app is served by build our handler, whichever runner serves it
(`web.run_app`, `web.AppRunner`, the test server).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from libs.common.errors import (
    BadRequest,
    HeaderFieldsTooLarge,
    Internal,
    PorticoError,
    UpstreamTimeout,
)
from libs.common.http import REQUEST_ID, REQUEST_ID_HEADER, problem_response, sane_request_id

__all__ = [
    "MAX_FIELD_SIZE",
    "MAX_HEADERS",
    "MAX_LINE_SIZE",
    "ProblemRequestHandler",
    "ProblemServer",
    "answer_malformed_http",
]

# Head limits. The request line keeps aiohttp's default; a header line may be longer (big
# cookies, JWTs). The two must differ: the limit a `LineTooLong` names is how we tell a header
# too large (431) from a request line too long (400).
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 16 * 1024
MAX_HEADERS = 128
# Both aiohttp parsers (C and pure Python) raise `BadHttpMessage` with this text.
_TOO_MANY_HEADERS = "Too many headers"

_log = structlog.get_logger("portico.http")


def _problem_for(handler: RequestHandler, exc: HttpProcessingError) -> PorticoError:
    """The contract error for a head the parser refused; its detail never quotes the request."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == handler.max_line_size and limit != handler.max_field_size:
            return BadRequest(f"the request line is longer than {limit} bytes")
        return HeaderFieldsTooLarge(f"a header field is longer than {handler.max_field_size} bytes")
    if exc.message.startswith(_TOO_MANY_HEADERS):
        return HeaderFieldsTooLarge(f"more than {handler.max_headers} header fields")
    if isinstance(exc, BadStatusLine | InvalidURLError):  # BadHttpMethod is a BadStatusLine
        return BadRequest("the request line is malformed")
    return BadRequest("the request is not valid HTTP")


def _quotes_the_request(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) carries a parser message, i.e. bytes of the request."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection protocol, with the errors it answers itself rendered as problem+json.

    `handle_error` is aiohttp's one exit for those: heads the parser refused (400) and exceptions
    that escaped the app (500, 504 on a timeout) — ours catch everything, so mostly the former.
    """

    __slots__ = ("problem_headers",)

    def __init__(
        self, manager: web.Server, *, problem_headers: Sequence[tuple[str, str]] = (), **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self.problem_headers = tuple(problem_headers)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer with problem+json and close; log the error's kind, never the parser's message."""
        error: PorticoError
        if isinstance(exc, HttpProcessingError):
            error = _problem_for(self, exc)
            # The head was not parsed, so there is no client request id to honour.
            request_id = sane_request_id(None)
            # A bad method opening a connection is mostly TLS or another protocol knocking on
            # the port (aiohttp logs those at debug too); the rest is worth a line.
            knock = self._request_count == 1 and isinstance(exc, BadHttpMethod)
            log = _log.debug if knock else _log.info
            log("malformed request", status=error.status, code=error.code,
                error=type(exc).__name__, request_id=request_id)  # fmt: skip
        else:
            error = UpstreamTimeout() if status == 504 else Internal(status=max(status, 500))
            known: str | None = request.get(REQUEST_ID)
            request_id = known or sane_request_id(request.headers.get(REQUEST_ID_HEADER))
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:
            # As aiohttp: part of a response is out, the connection can only be dropped.
            raise ConnectionError("the response was already started; dropping the connection")
        response = problem_response(error, request_id)
        response.headers[REQUEST_ID_HEADER] = request_id
        for name, value in self.problem_headers:
            response.headers[name] = value
        response.force_close()  # the parser's state is unknown after an error: start afresh
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's error log line, minus the exception when its message quotes the request
        (a broken body's `RequestPayloadError` met while aiohttp drains it, for one)."""
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException) and _quotes_the_request(exc):
            _log.info("error handling request", error=type(exc).__name__)
            return
        super().log_exception(*args, **kw)


class ProblemServer(web.Server):
    """`web.Server` whose connections are `ProblemRequestHandler`s."""

    problem_headers: tuple[tuple[str, str], ...] = ()

    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(
            self, loop=self._loop, problem_headers=self.problem_headers, **self._kwargs
        )


_MIXED: dict[type[web.Server], type[ProblemServer]] = {}


def _with_problems(server_class: type[web.Server]) -> type[ProblemServer]:
    # Another hook's server class (gateway/front.py's FrontServer hands connections it does not
    # serve to `super().__call__()`) gets ProblemServer right below it in the MRO, so the
    # connections it hands over are ours too.
    mixed = _MIXED.get(server_class)
    if mixed is None:
        name = f"Problem{server_class.__name__}"
        mixed = _MIXED[server_class] = type(name, (server_class, ProblemServer), {})
    return mixed


def answer_malformed_http(app: web.Application, *, headers: Sequence[tuple[str, str]] = ()) -> None:
    """Serve `app` through `ProblemServer`: malformed HTTP gets problem+json (plus `headers`).

    Call it last when another hook also replaces the app's server class (gateway/front.py).
    """
    # `Application._make_handler` is what every runner calls to build the app's `web.Server`
    # (aiohttp 3.14); there is no public hook for the connection protocol (aiohttp#3287). The
    # server aiohttp builds (with every handler_arg merged) is retyped, not rebuilt:
    # ProblemServer adds only `__call__` and the headers it hands its connections.
    make_handler = app._make_handler
    extra = tuple(headers)

    def make(**kwargs: Any) -> web.Server:
        server = make_handler(**kwargs)
        kind = type(server)
        if not issubclass(kind, ProblemServer):
            server.__class__ = ProblemServer if kind is web.Server else _with_problems(kind)
        cast(ProblemServer, server).problem_headers = extra
        return server

    app._make_handler = make  # type: ignore[method-assign]
