"""The common middleware, through a small app built with the shared factory."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, Field
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from libs.common.app import create_service_app
from libs.common.errors import Conflict, NotFound
from libs.common.http import json_response, parse, principal
from libs.common.logging import get_logger
from libs.common.settings import BaseServiceSettings
from tests.conftest import TEST_SECRET, identity_headers

PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


class ItemCreate(BaseModel):
    name: str = Field(min_length=1, max_length=20)
    count: int = Field(ge=0)


async def get_item(request: web.Request) -> web.Response:
    item_id = request.match_info["id"]
    if item_id == "missing":
        raise NotFound("no such item")
    get_logger("test").info("item read", item_id=item_id)
    return json_response({"id": item_id})


async def create_item(request: web.Request) -> web.Response:
    body = await parse(request, ItemCreate)
    if body.name == "taken":
        raise Conflict("name taken")
    return json_response(body, status=201)


async def explode(_: web.Request) -> web.Response:
    raise RuntimeError("mongodb://admin:hunter2@db.internal:27017 exploded at /srv/app.py:42")


DATABASE_ERRORS = {
    "conflict": OperationFailure("Write conflict during plan execution", code=112),
    "labelled": OperationFailure(
        "txn aborted", code=251, details={"errorLabels": ["TransientTransactionError"]}
    ),
    "down": ServerSelectionTimeoutError("db.internal:27017: [Errno 111] Connection refused"),
    "other": OperationFailure("mongodb://admin:hunter2@db.internal bad plan", code=2),
}


# PyMongo's async server selection raising this while no server is reachable (PYTHON-5167);
# compiled under a pymongo file name, as the middleware tells it apart by the raising frame.
_DRIVER: dict[str, Any] = {}
exec(  # noqa: S102 - a fixed snippet, to get a frame "inside pymongo"
    compile(
        "def select_server():\n    raise RuntimeError('cannot wait on un-acquired lock')\n",
        "/site-packages/pymongo/lock.py",
        "exec",
    ),
    _DRIVER,
)


async def database_error(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind == "driver-lock":
        _DRIVER["select_server"]()
    if kind == "our-lock":
        raise RuntimeError("cannot wait on un-acquired lock")
    raise DATABASE_ERRORS[kind]


async def whoami(request: web.Request) -> web.Response:
    return json_response({"id": principal(request).id})


def make_app() -> web.Application:
    settings = BaseServiceSettings(service_name="contract-test", internal_secret=TEST_SECRET)
    app = create_service_app(settings)
    app.router.add_get("/items/{id}", get_item)
    app.router.add_post("/items", create_item)
    app.router.add_get("/explode", explode)
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/db/{kind}", database_error)
    return app


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    c: TestClient[Any, Any] = await aiohttp_client(make_app())
    return c


def assert_problem(body: dict[str, Any], status: int, code: str) -> None:
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == "about:blank"


async def test_request_id_is_echoed_when_sane(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/items/1", headers={"X-Request-ID": "abc-123.x:y"})
    assert resp.headers["X-Request-ID"] == "abc-123.x:y"


@pytest.mark.parametrize("bad", ["has space", "x" * 200, "new\\nline", "<script>"])
async def test_insane_request_id_is_replaced(client: TestClient[Any, Any], bad: str) -> None:
    resp = await client.get("/items/1", headers={"X-Request-ID": bad})
    assert resp.headers["X-Request-ID"] != bad
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])


async def test_request_id_generated_and_in_problem_body(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/items/missing")
    body = await resp.json()
    assert resp.status == 404
    assert body["request_id"] == resp.headers["X-Request-ID"]


async def test_request_id_is_bound_to_log_lines(
    client: TestClient[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from libs.common.logging import configure_logging

    configure_logging(level="INFO", json=True, service="contract-test")
    await client.get("/items/7", headers={"X-Request-ID": "trace-me-42"})
    lines = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    handler_line = next(line for line in lines if line.get("event") == "item read")
    access_line = next(line for line in lines if line.get("event") == "request")
    assert handler_line["request_id"] == "trace-me-42"
    assert access_line["request_id"] == "trace-me-42"
    assert access_line["route"] == "/items/{id}"
    assert access_line["status"] == 200
    assert "duration_ms" in access_line


async def test_unknown_route_is_problem_404(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    assert_problem(await resp.json(), 404, "NOT_FOUND")


async def test_wrong_method_is_problem_405_with_allow(client: TestClient[Any, Any]) -> None:
    resp = await client.delete("/items/1")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert_problem(await resp.json(), 405, "METHOD_NOT_ALLOWED")


async def test_malformed_json_is_400(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/items", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert_problem(await resp.json(), 400, "VALIDATION_FAILED")


async def test_validation_error_is_422_with_field_errors(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/items", json={"name": "", "count": -1})
    body = await resp.json()
    assert resp.status == 422
    assert_problem(body, 422, "VALIDATION_FAILED")
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"name", "count"}


async def test_oversized_json_is_413(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/items", json={"name": "x" * (1024 * 1024 + 10), "count": 1})
    assert resp.status == 413
    assert_problem(await resp.json(), 413, "PAYLOAD_TOO_LARGE")


async def test_non_json_content_type_is_415(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/items", data=b"name=x", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert_problem(await resp.json(), 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_domain_conflict_is_409(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/items", json={"name": "taken", "count": 1})
    assert resp.status == 409
    assert_problem(await resp.json(), 409, "CONFLICT")


async def test_unexpected_exception_is_500_without_internals(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.get("/explode")
    text = await resp.text()
    assert resp.status == 500
    assert_problem(json.loads(text), 500, "INTERNAL")
    for leak in ("hunter2", "db.internal", "RuntimeError", "app.py", "Traceback"):
        assert leak not in text


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("conflict", 409, "CONFLICT"),  # a lost race the client may simply retry
        ("labelled", 409, "CONFLICT"),
        ("down", 503, "UPSTREAM_UNAVAILABLE"),
        ("other", 500, "INTERNAL"),
        ("driver-lock", 503, "UPSTREAM_UNAVAILABLE"),
        ("our-lock", 500, "INTERNAL"),  # the same message from our own code is a bug: 500
    ],
)
async def test_database_errors_map_to_what_the_client_can_do(
    client: TestClient[Any, Any], kind: str, status: int, code: str
) -> None:
    resp = await client.get(f"/db/{kind}")
    text = await resp.text()
    assert resp.status == status
    assert_problem(json.loads(text), status, code)
    for leak in ("hunter2", "db.internal", "Write conflict", "27017"):
        assert leak not in text


async def test_metrics_are_labelled_by_route_template(client: TestClient[Any, Any]) -> None:
    await client.get("/items/123")
    await client.get("/items/456")
    await client.get("/nope/789")
    text = await (await client.get("/metrics")).text()
    assert 'route="/items/{id}"' in text
    assert 'service="contract-test"' in text
    assert "/items/123" not in text
    assert "/nope/789" not in text
    assert re.search(
        r'http_requests_total\{method="GET",route="/items/\{id\}",service="contract-test",'
        r'status="200"\} [2-9]',
        text,
    ) or re.search(r'http_requests_total\{[^}]*route="/items/\{id\}"[^}]*\} [2-9]', text)
    assert "http_request_duration_seconds_bucket" in text


async def test_health_endpoints(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"


async def test_identity_required_and_verified(client: TestClient[Any, Any]) -> None:
    anonymous = await client.get("/whoami")
    assert anonymous.status == 401
    assert_problem(await anonymous.json(), 401, "UNAUTHENTICATED")
    ok = await client.get("/whoami", headers=identity_headers("u1"))
    assert (await ok.json()) == {"id": "u1"}
    forged = identity_headers("u1", secret="not-the-secret-0123456789abcdefgh")
    assert (await client.get("/whoami", headers=forged)).status == 401
    bare = {"X-Portico-Identity": "v1.eyJpZCI6ICJhZG1pbiJ9.AAAA"}
    assert (await client.get("/whoami", headers=bare)).status == 401


async def test_a_client_gone_mid_body_is_counted_499_not_500(aiohttp_server: Any) -> None:
    # aiohttp's test server, as run_app, cancels the handler when the client disconnects.
    server = await aiohttp_server(make_app())
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /items HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n" + b'{"name": "' + b"x" * 1000
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()

    def count(text: str, status: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("http_requests_total{")
            and 'route="/items"' in line
            and 'service="contract-test"' in line
            and 'method="POST"' in line
            and f'status="{status}"' in line
        )

    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # the handler's cancellation lands shortly after the disconnect
            async with http.get(f"http://{server.host}:{server.port}/metrics") as resp:
                text = await resp.text()
            if count(text, "499") >= 1:
                break
            await asyncio.sleep(0.05)
    assert count(text, "499") >= 1
    assert count(text, "500") == 0
