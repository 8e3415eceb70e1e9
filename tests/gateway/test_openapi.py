"""`/openapi.json` merges the services' specs under every public route; `/docs` renders it."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from gateway.app import load_table
from gateway.settings import DEFAULT_ROUTES_FILE, Settings
from libs.common.embedded import free_port
from tests.gateway.conftest import Upstream


async def test_openapi_lists_every_public_route_and_validates(
    make_gateway: Any, users: Upstream
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # orgs and files are not running
    gateway = await make_gateway(routes_file=DEFAULT_ROUTES_FILE, orgs_urls=down, files_urls=down)
    response = await gateway.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    table = load_table(Settings(), DEFAULT_ROUTES_FILE)
    for route in table.routes:
        for method in route.methods:
            assert method.lower() in document["paths"][route.template], route.template
    me = document["paths"]["/api/v1/users/me"]["get"]
    assert me["summary"] == "The caller's own profile"  # taken from the users service's spec
    assert "UserPublic" in document["components"]["schemas"]
    assert not any(path.startswith("/internal") for path in document["paths"])
    for own in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert own in document["paths"]


async def test_docs_page_is_self_contained(gateway: Any) -> None:
    response = await gateway.get("/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert "/openapi.json" in page
    assert "https://" not in page  # no CDN


async def test_health_endpoints(gateway: Any) -> None:
    assert (await gateway.get("/healthz")).status == 200
    ready = await gateway.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"redis": "ok"}
    metrics = await (await gateway.get("/metrics")).text()
    assert "gateway_circuit_state" in metrics


async def test_metrics_count_each_proxied_request_once(gateway: Any) -> None:
    def count(metrics: str, prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith(prefix) and 'route="/api/v1/public"' in line
        )

    before = await (await gateway.get("/metrics")).text()
    for _ in range(3):
        assert (await gateway.get("/api/v1/public")).status == 200
    # Batched in the process; a scrape always sees every finished request.
    after = await (await gateway.get("/metrics")).text()
    upstream = "gateway_upstream_request_duration_seconds_count{"
    requests = "http_requests_total{"
    assert count(after, upstream) - count(before, upstream) == 3
    assert count(after, requests) - count(before, requests) == 3
    assert 'upstream="orgs"' in next(
        line
        for line in after.splitlines()
        if line.startswith(upstream) and 'route="/api/v1/public"' in line
    )
