"""The outbox commits events with the state change, and nothing when the transaction aborts."""

from __future__ import annotations

import pytest

from libs.common.events import Outbox
from libs.common.mongo import Mongo


async def test_committed_transaction_writes_state_and_events(mongo: Mongo) -> None:
    outbox = Outbox(mongo, "test")
    await outbox.ensure_indexes()
    async with outbox.transaction(request_id="rid-1") as tx:
        await mongo.database["things"].insert_one({"name": "a"}, session=tx.session)
        tx.emit("user.created", {"user_id": "a"})
    assert await mongo.database["things"].count_documents({}) == 1
    entries = await mongo.database["outbox"].find({}).to_list()
    assert [(e["type"], e["status"], e["request_id"]) for e in entries] == [
        ("user.created", "pending", "rid-1")
    ]
    assert outbox.wakeup.is_set()


async def test_aborted_transaction_writes_nothing(mongo: Mongo) -> None:
    outbox = Outbox(mongo, "test")
    with pytest.raises(RuntimeError):
        async with outbox.transaction() as tx:
            await mongo.database["things"].insert_one({"name": "b"}, session=tx.session)
            tx.emit("user.created", {"user_id": "b"})
            raise RuntimeError("business rule failed")
    assert await mongo.database["things"].count_documents({}) == 0
    assert await mongo.database["outbox"].count_documents({}) == 0
    assert not outbox.wakeup.is_set()


async def test_unknown_event_type_is_refused(mongo: Mongo) -> None:
    outbox = Outbox(mongo, "test")
    with pytest.raises(ValueError, match="unknown event type"):
        async with outbox.transaction() as tx:
            tx.emit("user.exploded", {})
