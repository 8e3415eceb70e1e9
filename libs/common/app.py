"""The app factory every process starts from: middlewares, `/healthz`, `/readyz`, `/metrics`,
graceful shutdown and uvloop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Sequence

import orjson
import structlog
import uvloop
from aiohttp import web

from libs.common.errors import UpstreamUnavailable
from libs.common.http import (
    error_middleware,
    identity_middleware,
    observe_middleware,
    problem_response,
    request_id_of,
)
from libs.common.logging import configure_logging
from libs.common.memory import tune_malloc
from libs.common.metrics import metrics_handler
from libs.common.protocol import (
    MAX_FIELD_SIZE,
    MAX_HEADERS,
    MAX_LINE_SIZE,
    answer_malformed_http,
)
from libs.common.settings import BaseServiceSettings

__all__ = [
    "READINESS",
    "ReadinessCheck",
    "add_readiness_check",
    "create_service_app",
    "freeze_heap",
    "run_app",
]

ReadinessCheck = Callable[[], Awaitable[object]]
READINESS = web.AppKey("readiness", dict[str, ReadinessCheck])
DRAINING = web.AppKey("draining", list[bool])
READINESS_TIMEOUT = 2.0
# A service accepts every head the gateway forwards: the gateway's limits, plus room for the
# headers it adds (X-Forwarded-For/-Proto/-Host, X-Request-ID, the identity assertion).
SERVICE_HEAD_LIMITS = {
    "max_line_size": MAX_LINE_SIZE,
    "max_field_size": MAX_FIELD_SIZE,
    "max_headers": MAX_HEADERS + 8,
}

_log = structlog.get_logger("portico.app")


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck) -> None:
    """Register a dependency `/readyz` must reach; `check` raises (or times out) when it cannot."""
    app[READINESS][name] = check


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _run_check(check: ReadinessCheck) -> str:
    try:
        await asyncio.wait_for(check(), READINESS_TIMEOUT)
    except Exception:  # any failure means "not ready"; the reason is logged, not returned
        return "down"
    return "ok"


async def _readyz(request: web.Request) -> web.Response:
    checks = request.app[READINESS]
    names = list(checks)
    results = await asyncio.gather(*(_run_check(checks[name]) for name in names))
    report = dict(zip(names, results, strict=True))
    if request.app[DRAINING][0]:
        report["draining"] = "down"
    if all(result == "ok" for result in report.values()):
        return web.Response(
            body=orjson.dumps({"status": "ready", "checks": report}),
            content_type="application/json",
        )
    _log.warning("not ready", checks=report)
    response = problem_response(
        UpstreamUnavailable("a dependency is not reachable"), request_id_of(request)
    )
    body = orjson.loads(response.body)  # type: ignore[arg-type]
    body["checks"] = report
    response.body = orjson.dumps(body)
    return response


async def _start_draining(app: web.Application) -> None:
    # Readiness turns false first so load balancers stop sending before connections close.
    app[DRAINING][0] = True


def create_service_app(
    settings: BaseServiceSettings,
    *,
    middlewares: Sequence[Callable[..., Awaitable[web.StreamResponse]]] = (),
    client_max_size: int = 1024 * 1024 + 1024,
    verify_identity: bool = True,
) -> web.Application:
    """A `web.Application` with the common middlewares and health/metrics routes; malformed
    HTTP is answered with problem+json too (`libs.common.protocol`)."""
    chain = [observe_middleware(settings.service_name), error_middleware]
    if verify_identity:
        chain.append(identity_middleware(settings.internal_secret.get_secret_value()))
    app = web.Application(
        middlewares=[*chain, *middlewares],
        client_max_size=client_max_size,
        handler_args=dict(SERVICE_HEAD_LIMITS),
    )
    answer_malformed_http(app)  # heads aiohttp refuses before any middleware: problem+json too
    app[READINESS] = {}
    app[DRAINING] = [False]
    app.on_shutdown.append(_start_draining)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


def freeze_heap() -> None:
    """Move what start-up allocated (modules, routes, models: most of the heap) out of the
    collector's reach. A full collection otherwise walks all of it and stalls the loop for tens
    of milliseconds under load: the tail latency of every request in flight (Instagram's
    `gc.freeze()`, the CPython docs' advice for pre-fork servers)."""
    gc.collect()
    gc.freeze()
    # A young-generation pass every 10,000 net allocations instead of 700: a request allocates
    # hundreds of short-lived containers, almost all freed by reference counting anyway.
    gc.set_threshold(10_000, 10, 10)


async def _freeze_heap(_: web.Application) -> None:
    freeze_heap()


def run_app(
    app: web.Application | Awaitable[web.Application],
    settings: BaseServiceSettings,
    *,
    reuse_port: bool | None = None,
    keepalive_timeout: float = 75.0,
) -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests for `shutdown_timeout`.

    `keepalive_timeout` also bounds how long a new connection may take to send its first
    request head (aiohttp closes a connection whose handler is still idle by then)."""
    configure_logging(
        level=settings.log_level, json=settings.log_json, service=settings.service_name
    )
    _log.info("starting", host=settings.host, port=settings.port, malloc_tuned=tune_malloc())
    if isinstance(app, web.Application):
        app.on_startup.append(_freeze_heap)  # last: after every other start-up step
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout,
        reuse_port=reuse_port,
        print=None,
        loop=uvloop.new_event_loop(),
        handler_cancellation=True,
        keepalive_timeout=keepalive_timeout,
    )
