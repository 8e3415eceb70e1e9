"""Settings of the files service (environment variables prefixed `PORTICO_FILES_`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.settings import BaseServiceSettings

MiB = 1024 * 1024

DEFAULT_ALLOWED_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "text/plain",
    "text/csv",
    "text/markdown",
    "application/json",
)


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="PORTICO_FILES_",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
    )

    service_name: str = "files"
    port: int = Field(8083, ge=0, le=65535)
    mongodb_database: str = "portico_files"

    # Limits
    max_upload_size: int = Field(100 * MiB, ge=0)
    user_quota_bytes: int = Field(1024 * MiB, ge=0)
    allowed_content_types: tuple[str, ...] = DEFAULT_ALLOWED_TYPES
    name_max_length: int = Field(255, ge=16, le=1024)

    # Storage
    storage_backend: Literal["local", "s3"] = "local"
    storage_path: str = "./var/objects"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "portico-files"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_part_size: int = Field(8 * MiB, ge=5 * MiB)
    s3_presign: bool = False
    s3_timeout: float = Field(30.0, gt=0)

    # Signed download URLs
    public_base_url: str = "http://127.0.0.1:8080"
    url_signing_secret: SecretStr = SecretStr("portico-dev-files-url-secret-change-me")
    url_ttl_seconds: int = Field(900, ge=1, le=7 * 24 * 3600)

    # Thumbnails of images (a consumer of file.uploaded; needs the bus)
    thumbnails: bool = True
    thumbnail_size: int = Field(256, ge=16, le=2048)
    thumbnail_max_source_bytes: int = Field(20 * MiB, ge=0)

    # Sweeper of orphaned blobs and uploads that never finished
    sweep_interval_seconds: float = Field(600.0, gt=0)
    stale_upload_seconds: float = Field(3600.0, gt=0)
