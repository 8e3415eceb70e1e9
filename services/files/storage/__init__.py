"""Where the bytes live: one small interface, two backends (local filesystem, S3-compatible)."""

from __future__ import annotations

from services.files.settings import Settings
from services.files.storage.base import ObjectStorage, StoredObject
from services.files.storage.local import LocalStorage
from services.files.storage.s3 import S3Storage

__all__ = ["LocalStorage", "ObjectStorage", "S3Storage", "StoredObject", "create_storage"]


def create_storage(settings: Settings) -> ObjectStorage:
    """The backend the settings choose (`PORTICO_FILES_STORAGE_BACKEND=local|s3`)."""
    if settings.storage_backend == "s3":
        return S3Storage(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            part_size=settings.s3_part_size,
            timeout=settings.s3_timeout,
        )
    return LocalStorage(settings.storage_path)
