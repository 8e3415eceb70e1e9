"""Soak: a bounded mixed load through the real gateway, then leak and backlog checks.

    python -m bench.soak [--seconds 300] [--rate 150] [--window 10] [--at REV] [--keep]

Starts the whole platform as processes (tests/e2e/stack.py `Stack`: SecantusDB, users, orgs,
files, gateway; its own RabbitMQ vhost, Redis prefix and exchange), with the default route table
(rate limits, cache and event consumers on). bench/soak/traffic.py offers a fixed rate of mixed
calls (logins, cached and uncached reads, writes whose events purge the cache, orgs and
invitations, small uploads and downloads, API-key reads, anonymous reads that earn 429s) for
`--seconds` (default: $SOAK_SECONDS, else 300). Every `--window` seconds it records request
count, errors, 429s, p50/p99 and the RSS/CPU of every platform process. At the end it waits for
the outboxes and queues to drain, checks that no outbox entry is pending and every DLQ is empty,
and fits a line to each process's RSS over the second half of the run. Writes
bench/soak/report.md and report.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.soak.observe import (
    GROWTH_MIB_PER_MIN,
    GROWTH_MIN_R2,
    cpu_seconds,
    document_counts,
    drain,
    load_average,
    log_problems,
    rss_mib,
    trend,
)
from bench.soak.record import Recorder, percentile
from bench.soak.report import render
from bench.soak.traffic import MIX, REFERENCE_RPS, Traffic
from tests.e2e.stack import SERVICES, Stack

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
ANON_KIND = "anonymous GET /.well-known/jwks.json"
# The database's RSS follows the data the run leaves (sessions, outbox, processed ids): reported,
# with the document counts, but not held to the no-growth check that our own processes are.
DATABASE = "secantusdb"


class Sampler:
    """RSS and CPU of every platform process, sampled at the end of each window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.last_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.last_client_cpu = time.process_time()
        self.last_at = time.monotonic()

    def sample(self) -> tuple[dict[str, float | None], dict[str, float | None]]:
        now = time.monotonic()
        rss = {name: rss_mib(pid) for name, pid in self.pids.items()}
        cpu_pct: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            used, before = cpu_seconds(pid), self.last_cpu[name]
            cpu_pct[name] = (
                None
                if used is None or before is None
                else 100 * (used - before) / (now - self.last_at)
            )
            self.last_cpu[name] = used
        client = time.process_time()
        self.client_cpu_pct = 100 * (client - self.last_client_cpu) / (now - self.last_at)
        self.last_client_cpu = client
        self.last_at = now
        return rss, cpu_pct


async def soak(
    stack: Stack, seconds: float, rate: float, window: float, seed: int
) -> dict[str, Any]:
    """Set up, run the load with a sample per window, drain; everything the report needs."""
    traffic = Traffic(stack.gateway, rate=rate, seed=seed)
    await traffic.open()
    try:
        began = time.monotonic()
        await traffic.setup(seconds)
        setup_seconds = time.monotonic() - began
        traffic.recorder = Recorder()  # set-up calls are not part of the soak's figures
        pids = {name: p.popen.pid for name, p in stack.processes.items() if p.popen}
        assert stack.mongo is not None
        assert stack.mongo.process is not None
        pids[DATABASE] = stack.mongo.process.pid
        sampler = Sampler(pids)
        start_rss, _ = sampler.sample()
        documents_before = await document_counts(stack.mongo.url)
        windows: list[dict[str, Any]] = []
        started = time.monotonic()
        run = asyncio.create_task(traffic.run(seconds))
        while not run.done():
            due = started + window * (len(windows) + 1)
            await asyncio.wait({run}, timeout=max(0.0, due - time.monotonic()))
            if run.done() and time.monotonic() - traffic.recorder.window.started < 1:
                break  # nothing worth a window of its own after the last full one
            closed, ended = traffic.recorder.roll()
            rss, cpu = sampler.sample()
            windows.append(
                {
                    "index": len(windows) + 1,
                    "end_s": round(ended - started, 1),
                    **closed.summary(ended),
                    "load1": os.getloadavg()[0],
                    "rss_mib": rss,
                    "cpu_pct": cpu,
                    "client_cpu_pct": round(sampler.client_cpu_pct),
                }
            )
            print(_progress(windows[-1]), flush=True)
        await run
        load_seconds = time.monotonic() - started
        assert stack.mongo is not None
        end = await drain(stack.mongo.url, stack.vhost)
        after_drain, _ = sampler.sample()
        documents = {
            name: {"after_setup": documents_before.get(name, 0), "end": count}
            for name, count in (await document_counts(stack.mongo.url)).items()
        }
    finally:
        await traffic.close()
    data = _results(
        traffic, windows, start_rss, after_drain, end, seconds, load_seconds, setup_seconds, window
    )
    return {**data, "documents": documents}


def _progress(w: dict[str, Any]) -> str:
    rss = " ".join(f"{n}={v:.0f}" for n, v in w["rss_mib"].items() if v is not None)
    return (
        f"  [{w['end_s']:6.0f} s] {w['rps']:6.1f} req/s  errors {w['errors']}  429 {w['429']}  "
        f"p50 {w['p50_ms']} ms  p99 {w['p99_ms']} ms  load {w['load1']:.1f}  RSS MiB {rss}"
    )


def _results(
    traffic: Traffic,
    windows: list[dict[str, Any]],
    start_rss: dict[str, float | None],
    after_drain: dict[str, float | None],
    end: dict[str, Any],
    seconds: float,
    load_seconds: float,
    setup_seconds: float,
    window: float,
) -> dict[str, Any]:
    recorder = traffic.recorder
    kinds: dict[str, Any] = {}
    latencies: list[float] = []
    for kind, stats in sorted(recorder.kinds.items(), key=lambda kv: -kv[1].requests):
        latencies += stats.latencies
        p50, p99 = percentile(stats.latencies, 0.5), percentile(stats.latencies, 0.99)
        kinds[kind] = {
            "requests": stats.requests,
            "errors": stats.errors,
            "429": stats.limited,
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "statuses": dict(stats.statuses.most_common()),
        }
    requests = sum(k["requests"] for k in kinds.values())
    errors = sum(k["errors"] for k in kinds.values())
    limited = sum(k["429"] for k in kinds.values())
    # Full windows of the load itself (the last ones may hold only calls still in flight).
    full = [
        w
        for w in windows
        if w["seconds"] >= window * 0.9 and w["end_s"] <= seconds + 1 and w["p99_ms"] is not None
    ]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    totals = {
        "offered_rps": traffic.offered_rps,
        "achieved_rps": requests / load_seconds if load_seconds else 0.0,
        "requests": requests,
        "errors": errors,
        "error_ratio": errors / requests if requests else 0.0,
        "429": limited,
        "429_anonymous": kinds.get(ANON_KIND, {}).get("429", 0),
        "skipped": traffic.skipped,
        "setup_retries": traffic.setup_retries,
        "stale_reads": recorder.stale_reads,
        "bad_bodies": recorder.bad_bodies,
        "client_bugs": recorder.client_bugs,
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "p99_window_min_ms": min((w["p99_ms"] for w in full), default=None),
        "p99_window_max_ms": max((w["p99_ms"] for w in full), default=None),
    }
    processes: dict[str, Any] = {}
    for name in start_rss:
        series = [(w["end_s"], w["rss_mib"][name]) for w in windows if w["rss_mib"].get(name)]
        second_half = [(t, v) for t, v in series if t >= seconds / 2]
        mid = min(series, key=lambda s: abs(s[0] - seconds / 2), default=(0.0, None))
        processes[name] = {
            "rss_start_mib": start_rss[name],
            "rss_mid_mib": mid[1],
            "rss_end_mib": series[-1][1] if series else None,
            "rss_peak_mib": max((v for _, v in series), default=None),
            "rss_after_drain_mib": after_drain.get(name),
            "trend": trend(second_half),
            "checked": name != DATABASE,
        }
    return {
        "seconds": seconds,
        "load_seconds": round(load_seconds, 1),
        "setup_seconds": round(setup_seconds, 1),
        "window_seconds": window,
        "totals": totals,
        "kinds": kinds,
        "windows": windows,
        "processes": processes,
        "growth_rule": {"mib_per_min": GROWTH_MIB_PER_MIN, "min_r2": GROWTH_MIN_R2},
        "end": end,
        "error_samples": recorder.samples,
        "mix": {
            name: {
                "ops_per_s": ops * traffic.scale,
                "requests_per_op": reqs,
                "launched": traffic.launched[name],
            }
            for name, (ops, reqs) in MIX.items()
        },
        "reference_rps": REFERENCE_RPS,
    }


def checks(data: dict[str, Any], max_error_ratio: float, vhost_dlqs: list[str]) -> list[Any]:
    """Pass/fail lines of the verdict."""
    totals, end = data["totals"], data["end"]
    growing = [
        n
        for n, p in data["processes"].items()
        if p["trend"]["verdict"] == "GROWING" and p["checked"]
    ]
    missing = [q for q in vhost_dlqs if q not in end["dlq"]]
    slopes = ", ".join(
        f"{n} {p['trend']['slope_mib_per_min']}"
        for n, p in data["processes"].items()
        if p["checked"]
    )
    return [
        {
            "name": "error ratio",
            "ok": totals["error_ratio"] <= max_error_ratio,
            "detail": f"{totals['error_ratio']:.4%} ({totals['errors']} of "
            f"{totals['requests']:,}); limit {max_error_ratio:.2%}",
        },
        {
            "name": "outbox drained, nothing pending",
            "ok": end["outbox_clean"] and end["drained"],
            "detail": ", ".join(f"{s} {o['pending']}" for s, o in end["outbox"].items())
            + f" pending after {end['drain_seconds']} s",
        },
        {
            "name": "every DLQ empty",
            "ok": end["dlq_clean"] and not missing,
            "detail": ", ".join(f"`{q}` {n}" for q, n in end["dlq"].items())
            + (f"; missing: {', '.join(missing)}" if missing else ""),
        },
        {
            "name": "no RSS growth trend",
            "ok": not growing,
            "detail": (f"growing: {', '.join(growing)}; " if growing else "")
            + f"slopes MiB/min: {slopes}",
        },
        {
            "name": "read-your-write, download bytes",
            "ok": totals["stale_reads"] == 0 and totals["bad_bodies"] == 0,
            "detail": f"{totals['stale_reads']} stale reads, {totals['bad_bodies']} bad bodies",
        },
    ]


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def _code(at: str | None, directory: Path) -> tuple[Path, dict[str, Any]]:
    """The source tree the platform runs: the working tree, or a clean `git archive` snapshot of
    revision `at` (other people's edits during a long run then cannot change what is measured)."""
    if at is None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        changed = [line.split(maxsplit=1)[1] for line in status.splitlines() if line.strip()]
        return ROOT, {"commit": _git("rev-parse", "--short", "HEAD"), "modified_files": changed}
    commit = _git("rev-parse", "--short", f"{at}^{{commit}}")
    tree = directory / "tree"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit], cwd=ROOT, capture_output=True, check=True, timeout=120
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=120)
    return tree, {"commit": commit, "modified_files": [], "snapshot": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS") or 300),
        help="seconds of load (default: $SOAK_SECONDS, else 300)",
    )  # fmt: skip
    parser.add_argument("--rate", type=float, default=150, help="offered requests per second")
    parser.add_argument("--window", type=float, default=10, help="seconds per reporting window")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-error-ratio", type=float, default=0.001)
    parser.add_argument("--keep", action="store_true", help="keep the stack's directory (logs)")
    parser.add_argument(
        "--at", metavar="REV", default=None,
        help="run the platform from a clean snapshot of this git revision (default: working tree)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=HERE / "report", help="path, no suffix")
    args = parser.parse_args()
    if args.seconds < 2 * args.window:
        sys.exit("--seconds must cover at least two windows")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_at_start = load_average()
    directory = Path(tempfile.mkdtemp(prefix="portico-soak-"))
    stack: Stack | None = None
    try:
        root, code = _code(args.at, directory)
        stack = Stack(directory, root=root)
        print(f"starting the platform in {directory} (code: {code['commit']})", flush=True)
        stack.start()
        print(f"soaking for {args.seconds:.0f} s at {args.rate:.0f} req/s", flush=True)
        data = uvloop.run(soak(stack, args.seconds, args.rate, args.window, args.seed))
    finally:
        logs: dict[str, Any] = {}
        if stack is not None:
            stack.stop()
            logs = {name: log_problems(p.log) for name, p in stack.processes.items()}
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    data = {
        "when": when,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": load_at_start,
            "load_avg_at_end": load_average(),
        },
        "rate": args.rate,
        "code": code,
        **data,
        "logs": logs,
        "stack_directory": str(directory) if args.keep else None,
    }
    assert stack is not None
    exchange = stack.processes["gateway"].env["PORTICO_EVENTS_EXCHANGE"]
    dlqs = [f"{exchange}.{service}.dlq" for service in SERVICES]
    data["checks"] = checks(data, args.max_error_ratio, dlqs)
    markdown = render(data)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown)
    print(markdown)
    failed = [c["name"] for c in data["checks"] if not c["ok"]]
    if failed:
        sys.exit(f"soak checks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
