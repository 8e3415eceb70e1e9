"""Spoofed `X-Forwarded-For` does not dodge per-IP limits (it is believed only from the configured
proxy, 127.0.0.2 in this stack), and client-sent identity headers never grant an identity."""

from __future__ import annotations

import uuid

import aiohttp

from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity
from tests.e2e.attacks.conftest import PASSWORD, PROXY_IP, User, assert_problem, client, new_user
from tests.e2e.stack import Stack

LOGIN_BURST = 10


async def login_status(http: aiohttp.ClientSession, stack: Stack, headers: dict[str, str]) -> int:
    async with http.post(
        f"{stack.gateway}/api/v1/auth/login",
        json={"email": f"x-{uuid.uuid4().hex[:8]}@example.com", "password": "nope nope nope"},
        headers=headers,
    ) as resp:
        await assert_problem(resp, (401, 423, 429), stack=stack)
        return resp.status


async def test_spoofed_x_forwarded_for_does_not_reset_the_login_limit(stack: Stack) -> None:
    async with client() as http:
        statuses = []
        for n in range(LOGIN_BURST + 3):
            spoof = {
                "X-Forwarded-For": f"203.0.113.{n + 1}",
                "X-Real-IP": f"198.51.100.{n + 1}",
                "Forwarded": f"for=192.0.2.{n + 1}",
            }
            statuses.append(await login_status(http, stack, spoof))
    assert statuses[-1] == 429, statuses
    assert statuses.count(429) >= 3


async def test_control_the_configured_proxy_is_believed(stack: Stack) -> None:
    """From the trusted proxy, distinct forwarded clients each get their own budget."""
    async with client(PROXY_IP) as http:
        statuses = [
            await login_status(
                http, stack, {"X-Forwarded-For": f"10.{n}.{uuid.uuid4().int % 250}.7"}
            )
            for n in range(LOGIN_BURST + 3)
        ]
    assert 429 not in statuses, statuses


async def session_ips(http: aiohttp.ClientSession, stack: Stack, user: User) -> list[str]:
    async with http.get(f"{stack.gateway}/api/v1/auth/sessions", headers=user.auth) as resp:
        assert resp.status == 200, await resp.text()
        return [s["ip"] for s in (await resp.json())["items"]]


async def test_a_spoofed_hop_is_not_recorded_as_the_client_address(stack: Stack) -> None:
    user = await new_user(stack, "Hops")
    real = f"10.77.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    # The client prepends a lie; the trusted proxy appends the address it really saw.
    async with (
        client(PROXY_IP) as http,
        http.post(
            f"{stack.gateway}/api/v1/auth/login",
            json={"email": user.email, "password": PASSWORD},
            headers={"X-Forwarded-For": f"6.6.6.6, {real}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    # From an untrusted client the header is ignored altogether.
    async with (
        client() as http,
        http.post(
            f"{stack.gateway}/api/v1/auth/login",
            json={"email": user.email, "password": PASSWORD},
            headers={"X-Forwarded-For": "7.7.7.7"},
        ) as resp,
    ):
        assert resp.status == 200
    async with client() as http:
        ips = await session_ips(http, stack, user)
    assert real in ips, ips
    assert "6.6.6.6" not in ips, ips
    assert "7.7.7.7" not in ips, ips


def spoofed_identity_headers(victim: User, secret: str) -> dict[str, str]:
    forged = Principal(id=victim.id, kind="user", roles=("admin", "user"))
    return {
        "X-User-Id": victim.id,
        "X-User-Email": victim.email,
        "X-User-Roles": "admin",
        "X-User": victim.id,
        "X-Principal": victim.id,
        "X-Principal-Id": victim.id,
        "X-Principal-Roles": "admin",
        # Even one validly signed with the platform's own secret is stripped at the edge.
        IDENTITY_HEADER: sign_identity(forged, secret),
    }


async def test_identity_headers_never_grant_an_identity(stack: Stack) -> None:
    victim = await new_user(stack, "Target")
    attacker = await new_user(stack, "Spoofer")
    async with client() as http:
        async with http.post(
            f"{stack.gateway}/api/v1/files?name=secret.txt",
            headers={**victim.auth, "Content-Type": "text/plain"},
            data=b"victim's secret\n",
        ) as resp:
            assert resp.status == 201, await resp.text()
            file_id = (await resp.json())["id"]
        spoof = spoofed_identity_headers(victim, stack.secret)
        gw = stack.gateway
        # No credentials + identity headers: still anonymous.
        for method, path in (
            ("GET", "/api/v1/users/me"),
            ("GET", "/api/v1/admin/users"),
            ("GET", f"/api/v1/files/{file_id}"),
            ("POST", "/api/v1/api-keys"),
        ):
            async with http.request(method, f"{gw}{path}", headers=spoof, json={"name": "k"}) as r:
                await assert_problem(r, 401, "UNAUTHENTICATED", stack=stack)
        # The anonymous-capable content route must not take the forged identity either.
        async with http.get(f"{gw}/api/v1/files/{file_id}/content", headers=spoof) as r:
            assert r.status in (401, 403, 404), r.status
            assert b"secret" not in await r.read()
        # With the attacker's own token: the attacker, not the victim, and no admin.
        headers = {**spoof, **attacker.auth}
        async with http.get(f"{gw}/api/v1/users/me", headers=headers) as r:
            assert r.status == 200
            body = await r.json()
            assert body["id"] == attacker.id
            assert body["roles"] == ["user"]
        async with http.get(f"{gw}/api/v1/admin/users", headers=headers) as r:
            await assert_problem(r, 403, "FORBIDDEN", stack=stack)
        async with http.get(f"{gw}/api/v1/files/{file_id}/content", headers=headers) as r:
            await assert_problem(r, 404, "NOT_FOUND", stack=stack)
