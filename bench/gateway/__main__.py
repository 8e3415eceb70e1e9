"""Gateway benchmark: authenticated proxied GET through the gateway vs. the same upstream called
directly vs. nginx reverse-proxying to it, in one run (wrk -t2 -c64), plus latency at ~50% of the
gateway's saturation rate (wrk with a per-connection delay script).

    .venv/bin/python -m bench.gateway [--duration 10] [--workers 2] [--no-access-log]

Needs `wrk` and `nginx` on PATH and Redis at REDIS_URL (default 127.0.0.1:6379). Writes
bench/gateway/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.common.embedded import free_port, wait_for_port

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
ROUTES = """
routes:
  - {path: /api/v1/bench, methods: [GET], upstream: users, auth: required}
  - {path: /.well-known/jwks.json, methods: [GET], upstream: users, auth: none}
"""
NGINX = """
worker_processes {workers};
error_log {dir}/nginx-error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Request-ID $request_id;
    }}
  }}
}}
"""
DELAY_LUA = "function delay() return {ms} end\n"


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of the processes and their live children (clock ticks)."""
    total = 0
    wanted = set(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid in wanted or ppid in wanted:
            total += int(fields[11]) + int(fields[12])
    return total


def wrk(url: str, *, duration: int, connections: int, threads: int, headers: list[str],
        script: str | None = None, pids: list[int] | None = None) -> dict[str, float]:  # fmt: skip
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    if script:
        command += ["-s", script]
    before = cpu_ticks(pids or [])
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    ticks = cpu_ticks(pids or []) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    latency = {}
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", output, re.M)
        assert found, output
        value, unit = float(found.group(1)), found.group(2)
        latency[pct] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    done = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    cpu_us = ticks * 1_000_000 / os.sysconf("SC_CLK_TCK") / max(done, 1)
    return {"rps": rps, "p50_ms": latency["50"], "p99_ms": latency["99"],
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0, "cpu_us": cpu_us}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (apt-get install -y wrk nginx-light)")
    work = Path(tempfile.mkdtemp(prefix="portico-bench-"))
    key = Ed25519PrivateKey.generate()
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (work / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "bench", "alg": "EdDSA"}]}))
    (work / "routes.yaml").write_text(ROUTES)
    now = int(time.time())
    token = jwt.encode(
        {"iss": "portico", "aud": "portico-api", "sub": "user-1", "iat": now, "nbf": now,
         "exp": now + 3600, "jti": uuid.uuid4().hex, "sid": uuid.uuid4().hex, "roles": ["user"]},
        key, algorithm="EdDSA", headers={"kid": "bench"},
    )  # fmt: skip
    auth = [f"Authorization: Bearer {token}"]
    up_port, gw_port, nx_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(subprocess.Popen(
            [sys.executable, str(HERE / "upstream.py"), str(up_port), str(work / "jwks.json")]
        ))  # fmt: skip
        env = {
            **os.environ, "PYTHONPATH": str(ROOT), "PORTICO_GATEWAY_PORT": str(gw_port),
            "PORTICO_GATEWAY_WORKERS": str(args.workers),
            "PORTICO_GATEWAY_USERS_URLS": f"http://127.0.0.1:{up_port}",
            "PORTICO_GATEWAY_ROUTES_FILE": str(work / "routes.yaml"),
            "PORTICO_GATEWAY_REDIS_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:",
            "PORTICO_GATEWAY_LOG_LEVEL": "WARNING",
            # The core proxy path: the rate-limit and cache stages have their own benchmarks.
            "PORTICO_GATEWAY_RATELIMIT_ENABLED": "false",
            "PORTICO_GATEWAY_CACHE_ENABLED": "false",
            "PORTICO_GATEWAY_ACCESS_LOG": "false" if args.no_access_log else "true",
        }  # fmt: skip
        assert wait_for_port("127.0.0.1", up_port, 20)
        processes.append(subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL))  # fmt: skip
        (work / "nginx.conf").write_text(
            NGINX.format(workers=args.workers, dir=work, upstream=up_port, port=nx_port)
        )
        processes.append(subprocess.Popen(
            ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"]
        ))  # fmt: skip
        assert wait_for_port("127.0.0.1", gw_port, 30)
        assert wait_for_port("127.0.0.1", nx_port, 10)
        targets = {
            "direct": f"http://127.0.0.1:{up_port}/api/v1/bench",
            "nginx": f"http://127.0.0.1:{nx_port}/api/v1/bench",
            "gateway": f"http://127.0.0.1:{gw_port}/api/v1/bench",
        }
        # CPU spent by the proxy itself (all its processes), per request.
        owners = {"direct": [], "nginx": [processes[2].pid], "gateway": [processes[1].pid]}
        # Warm up (JWKS fetch, token verification, keep-alive pools).
        for url in targets.values():
            wrk(url, duration=2, connections=8, threads=1, headers=auth)
        # Interleaved rounds, best of each: host load swings a lot between seconds.
        saturated: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for name, url in targets.items():
                result = wrk(url, duration=args.duration, connections=64, threads=2, headers=auth,
                             pids=owners[name])  # fmt: skip
                assert result["non2xx"] == 0, f"{name} answered errors"
                if name not in saturated or result["rps"] > saturated[name]["rps"]:
                    saturated[name] = result
        # Latency at ~50% of the gateway's saturation rate, same offered rate for every target.
        rate = saturated["gateway"]["rps"] / 2
        connections = 16
        delay_ms = max(1, round(connections * 1000 / rate))
        script = work / "delay.lua"
        script.write_text(DELAY_LUA.format(ms=delay_ms))
        paced = {name: wrk(url, duration=args.duration, connections=connections, threads=2,
                           headers=auth, script=str(script))
                 for name, url in targets.items()}  # fmt: skip
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
    report = render(saturated, paced, args.workers, delay_ms, connections, args.no_access_log)
    print(report)
    (HERE / "results.md").write_text(report)


def render(saturated: dict[str, dict[str, float]], paced: dict[str, dict[str, float]],
           workers: int, delay_ms: int, connections: int, no_log: bool) -> str:  # fmt: skip
    s, p = saturated, paced
    lines = [
        "# Gateway benchmark",
        "",
        f"`{time.strftime('%Y-%m-%d %H:%M')}` · {os.cpu_count()} cores shared by wrk, upstream "
        f"(1 aiohttp process), nginx ({workers} workers) and the gateway ({workers} workers, "
        f"access log {'off' if no_log else 'on'}). Authenticated GET (EdDSA bearer token, "
        "revocation MGET per request).",
        "",
        "## Saturation (wrk -t2 -c64, best of interleaved rounds)",
        "",
        "| target | req/s | p50 ms | p99 ms | proxy CPU us/request |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['cpu_us']:.0f} |"
            for n, v in s.items()
        ),
        "",
        f"- gateway / nginx: **{s['gateway']['rps'] / s['nginx']['rps']:.0%}** (target >= 70%)",
        f"- proxy CPU per request, gateway / nginx: "
        f"{s['gateway']['cpu_us']:.0f} us / {s['nginx']['cpu_us']:.0f} us (stable under host "
        "load, unlike req/s)",
        f"- gateway / direct: {s['gateway']['rps'] / s['direct']['rps']:.0%}; "
        f"nginx / direct: {s['nginx']['rps'] / s['direct']['rps']:.0%}",
        "",
        f"## ~50% of gateway saturation (wrk -c{connections}, {delay_ms} ms pause per connection)",
        "",
        "| target | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {n} | {v['rps']:.0f} | {v['p50_ms']:.3f} | {v['p99_ms']:.2f} |"
            for n, v in p.items()
        ),
        "",
        f"- added p50, gateway vs direct: **{p['gateway']['p50_ms'] - p['direct']['p50_ms']:.3f} "
        f"ms** (target < 1 ms); nginx vs direct: "
        f"{p['nginx']['p50_ms'] - p['direct']['p50_ms']:.3f} ms",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
