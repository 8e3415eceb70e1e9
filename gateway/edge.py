"""What the edge adds around every response: real client IP, CORS and security headers."""

from __future__ import annotations

import ipaddress
from collections.abc import MutableMapping, Sequence
from functools import lru_cache

from aiohttp import web

__all__ = ["CLIENT_IP", "EDGE", "SECURITY_HEADERS", "Edge", "client_ip"]

CLIENT_IP = web.RequestKey("client_ip", str)
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


class Edge:
    """Trusted proxies and CORS configuration, precomputed for the hot path."""

    def __init__(
        self,
        *,
        trusted_proxies: list[str],
        cors_origins: list[str],
        cors_credentials: bool,
        cors_max_age: int,
    ) -> None:
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in trusted_proxies
        )
        # A wildcard origin is only ever echoed literally without credentials (Fetch standard:
        # `*` with credentials is refused by browsers, and echoing every origin would be worse).
        self.any_origin = "*" in cors_origins
        self.origins = frozenset(o.rstrip("/") for o in cors_origins if o != "*")
        self.credentials = cors_credentials
        self.max_age = str(cors_max_age)
        self.is_trusted = lru_cache(maxsize=4096)(self._is_trusted)

    def _is_trusted(self, address: str) -> bool:
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client_ip(self, request: web.Request) -> str:
        remote = request.remote or ""
        if not self.networks or not self.is_trusted(remote):
            return remote
        forwarded = request.headers.get("X-Forwarded-For")
        if not forwarded:
            return remote
        # Walk from the right: the first hop not operated by us is the client.
        for hop in reversed(forwarded.split(",")):
            hop = hop.strip()
            if hop and not self.is_trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return remote
        return remote

    def behind_tls(self, request: web.Request) -> bool:
        if (
            self.networks
            and request.headers.get("X-Forwarded-Proto") == "https"
            and self.is_trusted(request.remote or "")
        ):
            return True
        return bool(
            request.secure
            and request.transport is not None
            and request.transport.get_extra_info("sslcontext")
        )

    def allowed_origin(self, origin: str) -> str | None:
        if origin in self.origins:
            return origin
        if self.any_origin and not self.credentials:
            return "*"
        return None

    def response_items(self, request: web.Request) -> Sequence[tuple[str, str]]:
        """`decorate`'s headers as (name, value) pairs, for a response the caller assembles; the
        common case (no `Origin`, no TLS) is one shared tuple, built once."""
        if "Origin" not in request.headers and not self.behind_tls(request):
            return SECURITY_HEADERS
        collected: dict[str, str] = {}
        self.decorate(request, collected)
        return list(collected.items())

    def decorate(self, request: web.Request, headers: MutableMapping[str, str]) -> None:
        """Add security and CORS headers to a response's headers (a CIMultiDict or a dict)."""
        for name, value in SECURITY_HEADERS:
            headers[name] = value
        if self.behind_tls(request):
            headers[HSTS[0]] = HSTS[1]
        origin = request.headers.get("Origin")
        if origin is not None:
            allowed = self.allowed_origin(origin)
            if allowed is not None:
                headers["Access-Control-Allow-Origin"] = allowed
                if allowed != "*":
                    # Added to what the response already varies on (a cached entry's
                    # `Accept-Encoding`), never in its place.
                    vary = headers.get("Vary")
                    if not vary:
                        headers["Vary"] = "Origin"
                    elif "origin" not in {t.strip().lower() for t in vary.split(",")}:
                        headers["Vary"] = f"{vary}, Origin"
                    if self.credentials:
                        headers["Access-Control-Allow-Credentials"] = "true"
                headers["Access-Control-Expose-Headers"] = (
                    "X-Request-ID, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "
                    "Retry-After, X-Cache-Status, ETag, Link, Location, Content-Disposition"
                )

    def preflight(self, request: web.Request, allowed_methods: list[str]) -> web.Response:
        """Answer a CORS preflight at the gateway (204, or 403 for a foreign origin)."""
        origin = request.headers.get("Origin", "")
        allowed = self.allowed_origin(origin)
        response = web.Response(status=204 if allowed else 403)
        if allowed is not None:
            headers = response.headers
            headers["Access-Control-Allow-Origin"] = allowed
            if allowed != "*":
                headers["Vary"] = "Origin"
                if self.credentials:
                    headers["Access-Control-Allow-Credentials"] = "true"
            headers["Access-Control-Allow-Methods"] = ", ".join(allowed_methods)
            requested = request.headers.get("Access-Control-Request-Headers")
            headers["Access-Control-Allow-Headers"] = (
                requested or "Authorization, Content-Type, X-API-Key, X-Request-ID"
            )
            headers["Access-Control-Max-Age"] = self.max_age
        return response


EDGE = web.AppKey("gateway_edge", Edge)


def client_ip(request: web.Request) -> str:
    """The real client address: X-Forwarded-For is believed only from a trusted proxy."""
    cached: str | None = request.get(CLIENT_IP)
    if cached is not None:
        return cached
    value = request.app[EDGE].client_ip(request)
    request[CLIENT_IP] = value
    return value
