"""The response cache seen from a client of a gateway, with a real upstream and real Redis."""

from __future__ import annotations

import asyncio
import gzip

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from pydantic import ValidationError

from gateway.cache import CachePolicy, tags_for_event
from gateway.cache.events import purge_consumers
from gateway.revocation import MGetClient
from libs.common.embedded import free_port
from libs.common.events import Event
from tests.gateway.cache.conftest import MakeHarness, decode


async def test_second_get_is_a_hit_and_never_reaches_the_service(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    first, first_body = await h.get("/plain")
    second, second_body = await h.get("/plain")
    assert (first.status, first.headers["X-Cache-Status"]) == (200, "MISS")
    assert (second.status, second.headers["X-Cache-Status"]) == (200, "HIT")
    assert second_body == first_body == b"plain v0 "
    assert second.headers["ETag"] == first.headers["ETag"]
    assert "Surrogate-Key" not in first.headers
    assert "Surrogate-Key" not in second.headers
    assert h.upstream.hits["plain"] == 1


async def test_alices_private_entry_is_never_served_to_bob(make_harness: MakeHarness) -> None:
    h = await make_harness()
    alice, alice_body = await h.get("/users/me", user="alice")
    bob, bob_body = await h.get("/users/me", user="bob")
    again, again_body = await h.get("/users/me", user="alice")
    assert decode(alice_body)["id"] == "alice"
    assert alice.headers["X-Cache-Status"] == "MISS"
    assert decode(bob_body)["id"] == "bob"
    assert bob.headers["X-Cache-Status"] == "MISS"
    assert decode(again_body)["id"] == "alice"
    assert again.headers["X-Cache-Status"] == "HIT"
    assert h.upstream.hits["/users/me"] == 2


async def test_private_route_without_a_principal_bypasses_the_cache(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    for _ in range(2):
        response, body = await h.get("/users/me")
        assert response.headers["X-Cache-Status"] == "BYPASS"
        assert decode(body)["id"] == "anonymous"
        assert "ETag" in response.headers
        assert "Surrogate-Key" not in response.headers
    assert h.upstream.hits["/users/me"] == 2
    assert [k async for k in h.redis.scan_iter(match=f"{h.prefix}cache:e:*")] == []


async def test_matching_if_none_match_is_a_304_without_touching_the_service(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    first, _ = await h.get("/plain")
    etag = first.headers["ETag"]
    revalidated, body = await h.get("/plain", If_None_Match=etag)
    other, other_body = await h.get("/plain", If_None_Match='"something-else"')
    assert (revalidated.status, body, revalidated.headers["ETag"]) == (304, b"", etag)
    assert revalidated.headers["X-Cache-Status"] == "HIT"
    assert (other.status, other_body) == (200, b"plain v0 ")
    assert h.upstream.hits["plain"] == 1


async def test_upstream_etag_is_kept(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/etagged")
    response, _body = await h.get("/etagged", If_None_Match='W/"v-upstream"')
    assert (response.status, response.headers["ETag"]) == (304, '"v-upstream"')


@pytest.mark.parametrize(
    ("path", "hits_key"),
    [("/nostore", "nostore"), ("/private-cc", "private-cc"), ("/broken", "broken")],
)
async def test_uncacheable_answers_are_not_stored(
    make_harness: MakeHarness, path: str, hits_key: str
) -> None:
    h = await make_harness()
    for _ in range(2):
        response, _ = await h.get(path)
        assert response.headers["X-Cache-Status"] == "MISS"
    assert h.upstream.hits[hits_key] == 2
    assert [k async for k in h.redis.scan_iter(match=f"{h.prefix}cache:e:*")] == []


async def test_a_response_setting_a_cookie_is_not_stored_nor_shared(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    first, _ = await h.get("/cookie")
    second, _ = await h.get("/cookie")
    assert "sid=secret" in first.headers["Set-Cookie"]
    assert second.headers["X-Cache-Status"] == "MISS"
    assert h.upstream.hits["cookie"] == 2
    assert [k async for k in h.redis.scan_iter(match=f"{h.prefix}cache:e:*")] == []


async def test_not_found_is_cached(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/missing")
    response, _ = await h.get("/missing")
    assert (response.status, response.headers["X-Cache-Status"]) == (404, "HIT")
    assert h.upstream.hits["missing"] == 1


async def test_upstream_max_age_caps_the_route_ttl(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/maxage")
    h.clock.advance(4)
    within, _ = await h.get("/maxage")
    h.clock.advance(2)
    after, _ = await h.get("/maxage")
    assert within.headers["X-Cache-Status"] == "HIT"
    assert after.headers["X-Cache-Status"] == "MISS"
    assert h.upstream.hits["maxage"] == 2


async def test_route_ttl_expires_entries(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/plain")
    h.clock.advance(31)
    response, _ = await h.get("/plain")
    assert response.headers["X-Cache-Status"] == "MISS"
    assert h.upstream.hits["plain"] == 2


async def test_client_no_cache_revalidates_with_the_service(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/plain")
    h.upstream.version = 1
    forced, body = await h.get("/plain", Cache_Control="no-cache")
    after, after_body = await h.get("/plain")
    assert (forced.headers["X-Cache-Status"], body) == ("MISS", b"plain v1 ")
    assert (after.headers["X-Cache-Status"], after_body) == ("HIT", b"plain v1 ")
    assert h.upstream.hits["plain"] == 2


async def test_purge_by_tag_drops_the_tagged_entries_only(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/users/me", user="alice")
    await h.get("/users/me", user="bob")
    assert await h.stage.purge_tags(["user:alice"]) == 1
    alice, _ = await h.get("/users/me", user="alice")
    bob, _ = await h.get("/users/me", user="bob")
    assert alice.headers["X-Cache-Status"] == "MISS"
    assert bob.headers["X-Cache-Status"] == "HIT"
    assert await h.stage.purge_tags(["org:7"]) == 2
    assert await h.stage.purge_tags([]) == 0


async def test_an_event_purges_the_tags_it_names(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/users/me", user="alice")
    event = Event(type="user.updated", source="users", data={"user_id": "alice", "name": "A"})
    assert await h.stage.purge_event(event) == 1
    response, _ = await h.get("/users/me", user="alice")
    assert response.headers["X-Cache-Status"] == "MISS"


def test_event_ids_map_to_tags() -> None:
    event = Event(
        type="file.uploaded",
        source="files",
        data={"file_id": "f1", "owner_id": "u1", "org_id": 7, "size": 3, "valid": True,
              "team_id": None, "_id": "x"},
    )  # fmt: skip
    assert tags_for_event(event) == ["file:f1", "org:7", "user:u1"]
    assert tags_for_event(Event(type="user.deleted", source="users")) == []


async def test_patch_then_get_returns_the_new_value_immediately(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    _, before = await h.get("/users/me", user="alice")
    patched = await h.client.patch(
        "/users/me", json={"name": "Alicia"}, headers={"X-Test-User": "alice"}
    )
    assert patched.status == 200
    assert "Surrogate-Key" not in patched.headers
    response, after = await h.get("/users/me", user="alice")
    assert decode(before)["name"] == "Alice"
    assert decode(after)["name"] == "Alicia"
    assert response.headers["X-Cache-Status"] == "MISS"


async def test_a_fill_that_raced_a_purge_is_not_stored(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.upstream.gate = asyncio.Event()
    pending = asyncio.create_task(h.get("/gated"))
    await h.upstream.arrived.wait()  # the service has read its data; now a write lands
    assert await h.stage.purge_tags(["thing:gated"]) == 0
    h.upstream.gate.set()
    first, _ = await pending
    second, _ = await h.get("/gated")
    assert first.headers["X-Cache-Status"] == "MISS"
    assert second.headers["X-Cache-Status"] == "MISS"
    assert h.upstream.hits["gated"] == 2


async def test_hundred_concurrent_misses_make_one_upstream_request(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    results = await asyncio.gather(*(h.get("/slow") for _ in range(100)))
    assert {(r.status, body) for r, body in results} == {(200, b"slow v0 ")}
    assert h.upstream.hits["slow"] == 1


async def test_two_gateway_instances_share_one_upstream_fetch(make_harness: MakeHarness) -> None:
    one = await make_harness()
    two = await make_harness()
    results = await asyncio.gather(
        *(gateway.get("/slow") for _ in range(30) for gateway in (one, two))
    )
    assert {(r.status, body) for r, body in results} == {(200, b"slow v0 ")}
    assert one.upstream.hits["slow"] == 1


async def test_stale_if_error_serves_stale_within_the_window_and_fails_after(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    await h.get("/resilient")
    await h.server.close()  # the service is gone
    h.clock.advance(15)  # past the TTL (10 s), within stale-if-error (30 s)
    stale, body = await h.get("/resilient")
    assert (stale.status, stale.headers["X-Cache-Status"], body) == (200, "STALE", b"plain v0 ")
    h.clock.advance(30)
    failed, problem = await h.get("/resilient")
    assert failed.status == 503
    assert decode(problem)["code"] == "UPSTREAM_UNAVAILABLE"


async def test_without_stale_if_error_an_outage_fails(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/plain")
    await h.server.close()
    h.clock.advance(31)
    failed, _ = await h.get("/plain")
    assert failed.status == 503


async def test_stale_while_revalidate_serves_stale_and_refreshes_once(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    await h.get("/swr")
    h.upstream.version = 1
    h.clock.advance(15)
    stale, stale_body = await h.get("/swr")
    assert (stale.headers["X-Cache-Status"], stale_body) == ("STALE", b"plain v0 ")
    for _ in range(200):  # the background refresh lands shortly
        fresh, fresh_body = await h.get("/swr")
        if fresh_body == b"plain v1 ":
            break
        await asyncio.sleep(0.01)
    assert (fresh.headers["X-Cache-Status"], fresh_body) == ("HIT", b"plain v1 ")
    assert h.upstream.hits["plain"] == 2


async def test_head_is_served_from_the_get_entry(make_harness: MakeHarness) -> None:
    h = await make_harness()
    got, body = await h.get("/plain")
    head = await h.client.head("/plain")
    assert (head.status, head.headers["X-Cache-Status"]) == (200, "HIT")
    assert head.headers["ETag"] == got.headers["ETag"]
    assert head.headers["Content-Length"] == str(len(body))
    assert await head.read() == b""
    assert h.upstream.hits["plain"] == 1


async def test_head_first_fills_the_entry_for_get(make_harness: MakeHarness) -> None:
    h = await make_harness()
    head = await h.client.head("/plain")
    got, body = await h.get("/plain")
    assert head.headers["X-Cache-Status"] == "MISS"
    assert await head.read() == b""
    assert (got.headers["X-Cache-Status"], body) == ("HIT", b"plain v0 ")


async def test_large_bodies_are_stored_gzipped_and_served_to_either_client(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    first, original = await h.get("/big")
    zipped = await h.client.get("/big", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    plain = await h.client.get("/big", headers={"Accept-Encoding": "identity"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await zipped.read()) == original
    assert "Content-Encoding" not in plain.headers
    assert await plain.read() == original
    assert "accept-encoding" in plain.headers["Vary"].lower()
    assert len({first.headers["ETag"], zipped.headers["ETag"], plain.headers["ETag"]}) == 1
    [key] = [k async for k in h.redis.scan_iter(match=f"{h.prefix}cache:e:*")]
    stored = await h.redis.get(key)
    assert stored is not None
    assert len(stored) < len(original) // 4
    assert h.upstream.hits["big"] == 1


async def test_entries_over_the_size_cap_are_not_stored(make_harness: MakeHarness) -> None:
    h = await make_harness()
    for _ in range(2):
        response, body = await h.get("/small-cap")
        assert (response.headers["X-Cache-Status"], body) == ("MISS", b"plain v0 ")
    assert h.upstream.hits["plain"] == 2


async def test_only_the_selected_query_parameters_vary_the_key(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    await h.get("/paged?page=1&utm=a")
    same, _ = await h.get("/paged?utm=b&page=1")
    other, _ = await h.get("/paged?page=2")
    assert same.headers["X-Cache-Status"] == "HIT"
    assert other.headers["X-Cache-Status"] == "MISS"


async def test_all_query_parameters_vary_the_key_by_default(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/plain?b=2&a=1")
    reordered, _ = await h.get("/plain?a=1&b=2")
    other, body = await h.get("/plain?a=1&b=3")
    assert reordered.headers["X-Cache-Status"] == "HIT"
    assert (other.headers["X-Cache-Status"], body) == ("MISS", b"plain v0 a=1&b=3")


async def test_vary_headers_split_the_entry(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/lang", Accept_Language="fr")
    french, _ = await h.get("/lang", Accept_Language="fr")
    german, _ = await h.get("/lang", Accept_Language="de")
    assert (french.headers["X-Cache-Status"], german.headers["X-Cache-Status"]) == ("HIT", "MISS")


async def test_l1_serves_hits_and_is_purged_too(make_harness: MakeHarness) -> None:
    h = await make_harness(l1_bytes=1 << 20)
    await h.get("/users/me", user="alice")
    await h.redis.delete(*[k async for k in h.redis.scan_iter(match=f"{h.prefix}cache:e:*")])
    from_l1, _ = await h.get("/users/me", user="alice")
    assert from_l1.headers["X-Cache-Status"] == "HIT"
    await h.stage.purge_tags(["user:alice"])
    after, _ = await h.get("/users/me", user="alice")
    assert after.headers["X-Cache-Status"] == "MISS"
    assert h.upstream.hits["/users/me"] == 2


async def test_purge_key_drops_one_entry(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/plain")
    [key] = [k async for k in h.redis.scan_iter(match=f"{h.prefix}cache:e:*")]
    assert await h.stage.purge_key(key.decode()) is True
    assert await h.stage.purge_key(key.decode()) is False
    response, _ = await h.get("/plain")
    assert response.headers["X-Cache-Status"] == "MISS"


async def test_a_corrupt_entry_is_a_miss(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/plain")
    [key] = [k async for k in h.redis.scan_iter(match=f"{h.prefix}cache:e:*")]
    await h.redis.set(key, b"\x00garbage")
    response, body = await h.get("/plain")
    assert (response.status, response.headers["X-Cache-Status"], body) == (
        200,
        "MISS",
        b"plain v0 ",
    )


async def test_results_are_counted_by_route_template(make_harness: MakeHarness) -> None:
    h = await make_harness()

    def count(result: str) -> float:
        labels = {"route": "/etagged", "result": result}
        return REGISTRY.get_sample_value("gateway_cache_requests_total", labels) or 0.0

    before = count("MISS"), count("HIT")
    await h.get("/etagged")
    await h.get("/etagged")
    assert (count("MISS") - before[0], count("HIT") - before[1]) == (1.0, 1.0)


@pytest.mark.parametrize(
    "spec",
    [{}, {"ttl": -1}, {"ttl": 10, "scope": "everyone"}, {"ttl": 10, "vary_query": "page"},
     {"ttl": 10, "max_entry_bytes": "lots"}, {"ttl": 10, "surprise": True}],
)  # fmt: skip
def test_bad_policies_are_refused(spec: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CachePolicy.model_validate(spec)


def test_policy_defaults_are_private_and_vary_on_every_parameter() -> None:
    policy = CachePolicy.model_validate(
        {"ttl": 30, "vary_headers": ["Accept-Language"], "max_entry_bytes": "64KiB"}
    )
    assert (policy.scope, policy.vary_query) == ("private", "*")
    assert (policy.vary_headers, policy.max_entry_bytes) == (["accept-language"], 65536)


async def test_hits_through_the_pipelined_reader(make_harness: MakeHarness, redis_url: str) -> None:
    reader = MGetClient(redis_url)
    try:
        h = await make_harness(reader=reader)
        await h.get("/users/me", user="alice")
        hit, body = await h.get("/users/me", user="alice")
        bob, bob_body = await h.get("/users/me", user="bob")
    finally:
        reader.close()
    assert (hit.headers["X-Cache-Status"], decode(body)["id"]) == ("HIT", "alice")
    assert (bob.headers["X-Cache-Status"], decode(bob_body)["id"]) == ("MISS", "bob")
    assert h.upstream.hits["/users/me"] == 2


async def test_redis_down_degrades_to_a_pass_through(make_harness: MakeHarness) -> None:
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        h = await make_harness(redis=dead)
        for _ in range(2):
            response, body = await h.get("/plain")
            assert (response.status, body) == (200, b"plain v0 ")
            assert response.headers["X-Cache-Status"] == "BYPASS"
        patched = await h.client.patch(
            "/users/me", json={"name": "Al"}, headers={"X-Test-User": "alice"}
        )
        assert patched.status == 200
    finally:
        await dead.aclose()
    assert h.upstream.hits["plain"] == 2
    assert h.upstream.names == {"alice": "Al"}


async def test_a_5xx_answer_within_stale_if_error_is_replaced_by_the_stale_entry(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    await h.get("/flaky")
    h.upstream.failing = True
    h.clock.advance(15)
    stale, body = await h.get("/flaky")
    h.clock.advance(30)
    failed, _ = await h.get("/flaky")
    assert (stale.status, stale.headers["X-Cache-Status"], body) == (200, "STALE", b"flaky v0 ")
    assert (failed.status, failed.headers["X-Cache-Status"]) == (503, "MISS")
    assert h.upstream.hits["flaky"] == 3


async def test_bus_consumers_purge_on_any_event(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.get("/users/me", user="alice")
    consumers = purge_consumers(h.stage, queue="gateway.cache.test")
    [(routing_keys, handler)] = consumers.bindings
    event = Event(type="org.member_removed", source="orgs", data={"org_id": "7", "user_id": "x"})
    await handler(event)
    await handler(event)  # redelivered: harmless
    response, _ = await h.get("/users/me", user="alice")
    assert routing_keys == ("#",)
    assert response.headers["X-Cache-Status"] == "MISS"


async def test_a_purge_on_one_instance_reaches_the_l1_of_another(
    make_harness: MakeHarness,
) -> None:
    # A long L1 life: only the purge message can make `two` drop its copy.
    one = await make_harness(l1_bytes=1 << 20, l1_ttl=600)
    two = await make_harness(l1_bytes=1 << 20, l1_ttl=600)
    await one.get("/users/me", user="alice")
    hit, _ = await two.get("/users/me", user="alice")  # now in two's L1 as well
    assert hit.headers["X-Cache-Status"] == "HIT"
    await one.client.patch("/users/me", json={"name": "Alicia"}, headers={"X-Test-User": "alice"})
    for _ in range(200):  # the purge message lands on two within moments
        _, body = await two.get("/users/me", user="alice")
        if decode(body)["name"] == "Alicia":
            break
        await asyncio.sleep(0.01)
    assert decode(body)["name"] == "Alicia"
    assert one.upstream.hits["/users/me"] == 2


async def test_l1_is_not_used_without_the_purge_subscription(make_harness: MakeHarness) -> None:
    h = await make_harness(l1_bytes=1 << 20, listen=False)
    await h.get("/plain")
    await h.redis.delete(*[k async for k in h.redis.scan_iter(match=f"{h.prefix}cache:e:*")])
    response, _ = await h.get("/plain")
    assert response.headers["X-Cache-Status"] == "MISS"
    assert h.upstream.hits["plain"] == 2
