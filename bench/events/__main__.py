"""Event bus benchmark: outbox-to-handler latency (p50/p99) and sustained events/s.

    python -m bench.events [--rate 500] [--seconds 10] [--write results.md]

One process plays a service that commits one event per MongoDB transaction at a fixed rate (the
outbox), its relay (publisher confirms), and a consuming service (its own queue, idempotency
records in MongoDB, manual acks). Latency is handler start minus the event's `occurred_at`, which
is taken before the transaction commits: transaction + relay wake-up + publish/confirm + broker
routing + delivery + the idempotency lookup. Uses the local RabbitMQ (RABBITMQ_URL) and an embedded
SecantusDB (or MONGODB_URL), on an exchange and queues of its own that it deletes afterwards.

CPU per event is reported for this process (writer, relay and consumer together) and, when it is
embedded, for SecantusDB: on two shared cores, their sum is what caps the sustained rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from libs.common.app import freeze_heap
from libs.common.embedded import EmbeddedMongo
from libs.common.events import BusOptions, ConsumerRuntime, Event, Outbox, OutboxRelay
from libs.common.events.topology import connect
from libs.common.mongo import connect_mongo


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


async def run(mongo_url: str, rabbitmq_url: str, rate: int, seconds: float) -> dict[str, float]:
    unique = uuid.uuid4().hex[:8]
    exchange = f"bench.events.{unique}"
    mongo = await connect_mongo(mongo_url, f"bench_events_{unique}", [])
    connection = await connect(rabbitmq_url, connection_name=f"bench-events-{unique}")
    outbox = Outbox(mongo, "bench")
    await outbox.ensure_indexes()
    latencies: list[float] = []
    handled_at: list[float] = []
    total = int(rate * seconds)
    all_done = asyncio.Event()

    async def handler(event: Event) -> None:
        now = datetime.now(UTC)
        latencies.append((now - event.occurred_at).total_seconds())
        handled_at.append(time.perf_counter())
        if len(latencies) >= total:
            all_done.set()

    freeze_heap()  # as every service does once started (libs.common.app.run_app)
    consumer = ConsumerRuntime(
        queue="bench",
        bindings=[(("user.*",), handler)],
        connection=connection,
        exchange=exchange,
        options=BusOptions(prefetch=64),
        processed=mongo.database["processed_events"],
    )
    relay = OutboxRelay(outbox, connection, exchange=exchange)
    await consumer.start()
    await relay.start()

    async def emit(i: int) -> None:
        async with outbox.transaction(request_id=f"bench-{i}") as tx:
            tx.emit("user.updated", {"user_id": f"u{i}"})

    async def monitor() -> None:
        channel = await connection.channel()
        while True:
            await asyncio.sleep(1)
            q = await channel.declare_queue(consumer.queue_name, passive=True)
            pending = await outbox.collection.count_documents({"status": "pending"})
            print(
                f"handled={len(latencies)} outbox_pending={pending} "
                f"queue={q.declaration_result.message_count}"
            )

    watcher = asyncio.create_task(monitor()) if os.environ.get("BENCH_VERBOSE") else None
    tasks: list[asyncio.Task[None]] = []
    cpu_started = time.process_time()
    started = time.perf_counter()
    for i in range(total):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(emit(i)))
    await asyncio.gather(*tasks)
    emitted = time.perf_counter()
    await asyncio.wait_for(all_done.wait(), 120)
    finished = time.perf_counter()
    cpu_used = time.process_time() - cpu_started
    if watcher is not None:
        watcher.cancel()

    await consumer.stop()
    await relay.stop()
    await consumer.delete_topology()
    channel = await connection.channel()
    await channel.exchange_delete(exchange)
    await connection.close()
    await mongo.client.drop_database(mongo.database.name)
    await mongo.client.close()
    return {
        "events": float(total),
        "offered_rate": total / (emitted - started),
        "sustained_rate": total / (finished - started),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "cpu_ms_per_event": cpu_used / total * 1000,
    }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` (Linux), None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", type=Path, default=None, help="append the report to this file")
    args = parser.parse_args()
    rabbitmq_url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    mongo_url = os.environ.get("MONGODB_URL")
    with EmbeddedMongo() if mongo_url is None else _Given(mongo_url) as server:
        pid = server.process.pid if isinstance(server, EmbeddedMongo) and server.process else None
        server_cpu = None if pid is None else _cpu_seconds(pid)
        result = uvloop.run(run(server.url, rabbitmq_url, args.rate, args.seconds))
        if pid is not None and server_cpu is not None:
            server_cpu_after = _cpu_seconds(pid)
            if server_cpu_after is not None:  # set-up and clean-up included, a little
                result["server_cpu_ms_per_event"] = (
                    (server_cpu_after - server_cpu) / result["events"] * 1000
                )
    server_line = (
        f"| SecantusDB CPU per event | {result['server_cpu_ms_per_event']:.2f} ms |\n"
        if "server_cpu_ms_per_event" in result
        else ""
    )
    report = (
        f"## Event bus: outbox -> handler\n\n"
        f"`{datetime.now(UTC):%Y-%m-%d %H:%M}` · `python -m bench.events --rate {args.rate} "
        f"--seconds {args.seconds:g}` · CPython {platform.python_version()}, "
        f"{os.cpu_count()} cores shared with other work, SecantusDB, local RabbitMQ "
        f"(quorum queue)\n\n"
        f"| metric | value |\n|---|---|\n"
        f"| events | {result['events']:.0f} |\n"
        f"| offered rate (committed events/s) | {result['offered_rate']:.0f} |\n"
        f"| sustained rate (handled events/s, start to last handled) "
        f"| {result['sustained_rate']:.0f} |\n"
        f"| latency p50 | {result['p50_ms']:.1f} ms |\n"
        f"| latency p90 | {result['p90_ms']:.1f} ms |\n"
        f"| latency p99 | {result['p99_ms']:.1f} ms |\n"
        f"| latency max | {result['max_ms']:.1f} ms |\n"
        f"| CPU per event, this process (writer + relay + consumer) "
        f"| {result['cpu_ms_per_event']:.2f} ms |\n"
        f"{server_line}"
    )
    print(report)
    if args.write is not None:
        with args.write.open("a") as handle:
            handle.write(report + "\n")


class _Given:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> _Given:
        return self

    def __exit__(self, *_: object) -> None:
        return None


if __name__ == "__main__":
    main()
