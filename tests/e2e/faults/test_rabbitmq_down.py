"""RabbitMQ unreachable during a stream of writes: writes commit (their events wait in the
outbox), and once the broker is back every event of every committed write is consumed once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from tests.e2e.faults.conftest import (
    assert_clean_failure,
    register,
    running_stack,
    unique_email,
)
from tests.e2e.stack import Stack, _rabbitmqctl, eventually

WRITES = 25


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


def cut_broker(stack: Stack) -> None:
    """Take this stack's vhost away from its processes (the shared broker keeps running)."""
    _rabbitmqctl("clear_permissions", "-p", stack.vhost, "guest")
    for line in _rabbitmqctl("list_connections", "pid", "vhost").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1].strip() == stack.vhost:
            _rabbitmqctl("close_connection", parts[0].strip(), "fault injection")


def heal_broker(stack: Stack) -> None:
    _rabbitmqctl("set_permissions", "-p", stack.vhost, "guest", ".*", ".*", ".*")


def vhost_connections(stack: Stack) -> int:
    lines = _rabbitmqctl("list_connections", "vhost").splitlines()
    return sum(1 for line in lines if line.strip() == stack.vhost)


async def test_writes_during_a_broker_outage_are_delivered_once_after_it(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    assert await asyncio.to_thread(vhost_connections, stack) > 0
    await asyncio.to_thread(cut_broker, stack)
    try:
        assert await asyncio.to_thread(vhost_connections, stack) == 0
        emails = [unique_email("mq") for _ in range(WRITES)]
        committed: dict[str, str] = {}  # user id -> email
        for email in emails:
            status, body = await register(http, stack, email)
            if status == 201:
                committed[body["id"]] = email
            else:  # a write may fail, but only cleanly
                assert_clean_failure(status, "application/problem+json", body, {503})
        # The bus is no excuse to refuse writes: they commit and their events wait.
        assert len(committed) == WRITES
        async with AsyncMongoClient(stack.mongo.url if stack.mongo else "") as client:
            users = client["portico_users"]
            pending = await users["outbox"].count_documents(
                {"type": "user.created", "status": "pending"}
            )
            assert pending >= WRITES  # nothing could be published while the vhost was cut
    finally:
        await asyncio.to_thread(heal_broker, stack)

    async with AsyncMongoClient(stack.mongo.url if stack.mongo else "") as client:
        users, orgs = client["portico_users"], client["portico_orgs"]

        async def all_sent() -> bool:
            return await users["outbox"].count_documents({"status": {"$ne": "sent"}}) == 0

        assert await eventually(all_sent, timeout=45), "the relay never drained the outbox"
        created = [
            entry
            async for entry in users["outbox"].find(
                {"type": "user.created", "data.user_id": {"$in": list(committed)}}
            )
        ]
        # One event per committed write, no more (a re-published one would share its id).
        assert sorted(e["data"]["user_id"] for e in created) == sorted(committed)
        keys = [f"orgs:{e['event_id']}" for e in created]

        async def all_consumed() -> bool:
            return await orgs["processed_events"].count_documents({"_id": {"$in": keys}}) == len(
                keys
            )

        assert await eventually(all_consumed, timeout=45), "the orgs consumer missed events"
        # Its effect, exactly once per user: the orgs service's email view.
        view = [doc async for doc in orgs["user_emails"].find({"_id": {"$in": list(committed)}})]
        assert {doc["_id"]: doc["email"] for doc in view} == committed
        assert len(view) == WRITES
    # And the bus works again for new writes.
    status, _ = await register(http, stack, unique_email("after"))
    assert status == 201
