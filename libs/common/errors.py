"""One exception hierarchy for the whole platform, rendered as RFC 9457 problem details.

Domain errors carry a stable `code` and an HTTP status but no aiohttp types, so services raise them
without knowing about HTTP; one middleware (`libs.common.http.error_middleware`) renders them.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

__all__ = [
    "AccountLocked",
    "BadRequest",
    "Conflict",
    "FieldError",
    "Forbidden",
    "Gone",
    "HeaderFieldsTooLarge",
    "Internal",
    "InvalidInput",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PorticoError",
    "QuotaExceeded",
    "RangeNotSatisfiable",
    "RateLimited",
    "Unauthenticated",
    "UnsupportedMediaType",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]

FieldError = dict[str, str]


class PorticoError(Exception):
    """Base of every error a client may see; `detail` must be safe to show."""

    status: int = 500
    code: str = "INTERNAL"
    default_detail: str = "an unexpected error occurred"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        self.errors = errors
        self.headers = headers or {}
        if status is not None:
            self.status = status
        super().__init__(self.detail)

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def to_problem(self, request_id: str | None) -> dict[str, Any]:
        """The RFC 9457 body, with our `code` and `request_id` extensions."""
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "request_id": request_id,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(PorticoError):
    status, code, default_detail = 400, "VALIDATION_FAILED", "the request is malformed"


class InvalidInput(PorticoError):
    status, code, default_detail = 422, "VALIDATION_FAILED", "the request body is invalid"


class Unauthenticated(PorticoError):
    status, code, default_detail = 401, "UNAUTHENTICATED", "authentication is required"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="portico"')


class Forbidden(PorticoError):
    status, code, default_detail = 403, "FORBIDDEN", "you may not do this"


class NotFound(PorticoError):
    status, code, default_detail = 404, "NOT_FOUND", "no such resource"


class MethodNotAllowed(PorticoError):
    status, code, default_detail = 405, "METHOD_NOT_ALLOWED", "method not allowed on this resource"

    def __init__(self, allowed: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if allowed:
            self.headers["Allow"] = ", ".join(sorted(allowed))


class Conflict(PorticoError):
    status, code, default_detail = 409, "CONFLICT", "the request conflicts with the current state"


class Gone(PorticoError):
    status, code, default_detail = 410, "GONE", "this resource is no longer available"


class PayloadTooLarge(PorticoError):
    status, code, default_detail = 413, "PAYLOAD_TOO_LARGE", "the request body is too large"


class UnsupportedMediaType(PorticoError):
    status, code, default_detail = 415, "UNSUPPORTED_MEDIA_TYPE", "unsupported media type"


class RangeNotSatisfiable(PorticoError):
    status, code, default_detail = 416, "RANGE_NOT_SATISFIABLE", "range not satisfiable"


class AccountLocked(PorticoError):
    status, code, default_detail = 423, "ACCOUNT_LOCKED", "the account is temporarily locked"


class RateLimited(PorticoError):
    status, code, default_detail = 429, "RATE_LIMITED", "rate limit exceeded"


class QuotaExceeded(PorticoError):
    # 429 for request quotas (gateway); the files service uses status=413 for storage quotas.
    status, code, default_detail = 429, "QUOTA_EXCEEDED", "quota exceeded"


class HeaderFieldsTooLarge(PorticoError):
    # RFC 6585 §5: one header field, or all of them together, too large. An extension of
    # DESIGN.md's code table (answered by libs.common.protocol before any handler runs).
    status, code = 431, "HEADER_FIELDS_TOO_LARGE"
    default_detail = "the request's header fields are too large"


class Internal(PorticoError):
    status, code, default_detail = 500, "INTERNAL", "an unexpected error occurred"


class UpstreamUnavailable(PorticoError):
    status, code, default_detail = 503, "UPSTREAM_UNAVAILABLE", "the service is unavailable"


class UpstreamTimeout(PorticoError):
    status, code, default_detail = 504, "UPSTREAM_TIMEOUT", "the service did not answer in time"
