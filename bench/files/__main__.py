"""Files service benchmark: upload and download MB/s direct to the service vs a raw disk write,
and the service's peak RSS while 1 GiB goes through it.

    python -m bench.files [--size-mib 1024] [--backend local|s3]

The service runs as its own process (`python -m services.files`, local filesystem backend under a
temp dir, or moto's S3 server with `--backend s3`) against an embedded SecantusDB, so its RSS is
measured alone (VmHWM = peak resident set from /proc). The client streams a generated body and
hashes the download; nothing is held in memory on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from libs.common.embedded import EmbeddedMongo, free_port, wait_for_port
from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity

MiB = 1024 * 1024
SECRET = "bench-internal-secret-0123456789abcdef0123"  # noqa: S105
PNG = b"\x89PNG\r\n\x1a\n"


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def raw_disk(path: Path, size_mib: int, block: bytes) -> tuple[float, float]:
    """MB/s of a plain write (+ fsync) and read of the same size, 1 MiB at a time."""
    started = time.perf_counter()
    with path.open("wb") as handle:
        for _ in range(size_mib):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    write = size_mib / (time.perf_counter() - started)
    started = time.perf_counter()
    with path.open("rb") as handle:
        while handle.read(MiB):
            pass
    read = size_mib / (time.perf_counter() - started)
    path.unlink()
    return write, read


async def transfer(
    base: str, size_mib: int, block: bytes, headers: dict[str, str] | None = None
) -> dict[str, float | str]:
    """Upload then download `size_mib` MiB; `headers` authenticate (default: an identity header
    signed with SECRET, i.e. straight to the service)."""
    if headers is None:
        headers = {IDENTITY_HEADER: sign_identity(Principal(id="bench-user"), SECRET)}

    async def body() -> object:
        for _ in range(size_mib):
            yield block

    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.perf_counter()
        async with http.post(
            f"{base}/api/v1/files",
            data=body(),
            params={"name": "bench.png"},
            headers={**headers, "Content-Type": "image/png"},
        ) as response:
            info = await response.json()
            assert response.status == 201, info
        upload = size_mib / (time.perf_counter() - started)
        digest = hashlib.sha256()
        started = time.perf_counter()
        async with http.get(f"{base}/api/v1/files/{info['id']}/content", headers=headers) as got:
            async for chunk in got.content.iter_chunked(MiB):
                digest.update(chunk)
        download = size_mib / (time.perf_counter() - started)
        assert digest.hexdigest() == info["sha256"], "download differs from upload"
        async with http.delete(f"{base}/api/v1/files/{info['id']}", headers=headers) as gone:
            assert gone.status == 204
    return {"upload": upload, "download": download, "sha256": info["sha256"]}


def start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    if not wait_for_port("127.0.0.1", port, timeout=60):
        process.kill()
        raise SystemExit(f"{cmd[2]} did not start; see {log}")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--backend", choices=["local", "s3"], default="local")
    args = parser.parse_args()
    block = PNG + os.urandom(MiB - len(PNG))
    helpers: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp, EmbeddedMongo() as mongo:
        root = Path(tmp)
        write_mbs, read_mbs = raw_disk(root / "raw.bin", args.size_mib, block)
        port = free_port()
        env = {
            **os.environ,
            "MONGODB_URL": mongo.url,
            "PORTICO_INTERNAL_SECRET": SECRET,
            "PORTICO_FILES_PORT": str(port),
            "PORTICO_FILES_MONGODB_DATABASE": "bench_files",
            "PORTICO_FILES_STORAGE_BACKEND": args.backend,
            "PORTICO_FILES_STORAGE_PATH": str(root / "objects"),
            "PORTICO_FILES_MAX_UPLOAD_SIZE": str((args.size_mib + 1) * MiB),
            "PORTICO_FILES_USER_QUOTA_BYTES": str((args.size_mib + 1) * MiB),
            "PORTICO_FILES_LOG_LEVEL": "WARNING",
        }
        if args.backend == "s3":
            moto_port = free_port()
            moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]
            helpers.append(start(moto, env, moto_port, root / "moto.log"))
            env |= {
                "PORTICO_FILES_S3_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
                "PORTICO_FILES_S3_ACCESS_KEY_ID": "bench",
                "PORTICO_FILES_S3_SECRET_ACCESS_KEY": "bench",
            }
        service = start([sys.executable, "-m", "services.files"], env, port, root / "files.log")
        try:
            before = proc_status(service.pid)
            result = asyncio.run(transfer(f"http://127.0.0.1:{port}", args.size_mib, block))
            after = proc_status(service.pid)
        finally:
            stop(service)
            for helper in helpers:
                stop(helper)
    print(f"# Files service benchmark ({args.backend} backend, {args.size_mib} MiB)\n")
    print(f"`{time.strftime('%Y-%m-%d %H:%M')}` · `python -m bench.files --size-mib "
          f"{args.size_mib} --backend {args.backend}` · CPython {platform.python_version()}, "
          f"{os.cpu_count()} cores shared with other work\n")  # fmt: skip
    print("| what | MB/s |\n|---|---|")
    print(f"| raw disk write (1 MiB blocks + fsync) | {write_mbs:.0f} |")
    print(f"| raw disk read (page cache likely) | {read_mbs:.0f} |")
    print(f"| upload direct to the service (stream, SHA-256, fsync) | {result['upload']:.0f} |")
    print(f"| download direct from the service (client hashes) | {result['download']:.0f} |")
    print(
        f"\nService RSS: {before['VmRSS'] / MiB:.0f} MiB before, peak {after['VmHWM'] / MiB:.0f} "
        f"MiB during the transfer, {after['VmRSS'] / MiB:.0f} MiB after."
    )


if __name__ == "__main__":
    main()
