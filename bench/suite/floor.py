"""The Python floor: the least a reverse proxy on CPython + uvloop can do per request.

One `asyncio.Protocol` per client connection, one keep-alive upstream connection per client
connection, the request head forwarded byte for byte, the response (Content-Length only) relayed
in one write. No routing, no authentication, no header rewriting, no metrics, no logs: nothing a
gateway must do, only the event-loop callbacks and socket calls every Python proxy pays. The
suite runs it as a baseline, so the gateway's figures can be read against what CPython itself
costs next to nginx.

    python -m bench.suite.floor PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.need = -1  # bytes of the whole response, once its head is in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            start = head.find(b"\r\ncontent-length:") + 17
            stop = head.find(b"\r\n", start)
            self.need = end + 4 + int(head[start : stop if stop > 0 else None])
        if len(self.buffer) >= self.need:
            response, self.buffer, self.need = self.buffer, b"", -1
            self.client.respond(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost()


class Client(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.buffer = b""
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.upstream = Upstream(self)
        self.connecting = loop.create_task(
            loop.create_connection(lambda: self.upstream, "127.0.0.1", self.upstream_port)
        )
        self.connecting.add_done_callback(lambda _: self._next())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        if self.busy or not self.connecting.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
        assert self.upstream is not None
        assert self.upstream.transport is not None
        self.busy = True
        self.upstream.transport.write(head)

    def respond(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.busy = False
        self._next()

    def upstream_lost(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream_port), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    uvloop.run(serve(port, upstream_port))


if __name__ == "__main__":
    main()
