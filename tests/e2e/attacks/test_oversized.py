"""Oversized bodies (> 1 MiB JSON → 413), oversized headers (4xx, never 5xx) and deeply nested
JSON (400/422) are refused cleanly and store nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import aiohttp

from tests.e2e.attacks.conftest import PASSWORD, assert_problem, client, new_user
from tests.e2e.stack import Stack

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
                    assert 400 <= r.status < 500, r.status
                    text = await r.text()
                    assert "Traceback" not in text
            except aiohttp.ServerDisconnectedError:
                pass  # closing the connection on an oversized head is also a clean refusal
    async with (
        client() as http,
        http.get(f"{stack.gateway}/api/v1/users/me", headers=user.auth) as r,
    ):
        assert r.status == 200  # the gateway is fine afterwards


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
