"""Start SecantusDB (a MongoDB-wire server) as a subprocess, for `make run` and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["EmbeddedMongo", "free_port", "mongo_answers", "wait_for_port"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def mongo_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts connections at the host:port of a mongodb:// URL."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 27017
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedMongo:
    """A SecantusDB process on a free port; `url` connects to it."""

    def __init__(
        self,
        *,
        storage: str | Path = ":memory:",
        port: int | None = None,
        log: Path | None = None,
        sync_on_commit: bool = False,
    ) -> None:
        self.port = port or free_port()
        # Without it an acknowledged write can be lost when the server is killed (SIGKILL):
        # commits reach the journal buffer, not the disk. Slower; for crash tests and deploys.
        self.sync_on_commit = sync_on_commit
        self.storage = str(storage)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> EmbeddedMongo:
        if self.storage != ":memory:":
            Path(self.storage).mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
            [
                sys.executable, "-m", "secantus",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--storage-path", self.storage, "--log-level", "WARNING",
                *(["--sync-on-commit"] if self.sync_on_commit else []),
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )  # fmt: skip
        if not wait_for_port("127.0.0.1", self.port, timeout=60):
            self.stop()
            raise RuntimeError(f"SecantusDB did not start on port {self.port}")
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def __enter__(self) -> EmbeddedMongo:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
