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
