"""NoSQL operator injection: `{"$gt": ""}` in JSON fields and `[$ne]` in query strings are
4xx problems that leak nothing, and search terms are never patterns."""

from __future__ import annotations

import uuid
from typing import Any

from tests.e2e.attacks.conftest import assert_problem, client, new_user
from tests.e2e.stack import Stack

OPERATORS: list[Any] = [{"$gt": ""}, {"$ne": None}, {"$regex": ".*"}, {"$where": "1"}, ["$gt", ""]]


async def test_operators_in_login_register_and_reset_bodies_are_refused(stack: Stack) -> None:
    victim = await new_user(stack, "Injected")
    gw = stack.gateway
    for op in OPERATORS:
        async with client() as http:  # a fresh address per operator: the login policy stays out
            for body in (
                {"email": op, "password": op},
                {"email": victim.email, "password": op},
                {"email": op, "password": "a long enough passphrase 42"},
            ):
                async with http.post(f"{gw}/api/v1/auth/login", json=body) as r:
                    problem = await assert_problem(r, (400, 422), stack=stack)
                    assert "access_token" not in problem
            async with http.post(
                f"{gw}/api/v1/auth/register", json={"email": op, "password": op, "display_name": op}
            ) as r:
                await assert_problem(r, (400, 422), stack=stack)
            async with http.post(f"{gw}/api/v1/auth/password-reset", json={"email": op}) as r:
                await assert_problem(r, (400, 422), stack=stack)
            async with http.post(f"{gw}/api/v1/auth/refresh", json={"refresh_token": op}) as r:
                await assert_problem(r, (400, 401, 422), stack=stack)


async def test_operators_in_authenticated_bodies_are_refused(stack: Stack) -> None:
    user = await new_user(stack, "Body")
    gw = stack.gateway
    async with client() as http:
        for op in OPERATORS:
            for method, path, body in (
                ("PATCH", "/api/v1/users/me", {"display_name": op}),
                ("POST", "/api/v1/users/batch", {"ids": [op]}),
                *([("POST", "/api/v1/users/batch", {"ids": op})] if isinstance(op, dict) else []),
                ("POST", "/api/v1/orgs", {"name": op, "slug": op}),
                ("POST", "/api/v1/api-keys", {"name": op, "scopes": op}),
            ):
                async with http.request(method, f"{gw}{path}", headers=user.auth, json=body) as r:
                    await assert_problem(r, (400, 422), stack=stack)
        async with http.get(
            f"{gw}/api/v1/users/me", headers={**user.auth, "Cache-Control": "no-cache"}
        ) as r:
            assert (await r.json())["display_name"] == "Body"


async def test_operators_in_query_strings_leak_nothing(stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    other = await new_user(stack, f"Hidden{marker}")
    user = await new_user(stack, "Seeker")
    gw = stack.gateway
    async with client() as http:
        async with http.get(f"{gw}/api/v1/users", headers=user.auth) as r:
            plain = await r.json()
        for query in ("q[$ne]=x", "q[$gt]=", "q[$regex]=.*", "limit[$gt]=0", "cursor[$ne]=x"):
            async with http.get(f"{gw}/api/v1/users?{query}", headers=user.auth) as r:
                text = await r.text()
                assert other.email not in text, query
                if r.status == 200:  # a bracketed name is an unknown parameter: ignored, not run
                    assert await r.json() == plain, query
                else:
                    await assert_problem(r, (400, 422), stack=stack)
        for query in (
            "q=%7B%22%24ne%22%3Anull%7D",
            "q=zz-nobody&q[$ne]=y",
            "q[$ne]=x&q=zz-no-such-name",
        ):
            async with http.get(f"{gw}/api/v1/users?{query}", headers=user.auth) as r:
                text = await r.text()
                if r.status == 200:  # the literal value is searched: nobody matches
                    assert (await r.json())["items"] == [], query
                else:
                    await assert_problem(r, (400, 422), stack=stack)
        # Search terms are literal prefixes, never regular expressions.
        for pattern in (".*", "^", ".", "(?i)", "[a-z]", "\\", "$where"):
            async with http.get(
                f"{gw}/api/v1/users", params={"q": pattern}, headers=user.auth
            ) as r:
                if r.status == 200:
                    body = await r.json()
                    assert all(item["id"] != other.id for item in body["items"]), pattern
                else:
                    await assert_problem(r, (400, 422), stack=stack)
        # The literal prefix does find the user (control).
        async with http.get(
            f"{gw}/api/v1/users", params={"q": f"Hidden{marker}"}, headers=user.auth
        ) as r:
            assert r.status == 200
            assert [item["id"] for item in (await r.json())["items"]] == [other.id]
        for query in (
            "org_id[$gt]=",
            "org_id[$ne]=x",
            "org_id=%7B%22%24gt%22%3A%22%22%7D",
            "org_id=$where",
        ):
            async with http.get(f"{gw}/api/v1/files?{query}", headers=user.auth) as r:
                if r.status == 200:
                    assert (await r.json())["items"] == [], query
                else:
                    await assert_problem(r, (400, 403, 404, 422), stack=stack)
        for path in (
            "/api/v1/files/%7B%22%24ne%22%3Anull%7D",
            "/api/v1/orgs/%7B%22%24gt%22%3A%22%22%7D",
            "/api/v1/users/%24ne",
            "/api/v1/orgs/$where/members",
        ):
            async with http.get(f"{gw}{path}", headers=user.auth) as r:
                await assert_problem(r, (400, 404, 422), stack=stack)
