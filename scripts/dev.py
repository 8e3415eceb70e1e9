"""`make run`: the whole platform on one machine with embedded defaults.

Starts SecantusDB when MONGODB_URL does not answer, checks (and where possible starts) the local
Redis and RabbitMQ, then runs the gateway and the three services as separate processes with
prefixed logs. Ctrl-C (or SIGTERM) stops everything, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.embedded import EmbeddedMongo, free_port, mongo_answers  # noqa: E402

VAR = Path(os.environ.get("PORTICO_DEV_VAR", ROOT / "var"))
# Each process's port: its own PORTICO_<NAME>_PORT if set (the services read the same variable).
PROCESSES = [
    (name, module, int(os.environ.get(f"PORTICO_{name.upper()}_PORT", default)))
    for name, module, default in (
        ("users", "services.users", 8081),
        ("orgs", "services.orgs", 8082),
        ("files", "services.files", 8083),
        ("gateway", "gateway", 8080),
    )
]
COLORS = {"users": 32, "orgs": 34, "files": 35, "gateway": 36, "mongo": 33}


def say(message: str) -> None:
    print(f"\033[1mportico\033[0m | {message}", flush=True)


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def ensure_service(name: str, url: str, default_port: int, start: list[str]) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    if answers(host, port):
        return
    if host in ("127.0.0.1", "localhost") and shutil.which(start[0]):
        say(f"{name} is not running on {host}:{port}; starting it: {' '.join(start)}")
        subprocess.run(start, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not answers(host, port):
            time.sleep(0.5)
    if not answers(host, port):
        say(f"{name} is not reachable at {host}:{port}.")
        say(f"  install it (apt-get install {name.lower()}-server) or point the URL elsewhere.")
        raise SystemExit(1)


async def pump(name: str, stream: asyncio.StreamReader) -> None:
    color = COLORS.get(name, 37)
    prefix = f"\033[{color}m{name:>7}\033[0m | "
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def main() -> int:
    env = dict(os.environ)
    env.setdefault("PORTICO_ENV", "development")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PORTICO_FILES_STORAGE_PATH", str(VAR / "objects"))
    ports = {name: port for name, _module, port in PROCESSES}
    for name, _module, port in PROCESSES:
        env[f"PORTICO_{name.upper()}_PORT"] = str(port)
        if name != "gateway":  # the gateway (and orgs, for users) find the services there
            env.setdefault(f"PORTICO_GATEWAY_{name.upper()}_URLS", f"http://127.0.0.1:{port}")
    env.setdefault("PORTICO_ORGS_USERS_URL", f"http://127.0.0.1:{ports['users']}")
    env.setdefault("PORTICO_FILES_PUBLIC_BASE_URL", f"http://127.0.0.1:{ports['gateway']}")

    ensure_service(
        "Redis",
        env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        6379,
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
         "--save", "", "--appendonly", "no"],
    )  # fmt: skip
    ensure_service(
        "RabbitMQ",
        env.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        5672,
        ["rabbitmq-server", "-detached"],
    )

    mongo: EmbeddedMongo | None = None
    mongo_url = env.get("MONGODB_URL") or env.get("PORTICO_MONGODB_URL")
    if not mongo_url or not mongo_answers(mongo_url):
        port = 27017 if not answers("127.0.0.1", 27017) else free_port()
        mongo = EmbeddedMongo(storage=VAR / "mongo", port=port, log=VAR / "secantus.log")
        say(f"starting SecantusDB (MongoDB wire) on 127.0.0.1:{port}, data in {VAR / 'mongo'}")
        mongo.start()
        mongo_url = mongo.url
    env["MONGODB_URL"] = mongo_url

    children: list[asyncio.subprocess.Process] = []
    pumps = []

    async def spawn(name: str, module: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module,
            cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        children.append(proc)
        pumps.append(asyncio.create_task(pump(name, proc.stdout)))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def wait_ready(http: Any, name: str, port: int) -> None:
        url = f"http://127.0.0.1:{port}/readyz"
        for _ in range(120):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.5)
        say(f"{name} is not ready at {url}")

    async def ready() -> None:
        # Services first, the gateway once they answer: it would otherwise start by ejecting
        # instances that are merely still booting.
        async with aiohttp.ClientSession() as http:
            for name, module, _port in PROCESSES[:-1]:
                await spawn(name, module)
            for name, _module, port in PROCESSES[:-1]:
                await wait_ready(http, name, port)
            name, module, port = PROCESSES[-1]
            await spawn(name, module)
            await wait_ready(http, name, port)
        say("Portico is up:")
        say(f"  gateway  http://127.0.0.1:{ports['gateway']}   (public API, /docs, /openapi.json)")
        for name, _module, port in PROCESSES[:-1]:
            say(f"  {name:<8} http://127.0.0.1:{port}   (/healthz /readyz /metrics)")
        say(f"  mongodb  {mongo_url}")
        say("Ctrl-C stops everything.")

    ready_task = asyncio.create_task(ready())
    stop_task = asyncio.create_task(stop.wait())

    async def any_exit() -> None:
        # A child that dies while the platform runs stops everything (a supervisor would restart).
        while True:
            for child in children:
                if child.returncode is not None:
                    return
            await asyncio.sleep(0.5)

    exit_task = asyncio.create_task(any_exit())
    done, _ = await asyncio.wait([stop_task, exit_task], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if stop_task not in done:
        say("a process exited; stopping the platform")
        code = 1
    ready_task.cancel()
    exit_task.cancel()
    say("stopping ...")
    for child in reversed(children):
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in children)), timeout=20)
    except TimeoutError:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
    await asyncio.gather(*pumps, return_exceptions=True)
    if mongo:
        mongo.stop()
    say("stopped.")
    return code


if __name__ == "__main__":
    VAR.mkdir(parents=True, exist_ok=True)
    raise SystemExit(asyncio.run(main()))
