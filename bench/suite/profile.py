"""py-spy profile of a server process while wrk drives one scenario: the frames that dominate."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _short(frame: str) -> str:
    """`handle (/work/main/gateway/cache/stage.py)` -> `handle (gateway/cache/stage.py)`."""
    frame = frame.replace(f"{ROOT}/", "")
    return re.sub(r"\(/\S*?/(?:site|dist)-packages/", "(", frame)


def profile(
    pid: int, url: str, script: Path, seconds: int, cpus: str | None, work: Path, top: int = 12
) -> dict[str, Any]:
    """Sample `pid` (py-spy, 200 Hz, by function) during a wrk run; top self and inclusive
    frames as a share of samples."""
    spy = _spy()
    if spy is None:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    out = work / f"profile-{pid}-{abs(hash(url))}.txt"
    wrk = ["wrk", "-t1", "-c64", f"-d{seconds + 2}s", "-s", str(script), url]
    if cpus:
        wrk = ["taskset", "-c", cpus, *wrk]
    load = subprocess.Popen(wrk, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = subprocess.run(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-d",
                str(seconds),
                "-r",
                "200",
                "--function",
                "--nonblocking",
                "-f",
                "raw",
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        load.wait()
    if done.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed: {done.stderr.strip()[-300:]}"}
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):  # the first frame is the process/thread name
            inclusive[frame] += n
    share = max(total, 1)
    return {
        "samples": total,
        "self": [(f, round(100 * n / share, 1)) for f, n in own.most_common(top)],
        "inclusive": [(f, round(100 * n / share, 1)) for f, n in inclusive.most_common(top * 2)],
    }
