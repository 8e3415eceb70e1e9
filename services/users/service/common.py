"""Small helpers shared by the users service's business rules."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from beanie import Document
from bson import ObjectId
from bson.errors import InvalidId
from redis.exceptions import RedisError

from libs.common.errors import UpstreamUnavailable

D = TypeVar("D", bound=Document)
P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "by_id",
    "digest",
    "new_secret",
    "normalize_email",
    "object_id",
    "redis_required",
]


def normalize_email(email: str) -> str:
    """The canonical form we store and look up: trimmed and lower-cased."""
    return email.strip().lower()


def digest(secret: str) -> str:
    """SHA-256 of a high-entropy secret (refresh/reset tokens, API keys): safe to store."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def object_id(value: str) -> ObjectId | None:
    """The ObjectId `value` spells, or None (an unknown id is a 404, never a 422)."""
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


async def by_id(model: type[D], value: str | None) -> D | None:
    """The document with that id, or None for an unknown or malformed id."""
    oid = object_id(value) if value is not None else None
    if oid is None:
        return None
    return await model.find_one({"_id": oid})


def redis_required(detail: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Turn a Redis failure into a 503 with `detail` (fail closed: never skip a security check)."""

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await func(*args, **kwargs)
            except RedisError:
                raise UpstreamUnavailable(detail) from None

        return wrapper

    return decorate
