"""S3-compatible backend (AWS S3, MinIO, moto) through aiobotocore.

Small objects are one `PutObject`; anything larger than a part goes through a multipart upload
whose parts are `part_size` (S3 requires >= 5 MiB except the last) and which is aborted on any
failure, so a refused or broken upload leaves no object and no dangling parts behind.
SHA-256 checksums are sent with every part/object so the server verifies what it stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import ClientError
from pydantic import SecretStr

from services.files.storage.base import ObjectStorage, StoredObject

_log = structlog.get_logger("portico.files.s3")
READ_CHUNK = 256 * 1024
_session: AioSession | None = None


def _shared_session() -> AioSession:
    # One botocore session per process: it caches the parsed S3 service model, which otherwise
    # costs ~1 s of CPU for every client created (each app start, each test).
    global _session
    if _session is None:
        _session = get_session()
    return _session


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class S3Storage(ObjectStorage):
    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key_id: SecretStr | None,
        secret_access_key: SecretStr | None,
        part_size: int = 8 * 1024 * 1024,
        timeout: float = 30.0,
    ) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self.part_size = part_size
        self.timeout = timeout
        self._stack = AsyncExitStack()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Storage.start() was not called")
        return self._client

    async def start(self) -> None:
        session = _shared_session()
        config = AioConfig(
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=(
                    self._access_key_id.get_secret_value() if self._access_key_id else None
                ),
                aws_secret_access_key=(
                    self._secret_access_key.get_secret_value() if self._secret_access_key else None
                ),
                config=config,
            )
        )
        await self._ensure_bucket()

    async def _ensure_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                await self.client.create_bucket(**kwargs)
            except ClientError as exc:  # another instance created it first
                if exc.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    raise
            _log.info("bucket created", bucket=self.bucket)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        buffer = bytearray()
        iterator = aiter(chunks)
        # Read up to one part: a small object is a single PutObject.
        async for chunk in iterator:
            buffer += chunk
            if len(buffer) >= self.part_size:
                break
        else:
            body = bytes(buffer)
            await self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ChecksumSHA256=_b64sha256(body)
            )
            return len(body)
        return await self._multipart(key, buffer, iterator)

    async def _multipart(self, key: str, buffer: bytearray, iterator: AsyncIterator[bytes]) -> int:
        created = await self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
        )
        upload_id = created["UploadId"]
        parts: list[dict[str, Any]] = []
        total = 0
        try:
            exhausted = False
            while True:
                while len(buffer) < self.part_size and not exhausted:
                    try:
                        buffer += await anext(iterator)
                    except StopAsyncIteration:
                        exhausted = True
                if not buffer and parts:
                    break
                body = bytes(buffer[: self.part_size])
                del buffer[: self.part_size]
                checksum = _b64sha256(body)
                number = len(parts) + 1
                answer = await self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ChecksumSHA256=checksum,
                )
                parts.append(
                    {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
                )
                total += len(body)
                if exhausted and not buffer:
                    break
            await self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise
        return total

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except ClientError:
            _log.warning("multipart abort failed", key=key)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end}"
        answer = await self.client.get_object(**kwargs)
        body = answer["Body"]
        try:
            while True:
                data = await body.read(READ_CHUNK)
                if not data:
                    break
                yield data
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def list(self) -> AsyncIterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"], item["Size"], item["LastModified"])

    async def abort_stale_uploads(self, older_than: datetime) -> int:
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    await self._abort(upload["Key"], upload["UploadId"])
                    aborted += 1
        return aborted

    async def presign(
        self, key: str, *, expires_in: int, content_disposition: str, content_type: str
    ) -> str | None:
        url: str = await self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": content_disposition,
                "ResponseContentType": content_type,
            },
            ExpiresIn=expires_in,
        )
        return url
