"""Password hashing (argon2id, off the event loop) and the password policy (OWASP ASVS V2.1)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import Executor
from functools import lru_cache, partial
from importlib import resources
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from libs.common.errors import InvalidInput

__all__ = ["PasswordPolicy", "Passwords", "common_passwords"]

T = TypeVar("T")


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The built-in list of common passwords, lower-cased (shipped in `data/`)."""
    text = resources.files("services.users").joinpath("data/common_passwords.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


class PasswordPolicy:
    """Length bounds, no composition rules, not the email, not a common password."""

    def __init__(self, *, min_length: int, max_length: int) -> None:
        self.min_length = min_length
        self.max_length = max_length

    def problems(self, password: str, *, email: str | None = None) -> list[str]:
        """Why `password` is refused (empty when it is acceptable)."""
        # Length counts code points, as ASVS 2.1.1 asks (not bytes).
        if len(password) < self.min_length:
            return [f"must be at least {self.min_length} characters"]
        if len(password) > self.max_length:
            return [f"must be at most {self.max_length} characters"]
        lowered = password.strip().lower()
        if email is not None and lowered in (email.lower(), email.lower().split("@")[0]):
            return ["must not be your email address"]
        if lowered in common_passwords():
            return ["is too common; choose a less guessable password"]
        return []

    def check(self, password: str, *, email: str | None = None, field: str = "password") -> None:
        """Raise a 422 naming `field` when the password is refused."""
        problems = self.problems(password, email=email)
        if problems:
            raise InvalidInput(
                "the password does not meet the policy",
                errors=[{"field": field, "message": message} for message in problems],
            )


class Passwords:
    """argon2id hashing run in an executor so a login never stalls the event loop."""

    def __init__(
        self,
        *,
        time_cost: int,
        memory_kib: int,
        parallelism: int,
        executor: Executor | None = None,
    ) -> None:
        self.hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self.executor = executor
        self._dummy_hash: str | None = None

    async def _run(self, func: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func)

    async def hash(self, password: str) -> str:
        """An argon2id hash of `password` with the current parameters."""
        return await self._run(partial(self.hasher.hash, password))

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether `password` matches; never raises for a wrong or unreadable hash."""
        return await self._run(partial(self._verify_sync, password_hash, password))

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    async def dummy_verify(self, password: str) -> None:
        """Spend what a real verification costs, so an unknown email answers as slowly."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
        await self.verify(self._dummy_hash, password)
