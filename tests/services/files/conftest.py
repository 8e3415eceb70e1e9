"""Fixtures of the files tests: moto's S3 server over real HTTP (one per worker), settings for
either storage backend, and a client on the real app."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.embedded import free_port, wait_for_port
from services.files.settings import Settings
from tests.conftest import TEST_SECRET

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server (moto) in a subprocess on a free port."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        if not wait_for_port("127.0.0.1", port, timeout=30):
            raise RuntimeError("moto server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def files_settings(
    *, mongo_url: str, db_name: str, storage: dict[str, object], **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "mongodb_url": mongo_url,
        "mongodb_database": db_name,
        "internal_secret": TEST_SECRET,
        "environment": "test",
        "max_upload_size": 8 * MiB,
        "user_quota_bytes": 64 * MiB,
        "url_signing_secret": "files-test-url-secret-0123456789abcdef",
        "sweep_interval_seconds": 3600,
        **storage,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def local_storage(tmp_path: Path) -> dict[str, object]:
    return {"storage_backend": "local", "storage_path": str(tmp_path / "objects")}


def s3_storage(endpoint: str, unique: str) -> dict[str, object]:
    return {
        "storage_backend": "s3",
        "s3_endpoint_url": endpoint,
        "s3_bucket": f"portico-test-{unique}",
        "s3_access_key_id": "testing",
        "s3_secret_access_key": "testing",
        "s3_part_size": 5 * MiB,
    }
