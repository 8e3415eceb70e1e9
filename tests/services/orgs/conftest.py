"""Fixtures of the orgs service tests: the app on a fresh database, and an API driver."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.embedded import free_port
from libs.common.events import Event
from libs.common.mongo import MONGO
from services.orgs.app import create_app
from services.orgs.events import on_user_upserted
from services.orgs.keys import ORGS
from services.orgs.settings import Settings
from tests.conftest import TEST_SECRET, identity_headers

Client = TestClient[web.Request, web.Application]


def new_id() -> str:
    return uuid.uuid4().hex[:24]


@pytest.fixture
def settings(mongo_url: str, db_name: str) -> Settings:
    return Settings(
        mongodb_url=mongo_url,
        mongodb_database=db_name,
        internal_secret=TEST_SECRET,
        environment="test",
        # Nothing listens here: a user missing from the local email view cannot be resolved.
        users_url=f"http://127.0.0.1:{free_port()}",
        users_timeout=2.0,
    )


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings
) -> AsyncIterator[Client]:
    test_client = await aiohttp_client(create_app(settings))
    yield test_client
    await test_client.app[MONGO].client.drop_database(settings.mongodb_database)


@dataclass
class Api:
    """Drives the orgs API like a client behind the gateway would."""

    client: Client

    @property
    def db(self) -> Any:
        return self.client.app[MONGO].database

    async def call(
        self, method: str, path: str, user: str | None, json: Any = None, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers.update(identity_headers(user))
        async with self.client.request(
            method, path, json=json, headers=headers, **kwargs
        ) as response:
            body = await response.read()
            parsed: Any = None
            if body:
                parsed = await response.json(content_type=None)
            return response.status, parsed, response.headers

    async def user(self, email: str | None = None) -> str:
        """A user the orgs service knows the email of (as `user.created` would tell it)."""
        user_id = new_id()
        event = Event(
            type="user.created",
            source="users",
            data={"user_id": user_id, "email": email or f"{user_id}@example.com"},
        )
        await on_user_upserted(self.client.app[ORGS], event)
        return user_id

    async def email(self, user_id: str) -> str:
        row = await self.db["user_emails"].find_one({"_id": user_id})
        return str(row["email"])

    async def org(self, owner: str, slug: str | None = None, name: str = "Acme") -> str:
        status, body, _ = await self.call(
            "POST", "/api/v1/orgs", owner, {"name": name, "slug": slug or f"o-{new_id()[:12]}"}
        )
        assert status == 201, body
        return str(body["id"])

    async def invite(self, org_id: str, by: str, email: str, role: str = "member") -> str:
        status, body, _ = await self.call(
            "POST", f"/api/v1/orgs/{org_id}/invitations", by, {"email": email, "role": role}
        )
        assert status == 201, body
        return str(body["token"])

    async def join(
        self, org_id: str, user: str, role: str = "member", by: str | None = None
    ) -> None:
        """Make `user` a member through the invitation flow (invited by an owner)."""
        inviter = by or await self.owner_of(org_id)
        token = await self.invite(org_id, inviter, await self.email(user), role)
        status, body, _ = await self.call("POST", f"/api/v1/invitations/{token}/accept", user)
        assert status == 200, body

    async def owner_of(self, org_id: str) -> str:
        from bson import ObjectId

        row = await self.db["memberships"].find_one({"org_id": ObjectId(org_id), "role": "owner"})
        return str(row["user_id"])

    async def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        query = {"type": type_} if type_ else {}
        rows = await self.db["outbox"].find(query).sort("_id", 1).to_list()
        return [{"type": r["type"], **r["data"]} for r in rows]

    async def roles(self, org_id: str) -> dict[str, str]:
        from bson import ObjectId

        rows = await self.db["memberships"].find({"org_id": ObjectId(org_id)}).to_list()
        return {r["user_id"]: r["role"] for r in rows}


@pytest.fixture
def api(client: Client) -> Api:
    return Api(client)
