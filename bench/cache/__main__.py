"""Cache-HIT benchmark: the CacheStage (Redis only, and with the in-process L1) in a minimal
aiohttp app vs. the same app returning a constant (the ceiling) vs. nginx `proxy_cache` in front
of that constant app, in one run (wrk -t1 -c64, one server process each, best of rounds).

    .venv/bin/python -m bench.cache [--duration 5] [--rounds 2] [--workers 1]

Needs `wrk` and `nginx` on PATH and Redis at REDIS_URL. Writes bench/cache/results.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from libs.common.embedded import free_port, wait_for_port

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
NGINX = """
worker_processes {workers};
error_log {dir}/nginx-error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:10m max_size=100m inactive=1h;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_valid 200 1h;
      proxy_cache_lock on;
      add_header X-Cache-Status $upstream_cache_status;
    }}
  }}
}}
"""


def wrk(url: str, duration: int) -> dict[str, float]:
    command = ["wrk", "-t1", "-c64", f"-d{duration}s", "--latency", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    found = re.search(r"^\s+99(?:\.000)?%\s+([\d.]+)(us|ms|s)", output, re.M)
    assert found, output
    value, unit = float(found.group(1)), found.group(2)
    p99 = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": rps, "p99_ms": p99, "non2xx": float(non2xx.group(1)) if non2xx else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="processes per target (reuse_port)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install -y {tool})")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench:cache:{uuid.uuid4().hex[:8]}:"
    workdir = Path(tempfile.mkdtemp(prefix="portico-bench-cache-"))
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        for mode in ("ceiling", "cache", "cache-l1", "upstream"):
            ports[mode] = free_port()
            command = [sys.executable, "-m", "bench.cache.server", mode, str(ports[mode])]
            for _ in range(1 if mode == "upstream" else args.workers):
                procs.append(subprocess.Popen([*command, redis_url, prefix], cwd=ROOT))
        # nginx workers drop to an unprivileged user: let them write the cache and temp files.
        workdir.chmod(0o755)
        (workdir / "cache").mkdir(mode=0o777)
        (workdir / "cache").chmod(0o777)
        ports["nginx"] = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(
            NGINX.format(
                dir=workdir, upstream=ports["upstream"], port=ports["nginx"], workers=args.workers
            )
        )
        nginx = ["nginx", "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
        procs.append(subprocess.Popen(nginx))
        for port in ports.values():
            wait_for_port("127.0.0.1", port, timeout=20)
        targets = ["ceiling", "cache", "cache-l1", "nginx"]
        for name in targets:  # warm: fill the entries
            url = f"http://127.0.0.1:{ports[name]}/api/v1/users/me"
            for _ in range(2):
                subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
            status = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-D", "-", url], capture_output=True, text=True
            ).stdout
            print(name, " | ".join(line for line in status.splitlines() if "HTTP/" in line
                                   or "X-Cache" in line), flush=True)  # fmt: skip
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for name in targets:
                result = wrk(f"http://127.0.0.1:{ports[name]}/api/v1/users/me", args.duration)
                print(name, result, flush=True)
                if name not in best or result["rps"] > best[name]["rps"]:
                    best[name] = result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        shutil.rmtree(workdir, ignore_errors=True)
    rows = "\n".join(
        f"| {name} | {r['rps']:.0f} | {r['p99_ms']:.2f} | {r['non2xx']:.0f} |"
        for name, r in best.items()
    )
    nginx, ceiling = best["nginx"]["rps"], best["ceiling"]["rps"]
    report = f"""# Cache benchmark

`{time.strftime("%Y-%m-%d %H:%M")}` · {os.cpu_count()} cores shared by wrk (-t1 -c64), Redis,
{args.workers} server process(es) per target (uvloop, reuse_port), nginx ({args.workers} worker(s)).
`GET /api/v1/users/me`, private policy, ~450-byte JSON body, every request a HIT after one
warm-up request. The box is shared with other work: compare rows of one run, not across runs.

| target | req/s | p99 ms | non-2xx |
|---|---|---|---|
{rows}

- cache (Redis GET per hit) / nginx proxy_cache: **{best["cache"]["rps"] / nginx:.0%}**
- cache with L1 / nginx proxy_cache: **{best["cache-l1"]["rps"] / nginx:.0%}**
- cache / ceiling (same app returning a constant): {best["cache"]["rps"] / ceiling:.0%};
  with L1: {best["cache-l1"]["rps"] / ceiling:.0%}
"""
    name = "results.md" if args.workers == 1 else f"results-{args.workers}w.md"
    (HERE / name).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
