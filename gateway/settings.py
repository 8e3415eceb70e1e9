"""Gateway settings (environment variables prefixed `PORTICO_GATEWAY_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.settings import BaseServiceSettings

DEFAULT_ROUTES_FILE = Path(__file__).with_name("routes.yaml")


def split_list(value: str) -> list[str]:
    """A comma-separated setting as a list of its non-empty, stripped items."""
    return [item.strip() for item in value.split(",") if item.strip()]


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
    # 0 = one worker process per core (SO_REUSEPORT).
    workers: int = Field(0, ge=0, le=256)
    routes_file: Path = DEFAULT_ROUTES_FILE
    users_urls: str = "http://127.0.0.1:8081"
    orgs_urls: str = "http://127.0.0.1:8082"
    files_urls: str = "http://127.0.0.1:8083"
    # Shared with the users service (which writes the revocation keys): one variable sets both.
    redis_prefix: str = Field(
        "portico:",
        validation_alias=AliasChoices("PORTICO_GATEWAY_REDIS_PREFIX", "PORTICO_REDIS_PREFIX"),
    )
    access_log: bool = True
    # The response cache stage (gateway/cache) for routes with a `cache:` policy.
    cache_enabled: bool = True
    # The rate-limit stage (gateway/ratelimit), configured by the `rate_limits:` section.
    ratelimit_enabled: bool = True
    # Consume every bus event to purge cache tags and auth caches on this instance.
    events_enabled: bool = True
    # Body-less idempotent requests use the lean HTTP/1.1 client (gateway/h1client.py).
    fast_client: bool = True
    # Simple body-less GET/HEAD requests on proxied routes are served by a lean HTTP/1.1 front
    # end (gateway/front.py); everything else by aiohttp's server.
    fast_front: bool = True
    # The admin listener (cache purges; gateway/admin.py) runs only when a token is set.
    admin_token: SecretStr | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(9180, ge=0, le=65535)

    # Load balancing, passive/active health and the circuit breaker.
    balancing: Literal["round_robin", "least_outstanding"] = "least_outstanding"
    eject_after_failures: int = Field(3, ge=1)
    eject_base_seconds: float = Field(2.0, gt=0)
    eject_max_seconds: float = Field(60.0, gt=0)
    health_interval: float = Field(5.0, gt=0)
    health_timeout: float = Field(1.0, gt=0)
    # Consecutive failed /readyz checks before an instance is ejected.
    health_unhealthy_threshold: int = Field(2, ge=1)
    circuit_failure_threshold: int = Field(5, ge=1)
    circuit_open_seconds: float = Field(10.0, gt=0)
    connect_timeout: float = Field(2.0, gt=0)
    # Retries: each request earns `retry_budget_ratio` retry tokens (at most `retry_budget_max`).
    retry_budget_ratio: float = Field(0.2, ge=0, le=1)
    retry_budget_max: float = Field(20.0, ge=0)
    retry_backoff_seconds: float = Field(0.025, ge=0)

    # Authentication.
    jwt_issuer: str = "portico"
    jwt_audience: str = "portico-api"
    jwt_leeway_seconds: int = Field(5, ge=0, le=300)
    jwks_min_refresh_seconds: float = Field(10.0, ge=0)
    jwks_ttl_seconds: float = Field(300.0, gt=0)
    token_cache_size: int = Field(10_000, ge=1)
    apikey_cache_seconds: float = Field(30.0, ge=0)
    identity_ttl_seconds: int = Field(300, ge=10)
    # What a Redis failure means for the revocation check: reject (closed) or accept (open).
    revocation_on_error: Literal["open", "closed"] = "closed"
    # Where a token seen before is checked for revocation: `redis`, on every request (a revoked
    # token is refused on its next request, whatever the network does), or `feed`: in Redis once
    # per minute and per feed subscription, else on the pub/sub feed's word (no Redis command
    # per request; a revocation message the network delays is a window of up to ~4 s).
    revocation_check: Literal["redis", "feed"] = "redis"

    # Edge behaviour.
    trusted_proxies: str = ""  # comma-separated IPs/CIDRs whose X-Forwarded-For is believed
    cors_origins: str = ""  # comma-separated exact origins
    cors_allow_credentials: bool = True
    cors_max_age: int = Field(600, ge=0)
    gzip_min_bytes: int = Field(1024, ge=0)
    # A client connection with no complete request head within this many seconds (since it
    # opened, or since its last response) is closed: idle keep-alives and slowloris alike.
    client_idle_timeout: float = Field(75.0, gt=0)
    # A client that takes none of its response for this many seconds (its socket buffer full)
    # is disconnected: a reader that stalls must not hold an upstream stream open forever.
    client_write_timeout: float = Field(60.0, gt=0)
    openapi_cache_seconds: float = Field(60.0, ge=0)

    def upstream_urls(self) -> dict[str, list[str]]:
        """Instances per upstream service."""
        return {
            "users": split_list(self.users_urls),
            "orgs": split_list(self.orgs_urls),
            "files": split_list(self.files_urls),
        }
