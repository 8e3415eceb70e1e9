"""Route table: most-specific matching, 404/405 as problem+json, /internal never routed,
validation naming the bad entry, atomic reload that keeps the old table on a bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.app import GATEWAY, reload_routes
from gateway.routing import RouteTableError, parse_route_table
from gateway.settings import DEFAULT_ROUTES_FILE
from tests.gateway.conftest import TEST_ROUTES, Upstream, assert_problem


async def test_routes_to_the_configured_upstream(gateway: Any, orgs: Upstream) -> None:
    response = await gateway.get("/api/v1/public?x=1")
    body = await response.json()
    assert response.status == 200
    assert body["upstream"] == "orgs"
    assert body["path"] == "/api/v1/public?x=1"
    assert orgs.recorder.paths() == ["/api/v1/public?x=1"]


async def test_static_template_beats_parameter(gateway: Any, orgs: Upstream) -> None:
    # /api/v1/things/special is auth: none; /api/v1/things/{id} needs a token.
    assert (await gateway.get("/api/v1/things/special")).status == 200
    await assert_problem(await gateway.get("/api/v1/things/other"), 401, "UNAUTHENTICATED")


async def test_wildcard_prefix_route(gateway: Any, files: Upstream) -> None:
    response = await gateway.get("/api/v1/files/a/b/c")
    assert response.status == 200
    assert files.recorder.paths() == ["/api/v1/files/a/b/c"]


async def test_unknown_path_is_404_problem(gateway: Any, orgs: Upstream) -> None:
    await assert_problem(await gateway.get("/api/v1/nope"), 404, "NOT_FOUND")
    await assert_problem(await gateway.get("/api/v1/public/extra"), 404, "NOT_FOUND")
    assert orgs.recorder.hits == []


async def test_wrong_method_is_405_with_allow(gateway: Any, orgs: Upstream) -> None:
    response = await gateway.delete("/api/v1/public")
    await assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["Allow"] == "GET, HEAD, POST"
    assert orgs.recorder.hits == []


async def test_head_follows_get(gateway: Any) -> None:
    response = await gateway.head("/api/v1/public")
    assert response.status == 200
    assert int(response.headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    "path",
    [
        "/internal/v1/api-keys/resolve",
        "/api/v1/files/..%2F..%2Finternal%2Fv1%2Fapi-keys%2Fresolve",
        "/api/v1/files/%2e%2e/%2e%2e/internal/v1/api-keys/resolve",
        "/api/v1/files/x%5C..%5Cinternal",
    ],
)
async def test_internal_paths_are_never_routed(
    gateway: Any, users: Upstream, files: Upstream, path: str
) -> None:
    await assert_problem(await gateway.post(path, json={"key": "pk_x"}), 404, "NOT_FOUND")
    await assert_problem(await gateway.get(path), 404, "NOT_FOUND")
    assert users.recorder.resolves == 0
    assert files.recorder.hits == []


def table(text: str) -> Any:
    import yaml

    return parse_route_table(
        yaml.safe_load(text), upstreams={"users", "orgs", "files"}, local_handlers={"usage"}
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{path: /a, methods: [GET], upstream: nowhere}", "unknown upstream 'nowhere'"),
        ("{path: /a, methods: [FETCH], upstream: orgs}", "methods"),
        ("{path: a, methods: [GET], upstream: orgs}", "path"),
        ("{path: /internal/x, methods: [GET], upstream: orgs}", "/internal"),
        ("{path: /a, methods: [GET], upstream: orgs, auth: maybe}", "auth"),
        ("{path: /a, methods: [GET], upstream: orgs, timeout: -1}", "timeout"),
        ("{path: /a, methods: [GET], upstream: orgs, body_limit: lots}", "not a size"),
        ("{path: /a, methods: [GET], upstream: orgs, colour: red}", "colour"),
        ("{path: '/a/{id', methods: [GET], upstream: orgs}", "bad path segment"),
        ("{path: /a, methods: [GET], upstream: gateway, handler: nope}", "handler"),
        ("{path: '/x/{id}', methods: [GET], upstream: orgs}", "duplicates routes[0]"),
    ],
)
def test_invalid_entry_is_named(entry: str, message: str) -> None:
    text = f"routes:\n  - {{path: '/x/{{other}}', methods: [GET], upstream: orgs}}\n  - {entry}\n"
    with pytest.raises(RouteTableError) as caught:
        table(text)
    assert "routes[1]" in str(caught.value)
    assert message in str(caught.value)


def test_the_shipped_route_table_is_valid() -> None:
    from gateway.app import load_table
    from gateway.settings import Settings

    loaded = load_table(Settings(), DEFAULT_ROUTES_FILE)
    assert loaded.match("/api/v1/users/me") is not None
    assert loaded.match("/internal/v1/api-keys/resolve") is None


async def test_reload_with_broken_file_keeps_serving(
    gateway: Any, routes_file: Path, orgs: Upstream
) -> None:
    app = gateway.server.app
    before = app[GATEWAY].table
    for broken in ("routes: [", "routes:\n  - {path: /a, methods: [GET], upstream: nowhere}\n",
                   "just a string"):  # fmt: skip
        routes_file.write_text(broken)
        assert reload_routes(app) is False
        assert app[GATEWAY].table is before
        assert (await gateway.get("/api/v1/public")).status == 200
    routes_file.unlink()
    assert reload_routes(app) is False
    assert (await gateway.get("/api/v1/public")).status == 200


async def test_reload_with_good_file_swaps_the_table(gateway: Any, routes_file: Path) -> None:
    await assert_problem(await gateway.get("/api/v1/brand-new"), 404, "NOT_FOUND")
    routes_file.write_text(
        TEST_ROUTES.replace(
            "routes:\n",
            "routes:\n  - {path: /api/v1/brand-new, methods: [GET], upstream: orgs, auth: none}\n",
        )
    )
    assert reload_routes(gateway.server.app) is True
    assert (await gateway.get("/api/v1/brand-new")).status == 200


async def test_dot_segments_in_query_are_fine(gateway: Any, orgs: Upstream) -> None:
    response = await gateway.get("/api/v1/public?next=/a/../b&x=%2F")
    assert response.status == 200
    assert orgs.recorder.paths() == ["/api/v1/public?next=/a/../b&x=/"]  # decoded by the echo
