"""The gateway's shared pipelined Redis connection (gateway/resp.py) against the real Redis:
per-command deadlines on one link (a blocked command stands in for a slow Redis)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

from gateway.resp import RespClient, command

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def test_a_short_deadline_behind_a_slow_command_fails_on_time_and_keeps_the_link() -> None:
    client = RespClient.from_url(REDIS_URL, timeout=1.0)
    try:
        assert await client.execute(command(b"PING")) == b"PONG"
        link = client._protocol
        key = f"test:resp:{uuid.uuid4().hex}".encode()
        # BLPOP blocks this connection for 0.4 s: whatever is pipelined behind it waits.
        slow = asyncio.ensure_future(client.execute(command(b"BLPOP", key, b"0.4"), timeout=1.0))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.execute(command(b"PING"), timeout=0.05)
        assert time.monotonic() - started < 0.35  # its own deadline, not the slow command's
        assert await slow is None  # the slow command still got its (nil) answer
        assert client._protocol is link
        assert not link.closed
        assert await client.execute(command(b"PING")) == b"PONG"  # and replies still match
    finally:
        client.close()


async def test_a_short_deadline_at_the_head_fails_alone_and_the_others_still_get_answers() -> None:
    # A 75 ms rate-limit call first in line during a Redis hiccup must not take the revocation
    # checks queued behind it down with it (they have their own, longer deadlines).
    client = RespClient.from_url(REDIS_URL, timeout=1.0)
    try:
        key = f"test:resp:{uuid.uuid4().hex}".encode()
        assert await client.execute(command(b"PING")) == b"PONG"
        link = client._protocol
        with pytest.raises(TimeoutError):
            await client.execute(command(b"BLPOP", key, b"0.3"), timeout=0.05)
        assert await client.execute(command(b"PING"), timeout=0.8) == b"PONG"
        assert client._protocol is link
    finally:
        client.close()


async def test_a_command_waiting_past_the_link_timeout_drops_the_link_then_reconnects() -> None:
    client = RespClient.from_url(REDIS_URL, timeout=0.2)
    try:
        key = f"test:resp:{uuid.uuid4().hex}".encode()
        with pytest.raises(TimeoutError):
            await client.execute(command(b"BLPOP", key, b"2"), timeout=0.1)
        await asyncio.sleep(0.35)  # the link's own timeout passes: Redis counts as not answering
        assert client._protocol is not None
        assert client._protocol.closed
        assert await client.execute(command(b"PING")) == b"PONG"
    finally:
        client.close()
