"""Password hashing parameters and the password policy."""

from __future__ import annotations

import pytest
from argon2 import Parameters, extract_parameters

from libs.common.errors import InvalidInput
from services.users.service.passwords import PasswordPolicy, Passwords, common_passwords
from services.users.settings import Settings

POLICY = PasswordPolicy(min_length=12, max_length=128)


async def test_production_defaults_meet_owasp_argon2id() -> None:
    settings = Settings()
    passwords = Passwords(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    hashed = await passwords.hash("a reasonably long passphrase")
    params: Parameters = extract_parameters(hashed)
    assert params.type.name == "ID"
    # OWASP Password Storage Cheat Sheet: m=19 MiB, t=2, p=1 is the weakest acceptable profile.
    assert params.memory_cost >= 19 * 1024
    assert params.time_cost >= 2
    assert params.parallelism >= 1
    assert params.salt_len >= 16
    assert await passwords.verify(hashed, "a reasonably long passphrase")
    assert not await passwords.verify(hashed, "a reasonably long passphrasE")
    assert not await passwords.verify("not a hash", "whatever")
    assert not passwords.needs_rehash(hashed)
    assert Passwords(time_cost=3, memory_kib=19 * 1024, parallelism=1).needs_rehash(hashed)


def test_policy_defaults() -> None:
    settings = Settings()
    assert settings.password_min_length >= 12
    assert settings.password_max_length >= 64


def test_common_password_list_is_shipped_and_large() -> None:
    common = common_passwords()
    assert len(common) >= 1000
    assert {"password", "qwerty123456", "passwordpassword"} <= common
    assert all(p == p.lower() for p in common)


@pytest.mark.parametrize(
    ("password", "ok"),
    [
        ("a" * 11, False),
        ("a" * 12 + "x", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("QWERTY123456", False),
        ("iloveyou123456", False),
        ("correct horse battery staple", True),
        ("ZZZZZZZZZZZZ", True),  # no composition rules
    ],
)
def test_policy(password: str, ok: bool) -> None:
    assert (POLICY.problems(password) == []) is ok


def test_password_equal_to_the_email_is_refused() -> None:
    assert POLICY.problems("Grace.Hopper@example.com", email="grace.hopper@example.com")
    assert POLICY.problems("grace.hopper", email="grace.hopper@example.com") != []
    with pytest.raises(InvalidInput) as caught:
        POLICY.check("short", field="new_password")
    assert caught.value.errors == [
        {"field": "new_password", "message": "must be at least 12 characters"}
    ]
