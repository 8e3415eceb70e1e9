"""`make run` (scripts/dev.py) as a newcomer runs it: the whole platform comes up on embedded
defaults (its own SecantusDB), every process answers /healthz, /readyz and /metrics, and Ctrl-C
leaves no process behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path

import aiohttp

from libs.common.embedded import free_port
from tests.e2e.stack import ROOT, _rabbitmqctl


def _processes_with(marker: str) -> list[int]:
    """Pids of the processes whose environment holds `marker` (ours, and nobody else's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


async def test_make_run_brings_the_platform_up_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:10]
    vhost = f"makerun_{token}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    ports = {name: free_port() for name in ("gateway", "users", "orgs", "files")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTICO_")}
    env.pop("MONGODB_URL", None)  # as on a fresh machine: make run starts its own SecantusDB
    env.update({
        "PORTICO_DEV_VAR": str(tmp_path / "var"),
        "PORTICO_REDIS_PREFIX": f"makerun:{token}:",
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "PORTICO_EVENTS_EXCHANGE": "portico.events.makerun",
        "PORTICO_GATEWAY_WORKERS": "1",
        **{f"PORTICO_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    })  # fmt: skip
    dev = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "dev.py"), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert dev.stdout is not None
    output: list[str] = []
    try:

        async def until_up() -> None:
            while line := await dev.stdout.readline():  # type: ignore[union-attr]
                output.append(line.decode(errors="replace"))
                if "Portico is up" in output[-1]:
                    return
            raise AssertionError("make run exited:\n" + "".join(output[-40:]))

        await asyncio.wait_for(until_up(), 60)  # the bound, SecantusDB start included
        reading = asyncio.create_task(dev.stdout.read())  # keep the pipe drained
        async with aiohttp.ClientSession() as http:
            gateway = f"http://127.0.0.1:{ports['gateway']}"
            async with http.get(f"{gateway}/readyz") as response:
                assert response.status == 200
            async with http.get(f"{gateway}/api/v1/users/me") as response:
                assert response.status == 401  # routed, authenticated at the edge
                assert response.content_type == "application/problem+json"
            for name, port in ports.items():
                for path in ("/healthz", "/readyz", "/metrics"):
                    async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                        assert response.status == 200, (name, path)
        running = _processes_with(token)
        assert len(running) >= 5  # dev.py, SecantusDB, the gateway and the three services
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.wait_for(dev.wait(), 60) == 0
        said = "".join(output) + (await reading).decode(errors="replace")
        # It printed where everything listens.
        for name, port in ports.items():
            assert f"http://127.0.0.1:{port}" in said, name
        assert "stopped." in said
        for _ in range(50):  # children reaped by now; allow /proc a moment
            if not _processes_with(token):
                break
            await asyncio.sleep(0.1)
        assert _processes_with(token) == []
    finally:
        if dev.returncode is None:
            dev.kill()
            await dev.wait()
        for pid in _processes_with(token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            _rabbitmqctl("delete_vhost", vhost)
