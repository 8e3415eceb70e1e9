"""Credential stuffing and password guessing: per-account lockout (423 + Retry-After, identical for
unknown emails) and the gateway's per-IP `login` policy (429 + Retry-After)."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp

from tests.e2e.attacks.conftest import PASSWORD, assert_problem, client, new_user
from tests.e2e.stack import Stack

THRESHOLD = 5  # users' default lockout_threshold
LOGIN_BURST = 10  # gateway's default `login` policy: 10 per minute, burst 10


async def attempt(
    http: aiohttp.ClientSession, stack: Stack, email: str, password: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(
        f"{stack.gateway}/api/v1/auth/login", json={"email": email, "password": password}
    ) as resp:
        if resp.status == 200:
            return 200, await resp.json(), dict(resp.headers)
        body = await assert_problem(resp, (401, 423, 429), stack=stack)
        return resp.status, body, dict(resp.headers)


async def test_repeated_failures_lock_the_account_even_for_the_right_password(
    stack: Stack,
) -> None:
    victim = await new_user(stack, "Locked")
    async with client() as http:
        statuses = [
            (await attempt(http, stack, victim.email, f"guess {n}"))[0] for n in range(THRESHOLD)
        ]
        assert statuses == [401] * (THRESHOLD - 1) + [423]
        # The right password no longer helps, whatever the spelling of the email.
        for email in (victim.email, victim.email.upper(), f"  {victim.email}  "):
            status, body, headers = await attempt(http, stack, email, PASSWORD)
            if status == 401:  # a spelling the service does not normalise is simply unknown
                continue
            assert status == 423, body
            assert body["code"] == "ACCOUNT_LOCKED"
            assert 1 <= int(headers["Retry-After"]) <= 3600
    # Tokens issued before the lock keep working: lockout stops guessing, not the owner's session.
    async with (
        client() as http,
        http.get(f"{stack.gateway}/api/v1/users/me", headers=victim.auth) as r,
    ):
        assert r.status == 200


async def test_unknown_emails_answer_exactly_like_known_ones(stack: Stack) -> None:
    known = await new_user(stack, "Known")
    unknown = f"nobody-{uuid.uuid4().hex[:10]}@example.com"
    seen: dict[str, list[tuple[int, str, str, str, bool]]] = {}
    for email in (known.email, unknown):
        async with client() as http:  # a fresh address each: the login policy is not in play
            runs = []
            for n in range(THRESHOLD + 1):
                status, body, headers = await attempt(http, stack, email, f"wrong {n}")
                runs.append(
                    (
                        status,
                        body["code"],
                        body["title"],
                        body.get("detail", ""),
                        "Retry-After" in headers,
                    )
                )
            seen[email] = runs
    assert seen[known.email] == seen[unknown]
    assert [s for s, *_ in seen[unknown]] == [401] * (THRESHOLD - 1) + [423, 423]


async def test_the_login_policy_throttles_one_address_spraying_many_accounts(stack: Stack) -> None:
    async with client() as http:
        results = [
            await attempt(http, stack, f"spray-{uuid.uuid4().hex[:8]}@example.com", "Winter2026!")
            for _ in range(LOGIN_BURST + 3)
        ]
        statuses = [status for status, _, _ in results]
        assert 429 in statuses, statuses
        first = statuses.index(429)
        assert first <= LOGIN_BURST
        assert all(s == 429 for s in statuses[first:]), statuses
        _, body, headers = results[first]
        assert body["code"] == "RATE_LIMITED"
        assert int(headers["Retry-After"]) >= 1
        assert headers["RateLimit-Remaining"] == "0"
        # While throttled, even a real account with its right password is refused at the edge.
        victim = await new_user(stack, "Sprayed")
        status, body, _ = await attempt(http, stack, victim.email, PASSWORD)
        assert status == 429, body
    # Another address is not affected.
    async with client() as other:
        status, _, _ = await attempt(other, stack, victim.email, PASSWORD)
        assert status == 200
