"""`python -m gateway`: validate the route table, then serve with `PORTICO_GATEWAY_WORKERS`
processes sharing the port through SO_REUSEPORT (default: one per core).

The parent only supervises: it forwards SIGTERM/SIGINT/SIGHUP to the workers and restarts a
worker that dies unexpectedly. SIGHUP makes every worker reload routes.yaml.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType

import structlog
from aiohttp import web

from gateway.app import create_app, load_table, reload_routes
from gateway.routing import RouteTableError
from gateway.settings import Settings
from libs.common.app import run_app
from libs.common.logging import configure_logging
from libs.common.settings import load_settings

_log = structlog.get_logger("portico.gateway")


def _serve(settings: Settings, *, reuse_port: bool) -> None:
    app = create_app(settings)

    async def on_sighup(app: web.Application) -> None:
        import asyncio

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_routes, app)

    app.on_startup.append(on_sighup)
    run_app(app, settings, reuse_port=reuse_port, keepalive_timeout=settings.client_idle_timeout)


def _spawn(settings: Settings) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _serve(settings, reuse_port=True)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def main() -> None:
    settings = load_settings(Settings)
    configure_logging(level=settings.log_level, json=settings.log_json, service="gateway")
    try:
        load_table(settings)
    except RouteTableError as exc:
        print(f"invalid route table: {exc}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
    workers = settings.workers or os.cpu_count() or 1
    if workers == 1:
        _serve(settings, reuse_port=False)
        return
    children = {_spawn(settings) for _ in range(workers)}
    stopping = False

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    _log.info("gateway workers started", workers=workers, port=settings.port)
    while children:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if not stopping:
            _log.warning("gateway worker exited; restarting", pid=pid)
            time.sleep(0.5)
            children.add(_spawn(settings))


if __name__ == "__main__":
    main()
