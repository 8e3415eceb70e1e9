"""Settings of the users service (environment variables prefixed `PORTICO_USERS_`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.settings import BaseServiceSettings

DEV_KEY_ENCRYPTION_KEY = "portico-dev-users-key-encryption-key-change-me"


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="PORTICO_USERS_",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
    )

    service_name: str = "users"
    port: int = Field(8081, ge=0, le=65535)
    mongodb_database: str = "portico_users"
    # Revocation keys are read by the gateway: both must use the same prefix.
    redis_prefix: str = Field(
        "portico:",
        validation_alias=AliasChoices("PORTICO_USERS_REDIS_PREFIX", "PORTICO_REDIS_PREFIX"),
    )

    # Private halves of the JWT signing keys are encrypted (AES-256-GCM) with a key derived from
    # this secret; the base validator refuses the default outside development.
    key_encryption_key: SecretStr = SecretStr(DEV_KEY_ENCRYPTION_KEY)

    jwt_issuer: str = "portico"
    jwt_audience: str = "portico-api"
    access_token_seconds: int = Field(900, ge=30, le=86_400)
    refresh_token_seconds: int = Field(30 * 86_400, ge=60)
    # A rotated-in key is published in the JWKS this long before it signs, so every verifier
    # (gateway JWKS cache, clients honouring the JWKS max-age) knows it before its first token.
    key_publish_seconds: int = Field(70, ge=0)
    # How long a rotated-out key keeps verifying after it stopped signing (clock skew margin).
    key_retire_grace_seconds: int = Field(60, ge=0)
    # Running instances re-read the active signing key this often (picks up `portico keys rotate`).
    signing_key_reload_seconds: float = Field(30.0, gt=0)
    jwks_max_age_seconds: int = Field(60, ge=0)

    # argon2id; the defaults are OWASP's first recommended profile (m=19 MiB, t=2, p=1).
    argon2_time_cost: int = Field(2, ge=1)
    argon2_memory_kib: int = Field(19 * 1024, ge=8)
    argon2_parallelism: int = Field(1, ge=1)
    password_min_length: int = Field(12, ge=8)
    password_max_length: int = Field(128, ge=64, le=1024)

    # Per-account lockout: `lockout_threshold` failures lock for base * 2**(n-1) seconds (capped).
    lockout_threshold: int = Field(5, ge=1)
    lockout_base_seconds: int = Field(60, ge=1)
    lockout_max_seconds: int = Field(3600, ge=1)
    # Per-IP throttling of login attempts (fixed window).
    login_ip_max_attempts: int = Field(30, ge=1)
    login_ip_window_seconds: int = Field(60, ge=1)

    password_reset_seconds: int = Field(1800, ge=60)
