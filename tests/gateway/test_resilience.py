"""Upstream resilience: ejection of a dead instance, circuit breaker, timeouts, retries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.app import GATEWAY
from gateway.upstreams import CircuitState
from tests.gateway.conftest import Recorder, StartUpstream, Upstream, assert_problem


async def circuit_metric(gateway: Any, upstream: str) -> float:
    text = await (await gateway.get("/metrics")).text()
    line = next(
        line for line in text.splitlines()
        if line.startswith(f'gateway_circuit_state{{upstream="{upstream}"}}')
    )  # fmt: skip
    return float(line.rsplit(" ", 1)[1])


async def test_killed_instance_is_ejected_and_traffic_continues(
    make_gateway: Any, start_upstream: StartUpstream, orgs: Upstream
) -> None:
    doomed = await start_upstream("orgs-b")
    gateway = await make_gateway(
        orgs_urls=f"{orgs.url},{doomed.url}", balancing="round_robin", eject_after_failures=2,
        eject_base_seconds=60, circuit_failure_threshold=50,
    )  # fmt: skip
    for _ in range(4):
        assert (await gateway.get("/api/v1/public")).status == 200
    assert doomed.recorder.hits  # both instances served
    assert orgs.recorder.hits
    doomed_url = doomed.url
    await doomed.server.close()
    served_before = len(orgs.recorder.hits)
    statuses = [(await gateway.get("/api/v1/public")).status for _ in range(20)]
    assert statuses == [200] * 20  # idempotent GETs were retried on the live instance
    assert len(orgs.recorder.hits) == served_before + 20
    pool = gateway.server.app[GATEWAY].pools["orgs"]
    dead = next(i for i in pool.instances if i.base == doomed_url)
    assert not dead.available(time.monotonic())


async def test_one_dead_instance_does_not_open_the_circuit_for_the_healthy_one(
    make_gateway: Any, start_upstream: StartUpstream, orgs: Upstream
) -> None:
    """Concurrent requests in flight on a replica that dies all fail at once; with the breaker
    counting them, the healthy replica would be cut off too (found by the fault suite)."""
    doomed = await start_upstream("orgs-b")
    gateway = await make_gateway(
        orgs_urls=f"{orgs.url},{doomed.url}", balancing="round_robin", eject_after_failures=3,
        eject_base_seconds=60, circuit_failure_threshold=3, circuit_open_seconds=30,
    )  # fmt: skip
    await doomed.server.close()
    responses = await asyncio.gather(*(gateway.get("/api/v1/public") for _ in range(24)))
    assert [r.status for r in responses] == [200] * 24
    assert gateway.server.app[GATEWAY].pools["orgs"].breaker.state is CircuitState.CLOSED
    assert await circuit_metric(gateway, "orgs") == CircuitState.CLOSED


async def test_dead_service_opens_circuit_then_closes_when_back(
    make_gateway: Any, start_upstream: StartUpstream, orgs: Upstream
) -> None:
    gateway = await make_gateway(circuit_failure_threshold=3, circuit_open_seconds=0.2)
    port = orgs.server.port
    await orgs.server.close()
    for _ in range(3):
        await assert_problem(await gateway.get("/api/v1/public"), 503, "UPSTREAM_UNAVAILABLE")
    assert await circuit_metric(gateway, "orgs") == CircuitState.OPEN
    breaker = gateway.server.app[GATEWAY].pools["orgs"].breaker
    assert breaker.state is CircuitState.OPEN
    # Open: answered at once without trying the upstream.
    await assert_problem(await gateway.get("/api/v1/public"), 503, "UPSTREAM_UNAVAILABLE")
    revived = await start_upstream("orgs", port=port, recorder=Recorder("orgs-revived"))
    for _ in range(100):
        response = await gateway.get("/api/v1/public")
        if response.status == 200:
            break
        await asyncio.sleep(0.05)
    assert response.status == 200
    assert revived.recorder.hits
    assert await circuit_metric(gateway, "orgs") == CircuitState.CLOSED


async def test_slow_upstream_gives_504(gateway: Any) -> None:
    await assert_problem(await gateway.get("/api/v1/slow"), 504, "UPSTREAM_TIMEOUT")


async def test_retries_never_repeat_a_post(gateway: Any, orgs: Upstream) -> None:
    response = await gateway.post("/api/v1/unavailable", json={"x": 1})
    assert response.status == 503
    assert len(orgs.recorder.hits) == 1


async def test_get_is_retried_within_budget(gateway: Any, orgs: Upstream) -> None:
    response = await gateway.get("/api/v1/unavailable")
    assert response.status == 503
    assert len(orgs.recorder.hits) == 3  # the first try and the route's 2 retries


async def test_retry_budget_caps_retries(make_gateway: Any, orgs: Upstream) -> None:
    gateway = await make_gateway(
        retry_budget_max=2, retry_budget_ratio=0.0, circuit_failure_threshold=100,
        eject_after_failures=100,
    )  # fmt: skip
    for _ in range(5):
        assert (await gateway.get("/api/v1/unavailable")).status == 503
    assert len(orgs.recorder.hits) == 5 + 2


async def test_post_to_dead_instance_is_not_retried(
    make_gateway: Any, start_upstream: StartUpstream, orgs: Upstream
) -> None:
    doomed = await start_upstream("orgs-b")
    gateway = await make_gateway(orgs_urls=doomed.url)
    await doomed.server.close()
    response = await gateway.post("/api/v1/public", json={})
    await assert_problem(response, 503, "UPSTREAM_UNAVAILABLE")


async def test_active_health_check_readmits_a_recovered_instance(
    make_gateway: Any, start_upstream: StartUpstream, orgs: Upstream
) -> None:
    flaky = await start_upstream("orgs-b")
    port, url = flaky.server.port, flaky.url
    gateway = await make_gateway(
        orgs_urls=f"{orgs.url},{url}", balancing="round_robin", eject_after_failures=1,
        eject_base_seconds=300, health_interval=0.05, circuit_failure_threshold=100,
    )  # fmt: skip
    await flaky.server.close()
    pool = gateway.server.app[GATEWAY].pools["orgs"]
    instance = next(i for i in pool.instances if i.base == url)
    for _ in range(100):
        assert (await gateway.get("/api/v1/public")).status == 200
        if not instance.available(time.monotonic()):
            break
    assert not instance.available(time.monotonic())  # ejected for 300 s by passive health
    back = await start_upstream("orgs-b", port=port, recorder=Recorder("orgs-b-again"))
    for _ in range(200):
        await gateway.get("/api/v1/public")
        if back.recorder.hits:
            break
        await asyncio.sleep(0.02)
    assert back.recorder.hits  # re-admitted by the /readyz checker long before the backoff


async def test_one_failed_health_check_does_not_eject_two_in_a_row_do(
    make_gateway: Any, start_upstream: StartUpstream, orgs: Upstream
) -> None:
    """A single slow /readyz on a loaded box must not take a healthy instance out (the fault
    suite saw the surviving replica ejected that way just as the other one was killed)."""
    flaky = await start_upstream("orgs-b")
    gateway = await make_gateway(
        orgs_urls=f"{orgs.url},{flaky.url}", eject_after_failures=100, health_interval=0.3,
        health_timeout=0.2, circuit_failure_threshold=100,
    )  # fmt: skip
    pool = gateway.server.app[GATEWAY].pools["orgs"]
    instance = next(i for i in pool.instances if i.base == flaky.url)
    await flaky.server.close()
    for _ in range(100):
        if instance.failed_checks >= 1:
            break
        await asyncio.sleep(0.01)
    assert instance.failed_checks == 1
    assert instance.available(time.monotonic())  # one failed check: still in rotation
    for _ in range(200):
        if instance.failed_checks >= 2:
            break
        await asyncio.sleep(0.01)
    assert not instance.available(time.monotonic())  # the second in a row ejects it
