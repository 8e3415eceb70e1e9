"""CORS: only the listed origin is echoed; an unlisted origin gets no Access-Control-Allow-Origin;
`*` is never sent together with `Access-Control-Allow-Credentials: true` (this stack lists `*`
with credentials on, the misconfiguration that must not be honoured)."""

from __future__ import annotations

from tests.e2e.attacks.conftest import APP_ORIGIN, assert_problem, client, new_user
from tests.e2e.stack import Stack

HOSTILE_ORIGINS = [
    "https://evil.example",
    "null",
    f"{APP_ORIGIN}.evil.example",
    f"https://evil.example/{APP_ORIGIN}",
    APP_ORIGIN.replace("https", "http"),
    f"{APP_ORIGIN}:8443",
    "https://app.example.test%60.evil",
    "*",
    "https://APP.example.test.evil",
]


def assert_never_wildcard_with_credentials(headers: object) -> None:
    allow = headers.get("Access-Control-Allow-Origin")  # type: ignore[attr-defined]
    credentials = headers.get("Access-Control-Allow-Credentials")  # type: ignore[attr-defined]
    assert not (allow == "*" and credentials == "true")


async def test_unlisted_origins_get_no_cors_headers(stack: Stack) -> None:
    user = await new_user(stack, "Cors")
    gw = stack.gateway
    async with client() as http:
        for origin in HOSTILE_ORIGINS:
            for method, path, headers in (
                ("GET", "/api/v1/users/me", user.auth),  # 200 with credentials
                ("GET", "/api/v1/users/me", {}),  # 401
                ("GET", "/api/v1/nope", {}),  # 404
                ("GET", "/.well-known/jwks.json", {}),
            ):
                async with http.request(
                    method, f"{gw}{path}", headers={**headers, "Origin": origin}
                ) as r:
                    assert "Access-Control-Allow-Origin" not in r.headers, (origin, path)
                    assert "Access-Control-Allow-Credentials" not in r.headers, (origin, path)
            async with http.options(
                f"{gw}/api/v1/users/me",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "DELETE",
                    "Access-Control-Request-Headers": "Authorization",
                },
            ) as r:
                assert r.status >= 400, (origin, r.status)
                assert "Access-Control-Allow-Origin" not in r.headers
                assert "Access-Control-Allow-Credentials" not in r.headers
                assert "Access-Control-Allow-Methods" not in r.headers
                await assert_problem(r, 403, "FORBIDDEN", stack=stack)


async def test_control_the_listed_origin_is_echoed_exactly_with_credentials(stack: Stack) -> None:
    user = await new_user(stack, "CorsOk")
    async with client() as http:
        async with http.get(
            f"{stack.gateway}/api/v1/users/me", headers={**user.auth, "Origin": APP_ORIGIN}
        ) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
            assert "Origin" in r.headers.get("Vary", "")
        async with http.options(
            f"{stack.gateway}/api/v1/users/me",
            headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "PATCH"},
        ) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
            assert_never_wildcard_with_credentials(r.headers)
        # Errors carry CORS for the listed origin too (a browser app can read the problem)...
        async with http.get(
            f"{stack.gateway}/api/v1/users/me", headers={"Origin": APP_ORIGIN}
        ) as r:
            await assert_problem(r, 401, "UNAUTHENTICATED", stack=stack)
            assert r.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
            assert_never_wildcard_with_credentials(r.headers)


async def test_upstream_cors_headers_are_not_passed_through(stack: Stack) -> None:
    """Whatever a service says, the gateway alone decides CORS (no wildcard slips through)."""
    user = await new_user(stack, "CorsUp")
    async with client() as http:
        for path in ("/api/v1/users/me", "/api/v1/orgs", "/api/v1/files", "/.well-known/jwks.json"):
            async with http.get(
                f"{stack.gateway}{path}", headers={**user.auth, "Origin": "https://evil.example"}
            ) as r:
                assert r.status == 200
                assert "Access-Control-Allow-Origin" not in r.headers
                assert_never_wildcard_with_credentials(r.headers)
