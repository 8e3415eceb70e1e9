"""structlog JSON logging with a redaction step so secrets never reach a log line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

__all__ = ["configure_logging", "get_logger", "mask_url", "redact"]

_SECRET_KEY = re.compile(
    r"pass(word)?|secret|token|authorization|api[_-]?key|cookie|credential|private", re.I
)
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@]*):(?P<pw>[^@/]*)@", re.I
)


def mask_url(url: str) -> str:
    """A connection string with its password replaced, safe to log."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", url)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask values whose key names a secret, and passwords in URLs."""
    for key, value in list(event_dict.items()):
        if key != "event" and _SECRET_KEY.search(key):
            event_dict[key] = "***"
        elif isinstance(value, str) and "://" in value:
            event_dict[key] = mask_url(value)
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


class _StdoutLogger:
    """Writes to whatever `sys.stdout` is at call time (test capture swaps it)."""

    def msg(self, message: str) -> None:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stdout_logger_factory(*_: Any) -> _StdoutLogger:
    return _StdoutLogger()


def configure_logging(*, level: str = "INFO", json: bool = True, service: str = "portico") -> None:
    """Route structlog and stdlib logging to one JSON line per event on stdout."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_stdout_logger_factory,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries log through the stdlib; send them through the same renderer at WARNING and up.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer, foreign_pre_chain=[*processors[:-1], redact]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").disabled = True


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; context bound with `structlog.contextvars` is merged in."""
    return structlog.get_logger(name)
