"""Gateway settings (environment variables prefixed `PORTICO_GATEWAY_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import BaseServiceSettings


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="PORTICO_GATEWAY_",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
    )

    service_name: str = "gateway"
    port: int = Field(8080, ge=0, le=65535)
    users_urls: str = "http://127.0.0.1:8081"
    orgs_urls: str = "http://127.0.0.1:8082"
    files_urls: str = "http://127.0.0.1:8083"
