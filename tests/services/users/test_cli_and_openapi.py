"""The `portico` CLI against a real database, and the service's OpenAPI document."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

import aio_pika
import jwt
import pytest
from openapi_spec_validator import validate

from services.users.settings import Settings
from tests.services.users.conftest import PASSWORD, Users, outbox_events


async def _portico(settings: Settings, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTICO_")}
    env.update(
        {
            "PORTICO_ENV": "test",
            "MONGODB_URL": settings.mongodb_url,
            "PORTICO_USERS_MONGODB_DATABASE": settings.mongodb_database,
            "PORTICO_USERS_ARGON2_MEMORY_KIB": "64",
            "PORTICO_USERS_ARGON2_TIME_COST": "1",
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from services.users.cli import main; main()",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_creates_the_first_admin(users: Users, settings: Settings, db: Any) -> None:
    code, out, err = await _portico(
        settings,
        "admin",
        "create-user",
        "--admin",
        "--email",
        "Root@Example.com",
        "--password-stdin",
        stdin=PASSWORD.encode() + b"\n",
    )
    assert code == 0, err
    assert "created admin" in out
    assert PASSWORD not in out + err
    stored = await db["users"].find_one({"email": "root@example.com"})
    assert stored["roles"] == ["user", "admin"]
    [event] = await outbox_events(db, "user.created")
    assert event["data"]["roles"] == ["user", "admin"]
    tokens = await users.login("root@example.com")
    assert jwt.decode(tokens["access_token"], options={"verify_signature": False})["roles"] == [
        "user",
        "admin",
    ]
    # Again: the email is taken. A weak password is refused with the policy's reason.
    code, _, err = await _portico(
        settings, "admin", "create-user", "--email", "root@example.com", "--password", PASSWORD
    )
    assert code == 1
    assert "already exists" in err
    code, _, err = await _portico(
        settings, "admin", "create-user", "--email", "weak@example.com", "--password", "password"
    )
    assert code == 1
    assert "at least 12" in err
    assert await db["users"].count_documents({}) == 1


async def test_cli_rotates_the_signing_key(users: Users, settings: Settings, db: Any) -> None:
    user, before = await users.signup()
    before_email = user["email"]
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    code, out, err = await _portico(settings, "keys", "rotate")
    assert code == 0, err
    new_kid = out.split()[3]
    assert new_kid != old_kid
    statuses = {d["kid"]: d["status"] async for d in db["signing_keys"].find({})}
    assert statuses == {old_kid: "retiring", new_kid: "active"}
    jwks = await (await users.client.get("/.well-known/jwks.json")).json()
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    # Published now, signing only after the publication delay: the old key still signs.
    again = await users.login(before_email)
    assert jwt.get_unverified_header(again["access_token"])["kid"] == old_kid


async def test_openapi_document_is_valid_and_covers_the_contract(users: Users) -> None:
    resp = await users.client.get("/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    expected = {
        ("post", "/api/v1/auth/register"),
        ("post", "/api/v1/auth/login"),
        ("post", "/api/v1/auth/refresh"),
        ("post", "/api/v1/auth/logout"),
        ("post", "/api/v1/auth/password"),
        ("get", "/api/v1/auth/sessions"),
        ("delete", "/api/v1/auth/sessions/{id}"),
        ("post", "/api/v1/auth/password-reset"),
        ("post", "/api/v1/auth/password-reset/confirm"),
        ("get", "/.well-known/jwks.json"),
        ("get", "/api/v1/users/me"),
        ("patch", "/api/v1/users/me"),
        ("delete", "/api/v1/users/me"),
        ("get", "/api/v1/users/{id}"),
        ("get", "/api/v1/users"),
        ("post", "/api/v1/users/batch"),
        ("get", "/api/v1/admin/users"),
        ("patch", "/api/v1/admin/users/{id}"),
        ("post", "/api/v1/api-keys"),
        ("get", "/api/v1/api-keys"),
        ("delete", "/api/v1/api-keys/{id}"),
        ("patch", "/api/v1/admin/api-keys/{id}"),
    }
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert documented == expected
    assert not any(p.startswith("/internal") for p in document["paths"])
    register = document["components"]["schemas"]["RegisterRequest"]
    assert register["additionalProperties"] is False


async def test_unknown_route_and_wrong_method_are_problems(users: Users) -> None:
    resp = await users.client.get("/api/v1/nope")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    resp = await users.client.put("/api/v1/auth/login")
    assert resp.status == 405
    assert resp.content_type == "application/problem+json"


AUTHENTICATED = [
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/password"),
    ("GET", "/api/v1/auth/sessions"),
    ("DELETE", "/api/v1/auth/sessions/0123456789abcdef01234567"),
    ("GET", "/api/v1/users/me"),
    ("PATCH", "/api/v1/users/me"),
    ("DELETE", "/api/v1/users/me"),
    ("GET", "/api/v1/users/0123456789abcdef01234567"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users/batch"),
    ("GET", "/api/v1/admin/users"),
    ("PATCH", "/api/v1/admin/users/0123456789abcdef01234567"),
    ("POST", "/api/v1/api-keys"),
    ("GET", "/api/v1/api-keys"),
    ("DELETE", "/api/v1/api-keys/0123456789abcdef01234567"),
    ("PATCH", "/api/v1/admin/api-keys/0123456789abcdef01234567"),
    ("POST", "/internal/v1/api-keys/resolve"),
]
JSON_BODIES = [
    "/api/v1/auth/register",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/auth/password-reset",
    "/api/v1/auth/password-reset/confirm",
]


@pytest.mark.parametrize(("method", "path"), AUTHENTICATED)
async def test_every_private_route_needs_an_identity(
    users: Users, db: Any, method: str, path: str
) -> None:
    resp = await users.client.request(method, path, json={"key": "pk_x", "ids": []})
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "UNAUTHENTICATED"
    assert set(body) >= {"type", "title", "status", "detail", "code", "request_id"}
    assert await outbox_events(db) == []


@pytest.mark.parametrize("path", JSON_BODIES)
@pytest.mark.parametrize(
    ("payload", "status"),
    [(b"{", 400), (b"[]", 422), (b'"x"', 422), (b'{"unexpected": 1}', 422)],
)
async def test_anonymous_routes_refuse_malformed_bodies(
    users: Users, db: Any, path: str, payload: bytes, status: int
) -> None:
    resp = await users.client.post(path, data=payload, headers={"Content-Type": "application/json"})
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["code"] == "VALIDATION_FAILED"
    assert "Traceback" not in str(body)
    assert await outbox_events(db) == []


async def test_cli_replays_a_consumer_queues_parked_events(settings: Settings) -> None:
    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    queue = f"test.cli.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        main = await channel.declare_queue(queue, auto_delete=False)
        dlq = await channel.declare_queue(f"{queue}.dlq", auto_delete=False)
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"id":"e1"}', message_id="e1",
                             headers={"x-portico-attempts": 5, "x-portico-error": "boom"}),
            routing_key=dlq.name,
        )  # fmt: skip
        code, out, err = await _portico(settings, "events", "replay-dlq", queue)
        assert code == 0, err
        assert out.strip() == f"replayed 1 event(s) from {queue}.dlq to {queue}"
        message = await main.get(timeout=5)
        assert message.message_id == "e1"
        assert "x-portico-attempts" not in (message.headers or {})  # every attempt again
        await message.ack()
        assert await dlq.get(fail=False) is None
        code, _, err = await _portico(settings, "events", "replay-dlq", f"{queue}-typo")
        assert code == 1
        assert "no queue" in err
        await main.delete()
        await dlq.delete()
    finally:
        await connection.close()
