"""The whole platform as real processes, for end-to-end, fault-injection and attack tests.

Each stack gets its own SecantusDB, its own RabbitMQ vhost (so exchanges and queues never meet
another stack's), its own Redis key prefix, and free ports. Processes log to files under the
stack's directory so tests can grep them (e.g. for leaked secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.common.embedded import EmbeddedMongo, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("users", "orgs", "files")


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60, text=True
    )
    return done.stdout


class RedisServer:
    """A redis-server of one stack's own, so a test can kill it without touching the shared one."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        out = (self.directory / "redis.log").open("ab")
        self.popen = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        out.close()
        if not wait_for_port("127.0.0.1", self.port, timeout=20):
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.popen.wait(timeout=10)


@dataclass
class Process:
    name: str
    module: str
    port: int
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    root: Path = ROOT  # the source tree the process runs (its working directory)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", self.module],
            cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        out.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-4000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp,  # noqa: S310
            ):
                if resp.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready:\n{self.log.read_text()[-4000:]}")


@dataclass
class Stack:
    directory: Path
    secret: str = field(default_factory=lambda: "e2e-" + uuid.uuid4().hex * 2)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    mongo: EmbeddedMongo | None = None
    processes: dict[str, Process] = field(default_factory=dict)
    vhost: str = ""
    # Optional, for fault injection: a redis-server of its own (killable), and several instances
    # of a service behind the gateway (`processes["users"]`, `processes["users-2"]`, ...).
    own_redis: bool = False
    # SecantusDB fsyncs every commit, so an acknowledged write survives a SIGKILL of it.
    durable_mongo: bool = False
    instances: dict[str, int] = field(default_factory=dict)
    redis: RedisServer | None = None
    # Optional: run the processes from another checkout of the code (e.g. a `git archive`
    # snapshot, so a long run is not affected by edits to the working tree meanwhile).
    root: Path = ROOT

    @property
    def gateway(self) -> str:
        return self.processes["gateway"].url

    def base_env(self) -> dict[str, str]:
        assert self.mongo is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTICO_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "PORTICO_ENV": "test",
                "MONGODB_URL": self.mongo.url,
                "REDIS_URL": self.redis.url
                if self.redis is not None
                else os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}",
                "PORTICO_INTERNAL_SECRET": self.secret,
                "PORTICO_REDIS_PREFIX": f"e2e:{self.token}:",
                # Its own vhost already isolates it; a non-default name turns the bus on in tests.
                "PORTICO_EVENTS_EXCHANGE": "portico.events.e2e",
            }
        )
        return env

    def start(self, extra_env: dict[str, str] | None = None) -> Stack:
        self.vhost = f"e2e_{self.token}"
        _rabbitmqctl("add_vhost", self.vhost)
        _rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.mongo = EmbeddedMongo(
            storage=self.directory / "mongo",
            log=self.directory / "secantus.log",
            sync_on_commit=self.durable_mongo,
        ).start()
        if self.own_redis:
            self.redis = RedisServer(self.directory / "redis").start()
        env = self.base_env()
        env.update(extra_env or {})
        ports = {name: free_port() for name in (*SERVICES, "gateway")}
        extra: dict[str, list[int]] = {
            name: [free_port() for _ in range(self.instances.get(name, 1) - 1)] for name in SERVICES
        }
        for name in SERVICES:
            upper = name.upper()
            env[f"PORTICO_{upper}_PORT"] = str(ports[name])
            env[f"PORTICO_GATEWAY_{upper}_URLS"] = ",".join(
                f"http://127.0.0.1:{port}" for port in (ports[name], *extra[name])
            )
        env["PORTICO_GATEWAY_PORT"] = str(ports["gateway"])
        env["PORTICO_ORGS_USERS_URL"] = f"http://127.0.0.1:{ports['users']}"
        env["PORTICO_GATEWAY_WORKERS"] = "1"
        env["PORTICO_FILES_STORAGE_PATH"] = str(self.directory / "objects")
        env["PORTICO_FILES_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{ports['gateway']}"
        for name, module in (
            ("users", "services.users"),
            ("orgs", "services.orgs"),
            ("files", "services.files"),
            ("gateway", "gateway"),
        ):
            log = self.directory / f"{name}.log"
            process = Process(name, module, ports[name], dict(env), log, root=self.root)
            self.processes[name] = process
            process.start()
            for number, port in enumerate(extra.get(name, []), start=2):
                copy = dict(env)
                copy[f"PORTICO_{name.upper()}_PORT"] = str(port)
                label = f"{name}-{number}"
                log = self.directory / f"{label}.log"
                replica = Process(label, module, port, copy, log, root=self.root)
                self.processes[label] = replica
                replica.start()
        for process in self.processes.values():
            process.wait_ready()
        return self

    def logs(self) -> str:
        return "\n".join(p.log.read_text(errors="replace") for p in self.processes.values())

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
        if self.mongo is not None:
            self.mongo.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.vhost:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _rabbitmqctl("delete_vhost", self.vhost)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """The first truthy result of `check`, or its last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.25)
