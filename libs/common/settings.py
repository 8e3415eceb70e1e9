"""Process settings from environment variables (pydantic-settings).

Each process subclasses `BaseServiceSettings` with its own `env_prefix` (`PORTICO_USERS_`, ...).
Infrastructure shared by every process (MongoDB, Redis, RabbitMQ, the internal signing secret) is
read from prefix-free names (`MONGODB_URL` or `PORTICO_MONGODB_URL`) so one export configures all.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEV_INTERNAL_SECRET", "BaseServiceSettings", "load_settings"]

DEV_INTERNAL_SECRET = "portico-dev-internal-secret-change-me"  # noqa: S105 - refused in production

S = TypeVar("S", bound="BaseServiceSettings")


def _shared(name: str) -> AliasChoices:
    return AliasChoices(f"PORTICO_{name}", name)


class BaseServiceSettings(BaseSettings):
    """What every Portico process needs; subclasses add their own fields and prefix."""

    model_config = SettingsConfigDict(
        env_prefix="PORTICO_",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
    )

    service_name: str = "portico"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    environment: Literal["development", "test", "production"] = Field(
        "development", validation_alias=_shared("ENV")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    shutdown_timeout: float = Field(10.0, gt=0, le=300)

    mongodb_url: str = Field(
        "mongodb://127.0.0.1:27017/?directConnection=true",
        validation_alias=_shared("MONGODB_URL"),
    )
    mongodb_database: str = "portico"
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_shared("REDIS_URL"))
    rabbitmq_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/", validation_alias=_shared("RABBITMQ_URL")
    )
    events_exchange: str = Field("portico.events", validation_alias=_shared("EVENTS_EXCHANGE"))
    # Signs the identity the gateway forwards to services and service-to-service calls.
    internal_secret: SecretStr = Field(
        SecretStr(DEV_INTERNAL_SECRET), validation_alias=_shared("INTERNAL_SECRET")
    )

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> BaseServiceSettings:
        if self.environment == "production":
            for name, value in self:
                if isinstance(value, SecretStr) and "change-me" in value.get_secret_value():
                    raise ValueError(f"{name} must be set to a real secret in production")
                if isinstance(value, SecretStr) and len(value.get_secret_value()) < 32:
                    raise ValueError(f"{name} must be at least 32 characters in production")
        return self


def _env_name(cls: type[BaseServiceSettings], loc: tuple[int | str, ...]) -> str:
    if not loc:
        return cls.model_config.get("env_prefix", "") or "settings"
    field_name = str(loc[0])
    field = cls.model_fields.get(field_name)
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        return " or ".join(str(choice) for choice in field.validation_alias.choices)
    return f"{cls.model_config.get('env_prefix', '')}{field_name}".upper()


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings or exit with one line per bad variable (never echoing secret values)."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            name = _env_name(cls, tuple(error["loc"]))
            print(f"invalid configuration: {name}: {error['msg']}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
