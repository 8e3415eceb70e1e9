"""The bus end to end on the real broker and SecantusDB: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from libs.common.events import Event, Outbox, handler_session
from libs.common.events.consumer import ATTEMPT_HEADER, ERROR_HEADER, topic_matches
from libs.common.events.handling import after_commit
from libs.common.mongo import Mongo
from tests.libs.common.events.conftest import Bus, close_connections_named, wait_until


def effect_handler(mongo: Mongo, calls: Counter[str] | None = None) -> Any:
    """A deliberately NON-idempotent effect ($inc per event), so a double application shows.

    It writes with the handler's session, as a service's handler does, so the effect commits
    together with the event's processed record.
    """

    async def handle(event: Event) -> None:
        if calls is not None:
            calls[event.id] += 1
        await mongo.database["effects"].update_one(
            {"_id": event.id}, {"$inc": {"applied": 1}}, upsert=True, session=handler_session()
        )

    return handle


async def applied(mongo: Mongo) -> dict[str, int]:
    docs = await mongo.database["effects"].find({}).to_list()
    return {doc["_id"]: doc["applied"] for doc in docs}


async def emit(outbox: Outbox, n: int, type: str = "user.created", **data: Any) -> list[str]:
    async with outbox.transaction(request_id="req-test") as tx:
        return [tx.emit(type, {"user_id": f"u{i}", **data}).id for i in range(n)]


def consumed(type: str, result: str) -> float:
    value = REGISTRY.get_sample_value("events_consumed_total", {"type": type, "result": result})
    return value or 0.0


async def test_thousand_events_survive_a_broker_side_connection_cut(mongo: Mongo, bus: Bus) -> None:
    outbox = Outbox(mongo, "users")
    await outbox.ensure_indexes()
    await bus.consumer("orgs", [(("user.*",), effect_handler(mongo))], mongo=mongo)
    await bus.relay(outbox)

    ids: list[str] = []
    for batch in range(50):
        ids += await emit(outbox, 20)
        if batch == 20:
            assert await close_connections_named(bus.name) >= 2  # relay's and consumer's
        await asyncio.sleep(0.01)

    async def all_applied() -> bool:
        return len(await applied(mongo)) == len(ids)

    await wait_until(all_applied, timeout=90, what="1000 events to be handled")
    effects = await applied(mongo)
    assert set(effects) == set(ids)
    assert set(effects.values()) == {1}  # none applied twice

    async def all_marked_sent() -> bool:
        # Entries whose confirm was lost in the cut are published again, then marked sent.
        return await mongo.database["outbox"].count_documents({"status": "pending"}) == 0

    await wait_until(all_marked_sent, timeout=30, what="the relay to mark every entry sent")
    assert set((await applied(mongo)).values()) == {1}  # the re-publications were deduplicated
    sent = await mongo.database["outbox"].find_one({"status": "sent"})
    assert sent is not None
    assert sent["sent_at"] is not None


async def test_handler_failing_twice_is_retried_and_applied_once(mongo: Mongo, bus: Bus) -> None:
    outbox = Outbox(mongo, "users")
    calls: Counter[str] = Counter()
    effect = effect_handler(mongo)

    async def flaky(event: Event) -> None:
        calls[event.id] += 1
        if calls[event.id] <= 2:
            raise RuntimeError("database hiccup")
        await effect(event)

    retries_before = consumed("user.updated", "retry")
    await bus.consumer("orgs", [(("user.updated",), flaky)], mongo=mongo)
    await bus.relay(outbox)
    [event_id] = await emit(outbox, 1, type="user.updated")

    async def done() -> bool:
        return event_id in await applied(mongo)

    await wait_until(done, what="the retried event")
    await asyncio.sleep(0.3)  # a stray extra delivery would show up here
    assert calls[event_id] == 3
    assert await applied(mongo) == {event_id: 1}
    assert consumed("user.updated", "retry") - retries_before == 2


async def test_handler_failing_after_its_write_leaves_no_partial_effect(
    mongo: Mongo, bus: Bus
) -> None:
    outbox = Outbox(mongo, "users")
    calls: Counter[str] = Counter()
    effect = effect_handler(mongo, calls)

    async def write_then_fail_once(event: Event) -> None:
        await effect(event)
        if calls[event.id] == 1:
            raise RuntimeError("crashed after writing")

    await bus.consumer("orgs", [(("user.updated",), write_then_fail_once)], mongo=mongo)
    await bus.relay(outbox)
    [event_id] = await emit(outbox, 1, type="user.updated")

    async def done() -> bool:
        return event_id in await applied(mongo)

    await wait_until(done, what="the retried event")
    await asyncio.sleep(0.3)
    assert calls[event_id] == 2
    assert await applied(mongo) == {event_id: 1}  # the failed attempt's write was rolled back


async def test_outbox_inside_a_handler_commits_with_the_handled_event(
    mongo: Mongo, bus: Bus
) -> None:
    """A handler that emits (orgs' user.deleted -> org.deleted) joins the handler's transaction."""
    users, orgs = Outbox(mongo, "users"), Outbox(mongo, "orgs", collection="outbox_orgs")
    await orgs.ensure_indexes()
    calls: Counter[str] = Counter()

    async def cascade(event: Event) -> None:
        calls[event.id] += 1
        async with orgs.transaction() as tx:
            await mongo.database["orgs_gone"].insert_one({"cause": event.id}, session=tx.session)
            tx.emit("org.deleted", {"org_id": event.id})
        if calls[event.id] == 1:
            raise RuntimeError("crashed after the cascade")

    await bus.consumer("orgs", [(("user.deleted",), cascade)], mongo=mongo)
    await bus.relay(users)
    [event_id] = await emit(users, 1, type="user.deleted")

    async def done() -> bool:
        return await mongo.database["orgs_gone"].count_documents({}) >= 1

    await wait_until(done, what="the cascade")
    await asyncio.sleep(0.3)
    assert calls[event_id] == 2
    assert await mongo.database["orgs_gone"].count_documents({"cause": event_id}) == 1
    assert await orgs.collection.count_documents({"type": "org.deleted"}) == 1
    assert await mongo.database["processed_events"].count_documents({"event_id": event_id}) == 1


async def test_after_commit_steps_run_only_once_the_handler_committed(
    mongo: Mongo, bus: Bus
) -> None:
    """Deleting a blob belongs after the commit: an aborted attempt must not have done it."""
    outbox = Outbox(mongo, "users")
    calls: Counter[str] = Counter()
    steps: list[str] = []

    async def delete_then_fail_once(event: Event) -> None:
        calls[event.id] += 1
        attempt = calls[event.id]

        async def delete_blob() -> None:
            steps.append(f"blob deleted after attempt {attempt}")

        await after_commit(delete_blob)
        if attempt == 1:
            raise RuntimeError("crashed before the commit")

    await bus.consumer("files", [(("user.deleted",), delete_then_fail_once)], mongo=mongo)
    await bus.relay(outbox)
    [event_id] = await emit(outbox, 1, type="user.deleted")

    async def done() -> bool:
        return calls[event_id] == 2 and bool(steps)

    await wait_until(done, what="the retried handler")
    await asyncio.sleep(0.3)
    assert steps == ["blob deleted after attempt 2"]


async def test_poison_event_is_parked_with_reason_and_the_queue_keeps_flowing(
    mongo: Mongo, bus: Bus
) -> None:
    outbox = Outbox(mongo, "users")
    calls: Counter[str] = Counter()
    effect = effect_handler(mongo)

    async def handler(event: Event) -> None:
        calls[event.id] += 1
        if event.data.get("poison"):
            raise ValueError("cannot handle this one")
        await effect(event)

    runtime = await bus.consumer("files", [(("user.deleted",), handler)], mongo=mongo)
    await bus.relay(outbox)
    [poison] = await emit(outbox, 1, type="user.deleted", poison=True)
    healthy = await emit(outbox, 3, type="user.deleted")

    async def parked() -> bool:
        return calls[poison] == 4 and len(await applied(mongo)) == 3

    await wait_until(parked, what="the poison event to be parked")
    await asyncio.sleep(0.2)
    assert calls[poison] == 4  # max_attempts, then no more
    assert await applied(mongo) == dict.fromkeys(healthy, 1)
    [dead] = await bus.queue_messages(runtime.dlq_name)
    assert dead.message_id == poison
    assert dead.headers[ATTEMPT_HEADER] == 4
    assert "ValueError: cannot handle this one" in str(dead.headers[ERROR_HEADER])
    assert orjson.loads(dead.body)["id"] == poison


async def test_malformed_message_goes_straight_to_the_dlq(mongo: Mongo, bus: Bus) -> None:
    calls: list[Event] = []

    async def handler(event: Event) -> None:
        calls.append(event)

    runtime = await bus.consumer("orgs", [(("user.created",), handler)], mongo=mongo)
    await bus.publish_raw(b"{not json", "user.created", message_id="junk")

    async def parked() -> bool:
        conn = bus.connections[0]
        channel = await conn.channel()
        queue = await channel.declare_queue(runtime.dlq_name, passive=True)
        await channel.close()
        return (queue.declaration_result.message_count or 0) == 1

    await wait_until(parked, what="the malformed message in the DLQ")
    [dead] = await bus.queue_messages(runtime.dlq_name)
    assert "malformed event" in str(dead.headers[ERROR_HEADER])
    assert calls == []


async def test_aborted_transaction_publishes_nothing(mongo: Mongo, bus: Bus) -> None:
    outbox = Outbox(mongo, "users")
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    await bus.consumer("orgs", [(("#",), handler)], mongo=mongo)
    await bus.relay(outbox)
    with pytest.raises(RuntimeError):
        async with outbox.transaction() as tx:
            await mongo.database["users"].insert_one({"_id": "x"}, session=tx.session)
            tx.emit("user.created", {"user_id": "aborted"})
            raise RuntimeError("business rule failed")
    [committed] = await emit(outbox, 1, type="user.updated")

    async def arrived() -> bool:
        return any(e.id == committed for e in seen)

    await wait_until(arrived, what="the committed event")
    await asyncio.sleep(0.3)
    assert [e.data["user_id"] for e in seen] == ["u0"]
    assert await mongo.database["users"].count_documents({}) == 0


async def test_duplicate_publication_is_applied_once(mongo: Mongo, bus: Bus) -> None:
    effect = effect_handler(mongo)
    await bus.consumer("orgs", [(("org.created",), effect)], mongo=mongo)
    event = Event(type="org.created", source="orgs", data={"org_id": "o1"})
    ok_before = consumed("org.created", "ok")
    dup_before = consumed("org.created", "duplicate")
    for _ in range(3):  # e.g. a relay that crashed before recording the broker's confirm
        await bus.publish_raw(event.model_dump_json().encode(), "org.created", message_id=event.id)

    async def settled() -> bool:
        return (
            consumed("org.created", "ok")
            - ok_before
            + consumed("org.created", "duplicate")
            - dup_before
        ) == 3

    await wait_until(settled, what="three deliveries")
    assert await applied(mongo) == {event.id: 1}
    assert consumed("org.created", "duplicate") - dup_before == 2


async def test_two_relays_publish_each_entry_once(mongo: Mongo, bus: Bus) -> None:
    outbox = Outbox(mongo, "users")
    replica = Outbox(mongo, "users")
    # A plain queue counts raw publications (no dedupe in between).
    conn = await bus.connection()
    channel = await conn.channel()
    exchange = await channel.declare_exchange(bus.exchange, "topic", durable=True)
    tap = await channel.declare_queue(f"{bus.exchange}.tap", durable=False)
    bus.extra_queues.append(tap.name)
    await tap.bind(exchange, "#")
    first = await bus.relay(outbox)
    second = await bus.relay(replica)
    ids = await emit(outbox, 50) + await emit(replica, 50)

    async def all_sent() -> bool:
        return await mongo.database["outbox"].count_documents({"status": "sent"}) == 100

    await wait_until(all_sent, what="100 sent entries")
    await asyncio.sleep(0.3)
    messages = await bus.queue_messages(tap.name)
    assert Counter(m.message_id for m in messages) == Counter(ids)
    lock = await mongo.database["outbox_lock"].find_one({"_id": "relay"})
    assert lock is not None
    assert lock["owner"] in {first.owner, second.owner}


async def test_published_message_carries_the_contract_envelope(mongo: Mongo, bus: Bus) -> None:
    outbox = Outbox(mongo, "files")
    conn = await bus.connection()
    channel = await conn.channel()
    exchange = await channel.declare_exchange(bus.exchange, "topic", durable=True)
    tap = await channel.declare_queue(f"{bus.exchange}.tap", durable=False)
    bus.extra_queues.append(tap.name)
    await tap.bind(exchange, "file.*")
    await bus.relay(outbox)
    async with outbox.transaction(request_id="req-42") as tx:
        event = tx.emit("file.uploaded", {"file_id": "f1", "user_id": "u1"})

    async def sent() -> bool:
        return await mongo.database["outbox"].count_documents({"status": "sent"}) == 1

    await wait_until(sent, what="the entry to be sent")
    [message] = await bus.queue_messages(tap.name)
    assert message.routing_key == "file.uploaded"
    assert message.message_id == event.id
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2  # persistent
    body = orjson.loads(message.body)
    assert set(body) == {"id", "type", "occurred_at", "source", "request_id", "data"}
    assert body["request_id"] == "req-42"
    assert body["source"] == "files"
    received = Event.model_validate(body)
    assert received.model_dump(exclude={"occurred_at"}) == event.model_dump(exclude={"occurred_at"})
    # MongoDB keeps milliseconds.
    assert abs((received.occurred_at - event.occurred_at).total_seconds()) < 0.001


async def test_sent_entries_are_pruned_after_retention(mongo: Mongo, bus: Bus) -> None:
    from datetime import UTC, datetime, timedelta

    from libs.common.events import OutboxRelay

    outbox = Outbox(mongo, "users")
    await emit(outbox, 3)
    entries = mongo.database["outbox"]
    old = datetime.now(UTC) - timedelta(days=30)
    first = await entries.find_one({})
    assert first is not None
    await entries.update_one({"_id": first["_id"]}, {"$set": {"status": "sent", "sent_at": old}})
    relay = OutboxRelay(outbox, await bus.connection(), exchange=bus.exchange)
    assert await relay.prune_now() == 1
    assert await entries.count_documents({"status": "pending"}) == 2


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("user.deleted", "user.deleted", True),
        ("user.*", "user.deleted", True),
        ("user.*", "org.deleted", False),
        ("#", "org.member_added", True),
        ("org.#", "org", True),
        ("*.deleted", "file.deleted", True),
        ("*", "user.deleted", False),
    ],
)
def test_topic_matching(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches
