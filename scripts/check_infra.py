"""Fail early, with a clear message, when Redis or RabbitMQ is not reachable for the tests."""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

CHECKS = [
    ("Redis", os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), 6379,
     "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"),
    ("RabbitMQ", os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"), 5672,
     "rabbitmq-server -detached"),
]  # fmt: skip


def main() -> int:
    failed = False
    for name, url, default_port, hint in CHECKS:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError:
            print(f"{name} is not reachable at {host}:{port}; start it with: {hint}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
