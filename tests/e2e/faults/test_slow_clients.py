"""Slow clients: headers sent a byte at a time and bodies that stall are cut off by the gateway,
without stalling anyone else, without blaming (and ejecting) a healthy upstream, and with memory
bounded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.faults.conftest import register, running_stack, unique_email
from tests.e2e.stack import Stack

ROUTE_TIMEOUT = 2  # seconds; the gateway's route timeout in this stack
IDLE_TIMEOUT = 3  # seconds for a client to send a complete request head


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(
        tmp_path,
        timeout=ROUTE_TIMEOUT,
        extra_env={"PORTICO_GATEWAY_CLIENT_IDLE_TIMEOUT": str(IDLE_TIMEOUT)},
    ) as running:
        yield running


def rss_kib(stack: Stack) -> int:
    popen = stack.processes["gateway"].popen
    assert popen is not None
    for line in Path(f"/proc/{popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def open_raw(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = stack.processes["gateway"].port
    return await asyncio.open_connection("127.0.0.1", port)


async def slow_headers(stack: Stack, finished: list[str]) -> bytes:
    """Trickle a request head one byte every 0.2 s; returns what the gateway answered when it
    cut the connection (the trickle would take far longer than the idle timeout)."""
    reader, writer = await open_raw(stack)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    try:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)
            if reader.at_eof():
                break
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionError, OSError):
        return b""
    finally:
        finished.append("slow")
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def stalled_body(stack: Stack, finished: list[str]) -> bytes:
    """Announce a 1000-byte JSON body, send 10 bytes of it, and stall."""
    reader, writer = await open_raw(stack)
    try:
        writer.write(
            b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"email": '
        )
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        finished.append("stalled")
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def test_slow_headers_are_cut_off_without_stalling_others(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    finished: list[str] = []
    before = rss_kib(stack)
    slow = [asyncio.create_task(slow_headers(stack, finished)) for _ in range(100)]
    await asyncio.sleep(0.5)
    # Meanwhile normal clients are served at once.
    for _ in range(5):
        async with http.get(f"{stack.gateway}/.well-known/jwks.json") as resp:
            assert resp.status == 200
        finished.append("normal")
    answers = await asyncio.gather(*slow)
    # The normal requests all finished before any slow connection was cut off, and every slow
    # connection was closed by the gateway long before its head was complete (no 200 for it).
    assert finished[:5] == ["normal"] * 5
    assert all(b"200 OK" not in answer for answer in answers)
    assert rss_kib(stack) - before < 64 * 1024
    async with http.get(f"{stack.gateway}/.well-known/jwks.json") as resp:
        assert resp.status == 200


async def test_stalled_bodies_time_out_without_blaming_the_upstream(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    finished: list[str] = []
    before = rss_kib(stack)
    # More stalled clients than the circuit breaker's failure threshold (5).
    stalled = [asyncio.create_task(stalled_body(stack, finished)) for _ in range(8)]
    await asyncio.sleep(0.3)
    status, _ = await register(http, stack, unique_email("during"))
    assert status == 201
    finished.append("normal")
    answers = await asyncio.gather(*stalled)
    assert finished[0] == "normal"
    for answer in answers:
        # A stalled client gets a clean 408 problem (or at worst a closed connection).
        if answer:
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"application/problem+json" in answer
    # The service was never at fault: it still takes requests (its circuit did not open).
    status, body = await register(http, stack, unique_email("after"))
    assert status == 201, body
    async with http.get(f"{stack.gateway}/metrics") as resp:
        assert 'gateway_circuit_state{upstream="users"} 0.0' in await resp.text()
    assert rss_kib(stack) - before < 64 * 1024
