"""App factory of the gateway: one catch-all handler runs the whole edge pipeline.

route match -> CORS preflight -> method check -> size check -> authentication -> rate limit ->
local handler | cache stage | streaming proxy -> security/CORS/rate headers -> access log.
No middleware chain: the pipeline is one coroutine, which keeps the per-request cost low.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gateway import front
from gateway.accesslog import AccessLog
from gateway.admin import admin_ctx
from gateway.auth import Authenticator, Jwks, Verified
from gateway.edge import CLIENT_IP, EDGE, SECURITY_HEADERS, Edge, client_ip
from gateway.events import events_ctx
from gateway.openapi import DOCS_HTML, OpenApiAggregator
from gateway.proxy import (
    HOP_BY_HOP,
    ClientGone,
    body_chunks,
    forward_headers,
    raw_headers,
    relay,
    send_upstream,
)
from gateway.resp import RespClient
from gateway.revocation import MGetClient, RevocationListener
from gateway.routing import Route, RouteTable, RouteTableError, load_route_table
from gateway.settings import Settings, split_list
from gateway.stages import CacheStageLike, RateLimitStageLike
from gateway.tally import RequestTally, flush_all
from gateway.upstreams import CircuitBreaker, RetryBudget, Upstream, UpstreamPools
from libs.common.errors import (
    Forbidden,
    Internal,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PorticoError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from libs.common.http import PRINCIPAL, REQUEST_ID, problem_response, sane_request_id
from libs.common.identity import Principal
from libs.common.protocol import (
    MAX_FIELD_SIZE,
    MAX_HEADERS,
    MAX_LINE_SIZE,
    answer_malformed_http,
)
from libs.common.redis import connect_redis

__all__ = ["GATEWAY", "Gateway", "create_app", "reload_routes"]

_log = structlog.get_logger("portico.gateway")
LocalHandler = Callable[[web.Request, Principal | None], Awaitable[web.StreamResponse]]
MAX_CACHED_BODY = 8 * 1024 * 1024


def _optional_models() -> tuple[Any, Any]:
    """The cache and rate-limit policy models, when those modules are installed."""

    def load(module: str, name: str) -> Any:
        try:
            return getattr(importlib.import_module(module), name, None)
        except ImportError:
            return None

    return load("gateway.cache", "CachePolicy"), load("gateway.ratelimit", "RateLimitConfig")


@dataclass(slots=True)
class Gateway:
    """Everything the request pipeline needs; `table` is swapped atomically on reload."""

    settings: Settings
    table: RouteTable
    pools: UpstreamPools
    auth: Authenticator
    edge: Edge
    openapi: OpenApiAggregator
    revocations: MGetClient
    ratelimit: RateLimitStageLike | None = None
    cache: CacheStageLike | None = None
    local: dict[str, LocalHandler] = field(default_factory=dict)
    own: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(
        default_factory=dict
    )
    readiness: dict[str, Callable[[], Awaitable[object]]] = field(default_factory=dict)
    draining: bool = False
    access_log: AccessLog | None = None
    tally: RequestTally = field(default_factory=RequestTally)


GATEWAY = web.AppKey("gateway", Gateway)


def load_table(settings: Settings, path: Path | None = None) -> RouteTable:
    """Load and validate the route table (raises RouteTableError naming the bad entry)."""
    cache_policy, rate_config = _optional_models()
    return load_route_table(
        path or settings.routes_file,
        upstreams=set(settings.upstream_urls()),
        local_handlers=set(LOCAL_HANDLERS),
        cache_policy=cache_policy,
        rate_limit_config=rate_config,
    )


def reload_routes(app: web.Application, path: Path | None = None) -> bool:
    """Re-read routes.yaml (SIGHUP); a bad file keeps the current table and logs why."""
    gateway = app[GATEWAY]
    try:
        table = load_table(gateway.settings, path)
    except RouteTableError as exc:
        _log.error("route table reload rejected; keeping the current table", reason=str(exc))
        return False
    gateway.table = table  # one reference swap: in-flight requests keep the table they matched
    _log.info("route table reloaded", routes=len(table.routes), source=table.source)
    return True


# -- the request pipeline ---------------------------------------------------------------------


def _suspicious(raw_path: str) -> bool:
    # Encoded slashes/backslashes/dots could smuggle a path past the matcher (e.g. to /internal).
    path = raw_path.partition("?")[0]
    if "%" in path:
        lowered = path.lower()
        if "%2f" in lowered or "%5c" in lowered or "%2e" in lowered or "%00" in lowered:
            return True
    return "/./" in path or "/../" in path or path.endswith("/..") or "\\" in path


async def handle(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    started = time.perf_counter()
    given = request.headers.get("X-Request-ID")
    request_id = sane_request_id(given) if given is not None else _next_request_id()
    request[REQUEST_ID] = request_id
    label = ["unmatched"]
    status = 500
    response: web.StreamResponse | None = None
    decorated = False
    try:
        try:
            response = await _pipeline(request, gateway, request_id, label)
            # A relayed response already carries the request id and the edge headers.
            decorated = request.get(_PREPARED, False)
        except PorticoError as exc:
            response = problem_response(exc, request_id)
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if request.get(_PREPARED):
                status = 499 if isinstance(exc, ClientGone) else 502
                raise  # mid-stream: nothing sane to send, the connection is dropped
            response = problem_response(UpstreamUnavailable(), request_id)
        except TimeoutError:
            if request.get(_PREPARED):
                status = 502
                raise
            response = problem_response(UpstreamTimeout(), request_id)
        except Exception:
            if request.get(_PREPARED):
                status = 502
                raise
            _log.exception("unhandled gateway error", request_id=request_id)
            response = problem_response(Internal(), request_id)
        status = response.status
        if not response.prepared and not decorated:
            response.headers["X-Request-ID"] = request_id
            gateway.edge.decorate(request, response.headers)
        return response
    finally:
        elapsed = time.perf_counter() - started
        gateway.tally.add(label[0], request.method, status, elapsed)
        if gateway.access_log is not None:
            who = request.get(PRINCIPAL)
            gateway.access_log.request(
                request_id=request_id, method=request.method, route=label[0],
                status=status, duration_ms=round(elapsed * 1000, 3),
                principal_id=who.id if who is not None else None,
            )  # fmt: skip


_PREPARED = web.RequestKey("gateway_prepared", bool)
# A random per-process prefix plus a counter: unique like a uuid4, without a getrandom(2) syscall
# and uuid object per request.
_ID_PREFIX = [os.urandom(8).hex()]
_ID_COUNTER = itertools.count(1)
# Forked workers must not share the parent's prefix.
os.register_at_fork(after_in_child=lambda: _ID_PREFIX.__setitem__(0, os.urandom(8).hex()))


def _next_request_id() -> str:
    return f"{_ID_PREFIX[0]}{next(_ID_COUNTER):016x}"


async def _pipeline(
    request: web.Request, gateway: Gateway, request_id: str, label: list[str]
) -> web.StreamResponse:
    """The edge pipeline; `label[0]` is set to the matched template (metrics, access log)."""
    path = request.path
    own = gateway.own.get(path)
    if own is not None and request.method in ("GET", "HEAD"):
        label[0] = path
        return await own(request)
    if _suspicious(request.raw_path):
        raise NotFound()
    match = gateway.table.match(path)
    if match is None:
        raise NotFound()
    label[0] = match.template
    method = request.method
    headers = request.headers
    if method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers:
        if gateway.edge.allowed_origin(headers["Origin"]) is None:
            raise Forbidden("this origin is not allowed")  # a problem+json 403, no CORS headers
        return gateway.edge.preflight(request, match.allowed())
    route = match.by_method.get(method)
    if route is None:
        raise MethodNotAllowed(allowed=match.allowed())
    length = request.content_length
    if length is not None and length > route.body_limit:
        raise PayloadTooLarge(f"the request body is limited to {route.body_limit} bytes")
    verified: Verified | None = None
    principal: Principal | None = None
    if route.auth != "none":
        verified = await gateway.auth.authenticate(headers, route)
        if verified is not None:
            principal = verified.principal
            request[PRINCIPAL] = principal
    extra: list[tuple[str, str]] = []
    if gateway.ratelimit is not None:
        decision = await gateway.ratelimit.evaluate(
            route_policy=route.rate, client_ip=client_ip(request), principal=principal
        )
        if decision is not None:
            extra.extend(decision.header_items())
    if route.handler is not None:
        response = await gateway.local[route.handler](request, principal)
        for name, value in extra:
            response.headers[name] = value
        return response
    identity = gateway.auth.identity_of(verified) if verified is not None else None
    if route.websocket and headers.get("Upgrade", "").lower() == "websocket":
        return await _websocket(request, gateway, route, identity, request_id)
    forwarded = forward_headers(request, gateway.edge, identity=identity, request_id=request_id)
    if gateway.cache is not None and route.cache is not None and method in ("GET", "HEAD"):
        response = await gateway.cache.handle(
            request,
            policy=route.cache,
            principal=principal,
            fetch=_buffered_fetch(request, gateway, route, forwarded),
            route=route.template,
        )
        for name, value in extra:
            response.headers[name] = value
        return response
    upstream = gateway.pools[route.upstream]
    upstream_response = await send_upstream(
        request, upstream, route, forwarded,
        retry_backoff=gateway.settings.retry_backoff_seconds,
    )  # fmt: skip
    if gateway.cache is not None and method not in ("GET", "HEAD"):
        # Purge before the client sees the answer: it must never read its own stale write.
        try:
            await gateway.cache.purge_after_write(upstream_response.headers)
        except BaseException:
            upstream_response.release()
            raise
    extra.append(("X-Request-ID", request_id))
    _edge_headers(request, gateway.edge, extra)
    request[_PREPARED] = True
    return await relay(
        request, upstream_response, extra, gzip_min=gateway.settings.gzip_min_bytes,
        write_timeout=gateway.settings.client_write_timeout,
    )  # fmt: skip


def _edge_headers(request: web.Request, edge: Edge, extra: list[tuple[str, str]]) -> None:
    extra.extend(edge.response_items(request))


def _buffered_fetch(
    request: web.Request, gateway: Gateway, route: Route, forwarded: list[tuple[str, str]]
) -> Callable[[], Awaitable[Any]]:
    """The cache stage's `fetch`: the upstream GET, fully buffered and size-capped."""

    async def fetch() -> Any:
        from gateway.cache.entry import BufferedResponse

        upstream = gateway.pools[route.upstream]
        response = await send_upstream(
            request, upstream, route, forwarded, method="GET",
            retry_backoff=gateway.settings.retry_backoff_seconds,
        )  # fmt: skip
        try:
            if (response.content_length or 0) > MAX_CACHED_BODY:
                raise UpstreamUnavailable("the response is too large to cache")
            body = bytearray()
            async for chunk in body_chunks(response):
                body.extend(chunk)
                if len(body) > MAX_CACHED_BODY:
                    raise UpstreamUnavailable("the response is too large to cache")
            headers = [(k, v) for k, v in raw_headers(response) if k.lower() not in HOP_BY_HOP]
            return BufferedResponse(status=response.status, headers=headers, body=bytes(body))
        except TimeoutError:
            raise UpstreamTimeout() from None
        except (aiohttp.ClientError, ConnectionError):
            raise UpstreamUnavailable() from None
        finally:
            response.release()

    return fetch


_WS_DROP = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol"}
)  # fmt: skip


async def _websocket(
    request: web.Request, gateway: Gateway, route: Route, identity: str | None, request_id: str
) -> web.StreamResponse:
    """Proxy a WebSocket: connect upstream first (so failures are still problem+json), then
    upgrade the client and pump frames both ways until either side closes."""
    upstream = gateway.pools[route.upstream]
    if not upstream.breaker.allow():
        raise UpstreamUnavailable()
    instance = upstream.pick()
    if instance is None or upstream.session is None:
        upstream.breaker.release_probe()
        raise UpstreamUnavailable()
    forwarded = forward_headers(request, gateway.edge, identity=identity, request_id=request_id)
    headers = [(k, v) for k, v in forwarded if k.lower() not in _WS_DROP]
    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    try:
        upstream_ws = await upstream.session.ws_connect(
            instance.base + request.raw_path,
            headers=headers,
            protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            autoclose=False,
            autoping=True,
            max_msg_size=4 * 1024 * 1024,
        )
    except TimeoutError:
        upstream.failed(instance)
        raise UpstreamTimeout() from None
    except aiohttp.WSServerHandshakeError as exc:
        upstream.succeeded(instance)
        raise PorticoError(status=exc.status if exc.status >= 400 else 502) from None
    except aiohttp.ClientError:
        upstream.failed(instance)
        raise UpstreamUnavailable() from None
    upstream.succeeded(instance)
    client_ws = web.WebSocketResponse(
        protocols=[upstream_ws.protocol] if upstream_ws.protocol else (),
        autoclose=False,
        max_msg_size=4 * 1024 * 1024,
    )
    client_ws.headers["X-Request-ID"] = request_id
    request[_PREPARED] = True
    await client_ws.prepare(request)

    async def pump(source: Any, target: Any) -> None:
        async for message in source:
            if message.type is aiohttp.WSMsgType.TEXT:
                await target.send_str(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                await target.send_bytes(message.data)
            elif message.type is aiohttp.WSMsgType.CLOSE:
                break
        await target.close()

    tasks = [asyncio.create_task(pump(client_ws, upstream_ws)),
             asyncio.create_task(pump(upstream_ws, client_ws))]  # fmt: skip
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream_ws.close()
        await client_ws.close()
    return client_ws


# -- the gateway's own endpoints --------------------------------------------------------------


async def _usage(request: web.Request, principal: Principal | None) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    if gateway.ratelimit is None:
        raise UpstreamUnavailable("usage reporting is not available")
    data = await gateway.ratelimit.usage(principal=principal, client_ip=client_ip(request))
    return web.Response(body=orjson.dumps(data), content_type="application/json")


LOCAL_HANDLERS: dict[str, LocalHandler] = {"usage": _usage}


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def _readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]

    async def run(check: Callable[[], Awaitable[object]]) -> str:
        try:
            await asyncio.wait_for(check(), 2.0)
        except Exception:  # any failure means "not ready"
            return "down"
        return "ok"

    names = list(gateway.readiness)
    results = await asyncio.gather(*(run(gateway.readiness[n]) for n in names))
    report = dict(zip(names, results, strict=True))
    if gateway.draining:
        report["draining"] = "down"
    if all(value == "ok" for value in report.values()):
        return web.Response(body=orjson.dumps({"status": "ready", "checks": report}),
                            content_type="application/json")  # fmt: skip
    error = UpstreamUnavailable("a dependency is not reachable")
    body = error.to_problem(request.get(REQUEST_ID))
    body["checks"] = report
    return web.Response(body=orjson.dumps(body), status=503,
                        content_type="application/problem+json")  # fmt: skip


async def _metrics(request: web.Request) -> web.Response:
    flush_all()  # this worker's batched request counts and durations
    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip


async def _openapi(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    document = await gateway.openapi.document(gateway.table)
    return web.Response(body=orjson.dumps(document), content_type="application/json")


async def _docs(_: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")


# -- wiring -----------------------------------------------------------------------------------


def _pools(settings: Settings) -> UpstreamPools:
    upstreams = {
        name: Upstream(
            name,
            urls,
            strategy=settings.balancing,
            eject_after=settings.eject_after_failures,
            eject_base=settings.eject_base_seconds,
            eject_max=settings.eject_max_seconds,
            breaker=CircuitBreaker(
                name,
                threshold=settings.circuit_failure_threshold,
                open_seconds=settings.circuit_open_seconds,
            ),
            budget=RetryBudget(ratio=settings.retry_budget_ratio, cap=settings.retry_budget_max),
            connect_timeout=settings.connect_timeout,
            fast_client=settings.fast_client,
        )
        for name, urls in settings.upstream_urls().items()
    }
    return UpstreamPools(upstreams, health_interval=settings.health_interval,
                         health_timeout=settings.health_timeout,
                         unhealthy_threshold=settings.health_unhealthy_threshold,
                         connect_timeout=settings.connect_timeout)  # fmt: skip


def create_app(
    settings: Settings,
    *,
    table: RouteTable | None = None,
    ratelimit: RateLimitStageLike | None = None,
    cache: CacheStageLike | None = None,
) -> web.Application:
    """The gateway application; `ratelimit` / `cache` are the optional pipeline stages."""
    table = table or load_table(settings)
    pools = _pools(settings)
    # One pipelined connection for every hot-path Redis command (revocation MGETs, cache
    # lookups, rate-limit EVALSHAs): commands of one loop iteration leave in one write.
    revocations = MGetClient(RespClient.from_url(settings.redis_url, timeout=0.5))
    secret = settings.internal_secret.get_secret_value()
    auth = Authenticator(
        users=pools["users"],
        jwks=Jwks(
            pools["users"],
            min_refresh=settings.jwks_min_refresh_seconds,
            ttl=settings.jwks_ttl_seconds,
        ),
        revocations=revocations,
        secret=secret,
        prefix=settings.redis_prefix,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
        cache_size=settings.token_cache_size,
        apikey_seconds=settings.apikey_cache_seconds,
        identity_ttl=settings.identity_ttl_seconds,
        fail_open=settings.revocation_on_error == "open",
        trust_feed=settings.revocation_check == "feed",
    )
    edge = Edge(
        trusted_proxies=split_list(settings.trusted_proxies),
        cors_origins=split_list(settings.cors_origins),
        cors_credentials=settings.cors_allow_credentials,
        cors_max_age=settings.cors_max_age,
    )
    gateway = Gateway(
        settings=settings, table=table, pools=pools, auth=auth, edge=edge,
        openapi=OpenApiAggregator(pools, ttl=settings.openapi_cache_seconds),
        revocations=revocations, ratelimit=ratelimit, cache=cache, local=dict(LOCAL_HANDLERS),
    )  # fmt: skip
    if settings.access_log:
        gateway.access_log = AccessLog(service=settings.service_name)
    gateway.own = {
        "/healthz": _healthz, "/readyz": _readyz, "/metrics": _metrics,
        "/openapi.json": _openapi, "/docs": _docs,
    }  # fmt: skip

    async def redis_ready() -> object:
        return await revocations.mget((f"{settings.redis_prefix}readyz".encode(),))

    gateway.readiness["redis"] = redis_ready
    app = web.Application(
        handler_args={
            "max_line_size": MAX_LINE_SIZE,
            "max_field_size": MAX_FIELD_SIZE,
            "max_headers": MAX_HEADERS,
            # Bodies are relayed as sent, Content-Encoding and all: the service decodes (and
            # answers an undecodable one with a 400); decoding here broke every gzip upload.
            "auto_decompress": False,
        }
    )
    app[GATEWAY] = gateway
    app[EDGE] = edge
    listener = RevocationListener(
        settings.redis_url, f"{settings.redis_prefix}revocations", auth.on_revocation,
        on_epoch=auth.on_revocation_epoch,
    )  # fmt: skip
    app.cleanup_ctx.append(pools.ctx())
    app.cleanup_ctx.append(listener.ctx())
    app.cleanup_ctx.append(_revocations_ctx(revocations, auth))
    if cache is None and settings.cache_enabled:
        app.cleanup_ctx.append(_cache_ctx(settings, gateway))
    if ratelimit is None and settings.ratelimit_enabled:
        app.cleanup_ctx.append(_ratelimit_ctx(settings, gateway))
    # After the cache stage: the consumer purges through it.
    app.cleanup_ctx.append(events_ctx(settings, gateway))
    app.cleanup_ctx.append(admin_ctx(settings, lambda: gateway.cache))

    async def start_draining(_: web.Application) -> None:
        gateway.draining = True

    async def flush_access_log(_: web.Application) -> None:
        flush_all()
        if gateway.access_log is not None:
            gateway.access_log.flush()

    app.on_shutdown.append(start_draining)
    app.on_cleanup.append(flush_access_log)
    # `[\s\S]`, not `.`: a path with an encoded newline must reach `handle` too (problem+json 404),
    # not aiohttp's plain-text default.
    route = app.router.add_route("*", r"/{tail:[\s\S]*}", handle)
    _bypass_router(app, route)
    if settings.fast_front:
        front.install(app, gateway, _next_request_id)
    # Heads aiohttp refuses before `handle` runs get problem+json too. Last: it keeps a server
    # class installed above (the fast front's) and serves the connections that class hands over.
    answer_malformed_http(app, headers=SECURITY_HEADERS)
    return app


def _bypass_router(app: web.Application, route: web.AbstractRoute) -> None:
    """Skip aiohttp's per-request router resolution: the app has one catch-all route and no
    middlewares, so every request gets the same frozen match info and goes straight to
    `handle`. Requests with `Expect:` keep aiohttp's path (it answers 100-continue), and so does
    everything once someone adds a middleware."""
    match_info = UrlMappingMatchInfo({"tail": ""}, route)
    match_info.add_app(app)
    match_info.freeze()
    routed = app._handle

    async def direct(request: web.Request) -> web.StreamResponse:
        if "Expect" in request.headers or app.middlewares:
            return await routed(request)
        request._match_info = match_info
        return await handle(request)

    app._handle = direct  # type: ignore[method-assign]


def _cache_ctx(
    settings: Settings, gateway: Gateway
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: the response cache stage (gateway/cache) on its own Redis pool, if present."""

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        try:
            stage_class: Any = importlib.import_module("gateway.cache").CacheStage
        except (ImportError, AttributeError):
            _log.warning("gateway.cache is not installed: responses are not cached")
            yield
            return
        client = connect_redis(settings.redis_url)
        stage = stage_class(client, key_prefix=settings.redis_prefix, reader=gateway.revocations)
        gateway.cache = stage
        try:
            yield
        finally:
            gateway.cache = None
            await stage.aclose()
            await client.aclose()

    return ctx


def _ratelimit_ctx(
    settings: Settings, gateway: Gateway
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: the rate-limit stage (gateway/ratelimit), configured by `rate_limits:`.

    The stage is built from the table loaded at start-up; a SIGHUP changing `rate_limits:` takes
    effect at the next restart (route `rate:` names are re-validated on every reload).
    """

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        try:
            module: Any = importlib.import_module("gateway.ratelimit")
            stage_class, config_class = module.RateLimitStage, module.RateLimitConfig
        except (ImportError, AttributeError):
            _log.warning("gateway.ratelimit is not installed: requests are not rate limited")
            yield
            return
        raw = dict(gateway.table.rate_limits_raw)
        raw.setdefault("key_prefix", f"{settings.redis_prefix}rl:")
        stage = stage_class(config_class.model_validate(raw), gateway.revocations.client)
        gateway.ratelimit = stage
        try:
            yield
        finally:
            gateway.ratelimit = None
            await stage.aclose()

    return ctx


def _revocations_ctx(
    client: MGetClient, auth: Authenticator
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        with contextlib.suppress(Exception):
            await auth.jwks.refresh()  # warm the keys; an unknown kid refreshes again later
        yield
        client.close()

    return ctx


__all__ += ["CLIENT_IP", "client_ip"]
