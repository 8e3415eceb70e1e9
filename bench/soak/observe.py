"""What the soak reads from the platform's side: RSS and CPU from /proc, the outboxes in MongoDB,
the queues in RabbitMQ, error lines in the process logs, and a linear trend over RSS samples."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from pymongo import AsyncMongoClient

from services.files.settings import Settings as FilesSettings
from services.orgs.settings import Settings as OrgsSettings
from services.users.settings import Settings as UsersSettings

MiB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")
# Each service's outbox lives in its own database (the settings' default name).
OUTBOX_DATABASES = {
    "users": UsersSettings.model_fields["mongodb_database"].default,
    "orgs": OrgsSettings.model_fields["mongodb_database"].default,
    "files": FilesSettings.model_fields["mongodb_database"].default,
}
# A process "grows" when its second-half RSS slope is above this and the fit explains the samples.
GROWTH_MIB_PER_MIN = 0.5
GROWTH_MIN_R2 = 0.5
FIRST_ERRORS = 3


def rss_mib(pid: int) -> float | None:
    """Resident set size of one process (VmRSS), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MiB
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def trend(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Least-squares line through (seconds, MiB) samples: slope in MiB/min, r², a verdict."""
    if len(samples) < 3:
        return {"slope_mib_per_min": None, "r2": None, "verdict": "too few samples"}
    xs = [t / 60 for t, _ in samples]
    ys = [v for _, v in samples]
    if len(set(ys)) == 1:
        return {"slope_mib_per_min": 0.0, "r2": 0.0, "verdict": "no growth trend"}
    slope, _ = statistics.linear_regression(xs, ys)
    r2 = statistics.correlation(xs, ys) ** 2
    growing = slope > GROWTH_MIB_PER_MIN and r2 >= GROWTH_MIN_R2
    return {
        "slope_mib_per_min": round(slope, 3),
        "r2": round(r2, 2),
        "verdict": "GROWING" if growing else "no growth trend",
    }


def list_queues(vhost: str) -> dict[str, dict[str, int]]:
    """Every queue of the vhost with its ready and unacknowledged message counts."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
         "name", "messages_ready", "messages_unacknowledged"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    queues: dict[str, dict[str, int]] = {}
    for line in done.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].isdigit():
            queues[parts[0]] = {"ready": int(parts[1]), "unacked": int(parts[2])}
    return dict(sorted(queues.items()))


async def outbox_counts(mongo_url: str) -> dict[str, dict[str, int]]:
    """Pending and sent outbox entries per service."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, timeoutMS=10_000)
    try:
        counts: dict[str, dict[str, int]] = {}
        for service, database in OUTBOX_DATABASES.items():
            outbox = client[database]["outbox"]
            counts[service] = {
                "pending": await outbox.count_documents({"status": "pending"}),
                "sent": await outbox.count_documents({"status": "sent"}),
            }
        return counts
    finally:
        await client.close()


async def document_counts(mongo_url: str) -> dict[str, int]:
    """Documents per `database.collection` of the services (how much data the run left)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, timeoutMS=10_000)
    try:
        counts: dict[str, int] = {}
        for database in OUTBOX_DATABASES.values():
            for name in sorted(await client[database].list_collection_names()):
                counts[f"{database}.{name}"] = await client[database][name].count_documents({})
        return counts
    finally:
        await client.close()


async def drain(mongo_url: str, vhost: str, *, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until no outbox entry is pending and no queue holds a message outside its DLQ (or
    `timeout` passes), then report the outboxes, every queue and the DLQs."""
    started = time.monotonic()
    while True:
        outboxes = await outbox_counts(mongo_url)
        queues = await asyncio.to_thread(list_queues, vhost)
        busy = {
            name: q for name, q in queues.items() if not name.endswith(".dlq") and any(q.values())
        }
        pending = sum(o["pending"] for o in outboxes.values())
        drained = pending == 0 and not busy
        if drained or time.monotonic() - started > timeout:
            break
        await asyncio.sleep(2)
    dlqs = {name: q["ready"] + q["unacked"] for name, q in queues.items() if name.endswith(".dlq")}
    return {
        "drained": drained,
        "drain_seconds": round(time.monotonic() - started, 1),
        "outbox": outboxes,
        "queues": queues,
        "dlq": dlqs,
        "outbox_clean": pending == 0,
        "dlq_clean": bool(dlqs) and not any(dlqs.values()),
    }


def log_problems(log: Path) -> dict[str, Any]:
    """Error and warning lines of one process log (JSON lines), tracebacks, and how many of each
    warning/error event there were."""
    counts: dict[str, Any] = {"error": 0, "warning": 0, "traceback": 0}
    events: Counter[str] = Counter()
    first: list[str] = []  # the first few errors, with the last line of their exception
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {**counts, "events": {}, "first_errors": []}
    for line in text.splitlines():
        if line.startswith("Traceback"):
            counts["traceback"] += 1
        if not line.startswith("{") or '"level":"info"' in line or '"level":"debug"' in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        level = "error" if entry.get("level") in ("error", "critical") else "warning"
        counts[level] += 1
        events[f"{entry.get('level')}: {entry.get('event')}"] += 1
        if level == "error" and len(first) < FIRST_ERRORS:
            cause = str(entry.get("exception", "")).strip().splitlines()[-1:] or [""]
            first.append(f"{entry.get('route', '')} {entry.get('event')}: {cause[0][:300]}")
    return {**counts, "events": dict(events.most_common()), "first_errors": first}
