"""The bus end to end on the real broker and SecantusDB: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from bson import ObjectId
from prometheus_client import REGISTRY

from libs.common.embedded import EmbeddedMongo
from libs.common.events import Event, Outbox, OutboxEntry, handler_session
from libs.common.events.consumer import ATTEMPT_HEADER, ERROR_HEADER, topic_matches
from libs.common.events.handling import after_commit
from libs.common.events.replay import replay_dead_letters
from libs.common.mongo import Mongo, connect_mongo
from tests.libs.common.events.conftest import FAST, Bus, close_connections_named, wait_until


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


async def test_parked_events_are_replayed_to_their_own_queue_once_the_cause_is_fixed(
    mongo: Mongo, bus: Bus
) -> None:
    outbox = Outbox(mongo, "users")
    calls: Counter[str] = Counter()
    effect = effect_handler(mongo)
    broken = [True]

    async def handler(event: Event) -> None:
        calls[event.id] += 1
        if broken[0]:
            raise ValueError("a bug, fixed later")
        await effect(event)

    async def other(event: Event) -> None:  # another service bound to the same events
        calls[f"other:{event.id}"] += 1

    runtime = await bus.consumer("files", [(("user.deleted",), handler)], mongo=mongo)
    await bus.consumer("orgs", [(("user.deleted",), other)], mongo=mongo)
    await bus.relay(outbox)
    parked_ids = await emit(outbox, 2, type="user.deleted")

    async def parked() -> bool:
        return await bus.depth(runtime.dlq_name) == 2

    await wait_until(parked, what="both events parked")
    before = {i: calls[i] for i in parked_ids}  # every attempt (a group's too) failed
    broken[0] = False  # the fix is deployed
    connection = await bus.connection()
    assert await replay_dead_letters(connection, runtime.queue_name) == 2

    async def replayed() -> bool:
        return await applied(mongo) == dict.fromkeys(parked_ids, 1)

    await wait_until(replayed, what="the replayed events handled")
    await asyncio.sleep(0.2)
    # Applied once each (a transaction retried on a conflict may run a handler again, its
    # effect still once), and handled again: the handler ran after the fix.
    assert await applied(mongo) == dict.fromkeys(parked_ids, 1)
    assert all(calls[i] > before[i] for i in parked_ids)
    assert all(calls[f"other:{i}"] == 1 for i in parked_ids)  # nobody else saw them again
    assert await bus.queue_messages(runtime.dlq_name) == []
    assert await replay_dead_letters(connection, runtime.queue_name) == 0
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):  # a typo creates nothing
        await replay_dead_letters(connection, f"{runtime.queue_name}-typo")


async def test_malformed_message_goes_straight_to_the_dlq(mongo: Mongo, bus: Bus) -> None:
    calls: list[Event] = []

    async def handler(event: Event) -> None:
        calls.append(event)

    runtime = await bus.consumer("orgs", [(("user.created",), handler)], mongo=mongo)
    await bus.publish_raw(b"{not json", "user.created", message_id="junk")

    async def parked() -> bool:
        return await bus.depth(runtime.dlq_name) == 1

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


async def test_a_failing_handler_in_a_group_commit_costs_the_others_nothing(
    mongo: Mongo, bus: Bus
) -> None:
    """Deliveries that wait for the one transaction slot share the next transaction; one of them
    failing after its write aborts that group, and every effect still lands exactly once."""
    outbox = Outbox(mongo, "users")
    await outbox.ensure_indexes()
    calls: Counter[str] = Counter()
    effect = effect_handler(mongo, calls)
    sessions: dict[str, list[object]] = {}  # the transaction each call of a handler ran in
    first = asyncio.Event()

    async def handler(event: Event) -> None:
        sessions.setdefault(event.id, []).append(handler_session())
        if not first.is_set():  # hold the only slot so the rest queue up into one group
            first.set()
            await asyncio.sleep(0.3)
        await effect(event)
        if event.data.get("fails") and calls[event.id] == 1:
            raise RuntimeError("crashed after writing")

    grouped = dataclasses.replace(FAST, group_commit=50, transactions=1)
    await bus.consumer("orgs", [(("user.*",), handler)], mongo=mongo, options=grouped)
    await bus.relay(outbox)
    async with outbox.transaction() as tx:
        ids = [tx.emit("user.updated", {"user_id": f"u{i}"}).id for i in range(20)]
        failing = tx.emit("user.updated", {"user_id": "x", "fails": True}).id
        ids += [tx.emit("user.updated", {"user_id": f"v{i}"}).id for i in range(20)]

    async def all_applied() -> bool:
        return len(await applied(mongo)) == len(ids) + 1

    await wait_until(all_applied, what="41 events to be applied")
    await asyncio.sleep(0.3)
    assert await applied(mongo) == dict.fromkeys([*ids, failing], 1)
    assert calls[failing] == 2  # its group's attempt, then its retry
    # The events handled ahead of it in its group: rolled back with it, then handled again on
    # their own (a later attempt of theirs in a transaction of its own).
    aborted_group = sessions[failing][0]
    grouped_with = [i for i in ids if sessions[i][0] is aborted_group]
    assert grouped_with
    for event_id in grouped_with:
        assert len(sessions[event_id]) >= 2
        assert sessions[event_id][-1] is not aborted_group
    assert await mongo.database["processed_events"].count_documents({}) == len(ids) + 1


async def test_an_entry_committed_behind_the_relay_is_still_published(
    mongo: Mongo, bus: Bus
) -> None:
    """The relay reads on past the batch it is still marking sent; an entry whose `_id` is
    behind that point (its transaction committed late) is found by a later full read."""
    outbox = Outbox(mongo, "users")
    await outbox.ensure_indexes()
    seen: Counter[str] = Counter()

    async def handler(event: Event) -> None:
        seen[event.id] += 1

    await bus.consumer("orgs", [(("user.*",), handler)], mongo=mongo)
    conn = await bus.connection()
    channel = await conn.channel()
    exchange = await channel.declare_exchange(bus.exchange, "topic", durable=True)
    tap = await channel.declare_queue(f"{bus.exchange}.tap", durable=False)
    bus.extra_queues.append(tap.name)
    await tap.bind(exchange, "#")  # counts raw publications
    ids: list[str] = []
    for _ in range(5):  # a backlog: the relay reads full batches
        ids += await emit(outbox, 200)
    await bus.relay(outbox)
    late = Event(type="user.updated", source="users", data={"user_id": "late"})
    entry = OutboxEntry.from_event(late).model_dump()
    entry["_id"] = ObjectId.from_datetime(datetime.now(UTC) - timedelta(minutes=5))
    await asyncio.sleep(0.05)
    await outbox.collection.insert_one(entry)

    async def all_seen() -> bool:
        return set(seen) == {*ids, late.id}

    await wait_until(all_seen, what="the backlog and the late entry")

    async def all_marked_sent() -> bool:
        return await outbox.collection.count_documents({"status": "pending"}) == 0

    await wait_until(all_marked_sent, what="every entry marked sent")
    messages = await bus.queue_messages(tap.name)
    assert Counter(m.message_id for m in messages) == Counter([*ids, late.id])  # each once


async def test_an_insert_by_another_process_wakes_the_relay_before_its_poll(
    mongo: Mongo, bus: Bus
) -> None:
    outbox, other_process = Outbox(mongo, "users"), Outbox(mongo, "users")
    await outbox.ensure_indexes()
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    await bus.consumer("orgs", [(("user.*",), handler)], mongo=mongo)
    await bus.relay(outbox, options=dataclasses.replace(FAST, poll_interval=60.0))
    await asyncio.sleep(0.3)  # the relay is idle, waiting for work
    [event_id] = await emit(other_process, 1)  # no in-process signal reaches the relay

    async def arrived() -> bool:
        return [e.id for e in seen] == [event_id]

    await wait_until(arrived, timeout=10, what="the change stream to wake the relay")


async def test_the_relay_watches_again_once_the_database_is_back(tmp_path: Path, bus: Bus) -> None:
    # A database of its own, to stop and start again (same port, same storage).
    server = EmbeddedMongo(storage=tmp_path / "db").start()
    handles: list[Mongo] = []
    try:
        # The relay's process (its stream gives up on a missing server quickly) and another one.
        handles.append(await connect_mongo(server.url, "relay_watch", [], timeout_ms=500))
        handles.append(await connect_mongo(server.url, "relay_watch", []))
        outbox, other_process = Outbox(handles[0], "users"), Outbox(handles[1], "users")
        await outbox.ensure_indexes()
        seen: list[str] = []

        async def handler(event: Event) -> None:
            seen.append(event.id)

        await bus.consumer("orgs", [(("user.*",), handler)], mongo=None)
        await bus.relay(outbox, options=dataclasses.replace(FAST, poll_interval=60.0))
        await asyncio.sleep(0.5)  # idle, waiting for work: the change stream is open
        server.stop()
        await asyncio.sleep(1.5)  # the stream's getMore fails; resuming finds no server
        server.start()

        # Committed while the stream was down, or just after: published once it is back.
        [first] = await emit(other_process, 1)

        async def first_arrived() -> bool:
            return seen == [first]

        await wait_until(first_arrived, timeout=15, what="the entry committed during the outage")
        # Now only the change stream can wake the relay before its 60 s poll.
        [second] = await emit(other_process, 1)

        async def second_arrived() -> bool:
            return seen == [first, second]

        await wait_until(second_arrived, timeout=10, what="the change stream, watched again")
    finally:
        for relay in bus.relays:
            await relay.stop()
        bus.relays.clear()
        for handle in handles:
            await handle.client.close()
        server.stop()
