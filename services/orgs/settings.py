"""Settings of the orgs service (environment variables prefixed `PORTICO_ORGS_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import BaseServiceSettings


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="PORTICO_ORGS_",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
    )

    service_name: str = "orgs"
    port: int = Field(8082, ge=0, le=65535)
    mongodb_database: str = "portico_orgs"
    # How long an invitation can be accepted (default 7 days).
    invitation_ttl_seconds: int = Field(7 * 24 * 3600, ge=60, le=90 * 24 * 3600)
    # Fallback for the caller's email when the local `user_emails` view (fed by user.* events)
    # has not seen the user yet: `GET {users_url}/api/v1/users/{id}` with a service identity.
    users_url: str = "http://127.0.0.1:8081"
    users_timeout: float = Field(3.0, gt=0, le=30)
