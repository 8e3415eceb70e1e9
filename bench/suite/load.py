"""wrk with a Lua script per scenario, and what the server processes cost (/proc)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.gateway.__main__ import cpu_ticks

# Every script ends with this: wrk's own percentiles (µs) incl. p99.9, and its error counters.
DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"p50":%d,"p99":%d,"p999":%d,"requests":%d,"duration_us":%d,"connect":%d,'
    .. '"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def lua_script(
    *,
    headers: dict[str, str] | None = None,
    rotate: list[dict[str, str]] | None = None,
    method: str = "GET",
    body: str | None = None,
    bodies: list[str] | None = None,
    delay_ms: int | None = None,
) -> str:
    """A wrk script: fixed headers, or per-request rotation through header sets / bodies (users,
    logins), an optional per-connection pause (paced load) and the result line."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    if rotate or bodies:
        sets = rotate or [{} for _ in bodies or []]
        lines.append("local sets = {")
        for i, extra in enumerate(sets):
            merged = {**(headers or {}), **extra}
            fields = ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in merged.items())
            payload = json.dumps(bodies[i]) if bodies else "nil"
            lines.append(f"  {{ {{ {fields} }}, {payload} }},")
        lines.append("}")
        lines.append("local i = 0")
        lines.append("init = function(args) i = math.random(#sets) end")
        lines.append(
            "request = function() i = i % #sets + 1; local s = sets[i]\n"
            "  return wrk.format(nil, nil, s[1], s[2] or wrk.body) end"
        )
    if delay_ms is not None:
        # Exponential pauses (mean `delay_ms`): the connections drift apart, so requests arrive
        # spread out like independent clients' (about Poisson), not as one synchronised burst per
        # period whose queue (burst size x service time) would swamp the latency being measured.
        lines.append(
            f"delay = function() return math.floor(-math.log(1 - math.random()) * {delay_ms}"
            " + 0.5) end"
        )
    return "\n".join(lines) + "\n" + DONE_LUA


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    requests: int
    errors: int  # socket errors + timeouts + unexpected statuses
    non2xx: int
    cpu_us: float  # server CPU (the processes given) per request
    rss_mib: float  # resident set of those processes after the run

    def row(self) -> dict[str, float]:
        return asdict(self)


def rss_bytes(pids: list[int]) -> int:
    """VmRSS of the processes and their direct children."""
    total, wanted = 0, set(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) in wanted or int(stat[1]) in wanted:
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def run_wrk(
    url: str,
    script: Path,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    pids: list[int] | None = None,
    cpus: str | None = None,
    expect_status: int | None = None,
) -> Result:
    """One wrk run; `expect_status` (e.g. 429) counts those answers as expected, not errors."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s"]
    command += ["--timeout", "5s", "-s", str(script), url]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    before = cpu_ticks(pids or [])
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    ticks = cpu_ticks(pids or []) - before
    found = re.search(r"^RESULT (\{.*\})$", output, re.M)
    if found is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    data = json.loads(found.group(1))
    requests = max(int(data["requests"]), 1)
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    non2xx = int(data["status"])
    unexpected = non2xx if expect_status is None else requests - non2xx
    return Result(
        rps=requests / (data["duration_us"] / 1e6),
        p50_ms=data["p50"] / 1000,
        p99_ms=data["p99"] / 1000,
        p999_ms=data["p999"] / 1000,
        requests=requests,
        errors=socket_errors + unexpected,
        non2xx=non2xx,
        cpu_us=ticks * 1e6 / os.sysconf("SC_CLK_TCK") / requests,
        rss_mib=rss_bytes(pids or []) / 2**20,
    )


def pin(pids: list[int], cpus: str) -> None:
    """Move running processes (all their threads) and their children to `cpus`."""
    wanted = set(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if int(entry.name) in wanted or ppid in wanted:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", cpus, entry.name], capture_output=True, check=False
            )
