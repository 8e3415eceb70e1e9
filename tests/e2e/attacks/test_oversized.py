"""Oversized bodies (> 1 MiB JSON → 413), oversized headers (431 problem+json, never 5xx),
malformed HTTP heads (problem+json, never logged) and deeply nested JSON (400/422) are refused
cleanly and store nothing."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.e2e.attacks.conftest import (
    LEAKS,
    PASSWORD,
    assert_problem,
    client,
    fresh_ip,
    internals,
    new_user,
)
from tests.e2e.stack import Stack
from tests.hostile import TOKEN, Hostile, cases, send_raw

MIB = 1024 * 1024


async def registered(http: aiohttp.ClientSession, stack: Stack, email: str) -> bool:
    async with http.post(
        f"{stack.gateway}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    ) as r:
        return r.status == 200


async def test_json_bodies_over_one_mib_are_413_and_nothing_is_stored(stack: Stack) -> None:
    email = f"big-{uuid.uuid4().hex[:8]}@example.com"
    body = json.dumps({"email": email, "password": PASSWORD, "display_name": "x" * (MIB + 10)})
    async with client() as http:
        async with http.post(
            f"{stack.gateway}/api/v1/auth/register",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r:
            await assert_problem(r, 413, "PAYLOAD_TOO_LARGE", stack=stack)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
            raw = body.encode()
            for start in range(0, len(raw), 64 * 1024):
                yield raw[start : start + 64 * 1024]

        async with http.post(
            f"{stack.gateway}/api/v1/auth/register",
            data=chunks(),
            headers={"Content-Type": "application/json"},
        ) as r:
            await assert_problem(r, 413, "PAYLOAD_TOO_LARGE", stack=stack)
        assert not await registered(http, stack, email)
    user = await new_user(stack, "Heavy")
    async with (
        client() as http,
        http.patch(
            f"{stack.gateway}/api/v1/users/me",
            headers=user.auth,
            json={"display_name": "y" * (2 * MIB)},
        ) as r,
    ):
        await assert_problem(r, 413, "PAYLOAD_TOO_LARGE", stack=stack)


async def test_oversized_and_numerous_headers_are_4xx_not_5xx(stack: Stack) -> None:
    user = await new_user(stack, "Headers")
    for headers in (
        {"X-Filler": "a" * 64 * 1024},
        {**user.auth, "X-Filler": "a" * 64 * 1024},
        {**user.auth, **{f"X-Filler-{n}": "b" * 100 for n in range(500)}},
        {"Authorization": "Bearer " + "A" * 100_000},
        {"Cookie": "c=" + "d" * 100_000},
    ):
        async with client() as http:
            try:
                async with http.get(f"{stack.gateway}/api/v1/users/me", headers=headers) as r:
                    await assert_problem(r, 431, "HEADER_FIELDS_TOO_LARGE", stack=stack)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # The gateway answers and closes as soon as the head is too large: a client still
                # writing the rest of it may see the reset before the answer.
                pass
    async with (
        client() as http,
        http.get(f"{stack.gateway}/api/v1/users/me", headers=user.auth) as r,
    ):
        assert r.status == 200  # the gateway is fine afterwards


@pytest.mark.parametrize("target", ["gateway", "users"])
@pytest.mark.parametrize("hostile", cases(b"/api/v1/users/me"), ids=lambda h: h.name)
async def test_malformed_heads_are_problem_json_and_never_logged(
    stack: Stack, target: str, hostile: Hostile
) -> None:
    # "users": straight at a service, as a peer inside the cluster could.
    process = stack.processes[target]
    answer = await send_raw("127.0.0.1", process.port, hostile.raw, local_addr=fresh_ip())
    assert answer.status == hostile.status, answer
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert (body["status"], body["code"]) == (hostile.status, hostile.code)
    assert body["request_id"] == answer.headers["x-request-id"]
    text = answer.body.decode()
    for word in (*LEAKS, *internals(stack), TOKEN[:12]):
        assert word not in text, (word, text)
    log = process.log.read_text(errors="replace")
    if hostile.logged_at_info:
        assert body["request_id"] in log  # the refusal is logged, so the next check can fail
    assert TOKEN[:12] not in stack.logs()


async def test_undecodable_bodies_are_400_and_the_service_stays_in_rotation(stack: Stack) -> None:
    # Relayed as sent, the service decodes and refuses; none of it counts as an upstream failure
    # (enough of those would open the circuit for everyone). A fresh address per request keeps
    # the login rate limit out of the way.
    for _ in range(12):
        async with (
            client() as http,
            http.post(
                f"{stack.gateway}/api/v1/auth/login",
                data=b"not gzip at all " + TOKEN.encode(),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            ) as r,
        ):
            await assert_problem(r, 400, "VALIDATION_FAILED", stack=stack)
    async with (
        client() as http,
        http.post(
            f"{stack.gateway}/api/v1/auth/login",
            data=gzip.compress(json.dumps({"email": "no@example.com", "password": "x"}).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ) as r,
    ):
        await assert_problem(r, 401, "UNAUTHENTICATED", stack=stack)
    assert TOKEN[:12] not in stack.logs()


async def test_deeply_nested_json_is_refused(stack: Stack) -> None:
    user = await new_user(stack, "Nested")
    gw = stack.gateway
    for depth in (1_000, 100_000):
        nested = "[" * depth + "]" * depth
        obj = '{"a":' * depth + "1" + "}" * depth
        async with client() as http:
            for method, path, body, auth in (
                (
                    "POST",
                    "/api/v1/auth/register",
                    f'{{"email": "n@example.com", "password": {nested}, "display_name": "n"}}',
                    {},
                ),
                ("POST", "/api/v1/auth/login", f'{{"email": {obj}, "password": "x"}}', {}),
                ("PATCH", "/api/v1/users/me", f'{{"display_name": {nested}}}', user.auth),
                ("POST", "/api/v1/users/batch", f'{{"ids": {nested}}}', user.auth),
                ("POST", "/api/v1/orgs", obj, user.auth),
            ):
                async with http.request(
                    method,
                    f"{gw}{path}",
                    data=body,
                    headers={**auth, "Content-Type": "application/json"},
                ) as r:
                    await assert_problem(r, (400, 422), stack=stack)
    async with client() as http, http.get(f"{gw}/api/v1/users/me", headers=user.auth) as r:
        assert (await r.json())["display_name"] == "Nested"


async def test_malformed_json_and_wrong_content_types_are_problems(stack: Stack) -> None:
    gw = stack.gateway
    async with client() as http:
        for data, ctype, statuses in (
            (b'{"email": ', "application/json", (400,)),
            (b"\xff\xfe\x00garbage", "application/json", (400,)),
            (b'{"email": "a@b.c", "password": "x"}', "text/plain", (400, 415)),
            (b"email=a@b.c&password=x", "application/x-www-form-urlencoded", (400, 415)),
            (b"[1, 2, 3]", "application/json", (400, 422)),
            (b'{"email": "a@b.c", "password": NaN}', "application/json", (400, 422)),
        ):
            async with http.post(
                f"{gw}/api/v1/auth/login", data=data, headers={"Content-Type": ctype}
            ) as r:
                await assert_problem(r, statuses, stack=stack)
