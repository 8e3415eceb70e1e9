"""The declarative route table: YAML -> validated `RouteTable` -> most-specific match.

Matching is precompiled: static paths are one dict lookup; templated paths walk a small trie whose
nodes prefer a static segment over a `{param}` over a trailing `*` wildcard, so the most specific
template wins regardless of file order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from aiohttp import ClientTimeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "LOCAL_UPSTREAM",
    "Route",
    "RouteMatch",
    "RouteSpec",
    "RouteTable",
    "RouteTableError",
    "load_route_table",
    "parse_route_table",
]

LOCAL_UPSTREAM = "gateway"  # routes answered by the gateway itself (`handler:` names which)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


class RouteTableError(ValueError):
    """The route table is invalid; the message names the bad entry."""


def parse_size(value: int | str) -> int:
    if isinstance(value, int):
        return value
    found = _SIZE.match(value)
    if not found:
        raise ValueError(f"not a size: {value!r} (use e.g. 1048576, '512KiB', '100MiB')")
    return int(found.group(1)) * _UNITS[found.group(2)]


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(10.0, gt=0, le=3600)
    retries: int = Field(1, ge=0, le=5)
    body_limit: int = 1024 * 1024

    _size = field_validator("body_limit", mode="before")(parse_size)


class RouteSpec(BaseModel):
    """One entry of `routes:` as written in YAML."""

    model_config = ConfigDict(extra="forbid")

    path: str
    methods: list[str]
    upstream: str
    handler: str | None = None
    auth: Literal["required", "optional", "none"] = "required"
    scopes: list[str] = []
    api_keys: bool = True
    timeout: float | None = Field(None, gt=0, le=3600)
    retries: int | None = Field(None, ge=0, le=5)
    body_limit: int | None = None
    websocket: bool = False
    rate: str | None = None
    cache: dict[str, Any] | None = None
    summary: str | None = None

    @field_validator("body_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return None if value is None else parse_size(value)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        methods = [m.upper() for m in value]
        bad = [m for m in methods if m not in HTTP_METHODS]
        if bad or not methods:
            raise ValueError(f"unknown or missing HTTP methods: {bad or value}")
        return methods

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or "//" in value or "/../" in value or value.endswith("/.."):
            raise ValueError("path must be an absolute, normalised template like /api/v1/x/{id}")
        if value == "/internal" or value.startswith("/internal/"):
            raise ValueError("/internal/* is never routed publicly")
        segments = value.strip("/").split("/")
        for index, segment in enumerate(segments):
            if segment == "*":
                if index != len(segments) - 1:
                    raise ValueError("'*' is only allowed as the last segment")
            elif ("{" in segment or "}" in segment) and not _PARAM.fullmatch(segment):
                raise ValueError(f"bad path segment {segment!r}: use a whole {{name}} segment")
        return value


class RouteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: Defaults = Defaults()
    rate_limits: dict[str, Any] | None = None
    routes: list[dict[str, Any]]


@dataclass(slots=True, eq=False)
class Route:
    """A validated route, with everything the hot path needs precomputed."""

    template: str
    methods: frozenset[str]
    upstream: str
    handler: str | None
    auth: str
    scopes: tuple[str, ...]
    api_keys: bool
    timeout: float
    client_timeout: ClientTimeout
    retries: int
    body_limit: int
    websocket: bool
    rate: str | None
    cache: Any  # the cache module's CachePolicy when installed, else the raw mapping
    summary: str | None
    params: tuple[str, ...]


@dataclass(slots=True)
class RouteMatch:
    """The routes sharing the matched path template, by method."""

    template: str
    by_method: dict[str, Route]

    def allowed(self) -> list[str]:
        return sorted(self.by_method)


@dataclass(slots=True)
class _Node:
    static: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    wildcard: RouteMatch | None = None
    match: RouteMatch | None = None


class RouteTable:
    """An immutable, precompiled route table; swapped as a whole on reload."""

    def __init__(
        self, routes: list[Route], *, rate_limits: Any = None, source: str = "<memory>"
    ) -> None:
        self.routes = routes
        self.rate_limits = rate_limits
        self.rate_limits_raw: dict[str, Any] = {}
        self.source = source
        self._static: dict[str, RouteMatch] = {}
        self._root = _Node()
        by_template: dict[str, RouteMatch] = {}
        for route in routes:
            found = by_template.get(route.template)
            if found is None:
                found = by_template[route.template] = RouteMatch(route.template, {})
                self._insert(found)
            for method in route.methods:
                found.by_method[method] = route
            if "GET" in route.methods and "HEAD" not in found.by_method:
                found.by_method["HEAD"] = route
        self.templates = by_template

    def _insert(self, found: RouteMatch) -> None:
        segments = found.template.strip("/").split("/")
        if "*" not in segments and "{" not in found.template:
            self._static[found.template.rstrip("/") or "/"] = found
            return
        node = self._root
        for segment in segments:
            if segment == "*":
                node.wildcard = found
                return
            if segment.startswith("{"):
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.static.setdefault(segment, _Node())
        node.match = found

    def match(self, path: str) -> RouteMatch | None:
        """The most specific route for a (decoded, normalised) path, or None."""
        found = self._static.get(path)
        if found is not None:
            return found
        if path.startswith("/internal/") or path == "/internal":
            return None
        return _walk(self._root, path.strip("/").split("/"), 0)


def _walk(node: _Node, segments: list[str], index: int) -> RouteMatch | None:
    if index == len(segments):
        return node.match or node.wildcard
    segment = segments[index]
    child = node.static.get(segment)
    if child is not None:
        found = _walk(child, segments, index + 1)
        if found is not None:
            return found
    if node.param is not None and segment:
        found = _walk(node.param, segments, index + 1)
        if found is not None:
            return found
    return node.wildcard


def _error_location(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in error["loc"]) or "entry"
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)


def parse_route_table(
    data: Any,
    *,
    upstreams: set[str],
    local_handlers: set[str],
    source: str = "<memory>",
    cache_policy: Any = None,
    rate_limit_config: Any = None,
) -> RouteTable:
    """Validate a loaded YAML document into a `RouteTable`; errors name the bad entry.

    `cache_policy` / `rate_limit_config` are the pydantic models of the cache and rate-limit
    modules; when given, every route's `cache:` mapping and the `rate_limits:` section are
    validated by them at load time, so a bad policy fails the load like any other mistake.
    """
    if not isinstance(data, dict):
        raise RouteTableError(f"{source}: expected a mapping with a 'routes' list")
    try:
        doc = RouteFile.model_validate(data)
    except ValidationError as exc:
        raise RouteTableError(f"{source}: {_error_location(exc)}") from None
    rate_limits: Any = doc.rate_limits
    if rate_limit_config is not None:
        try:
            rate_limits = rate_limit_config.model_validate(doc.rate_limits or {})
        except ValidationError as exc:
            raise RouteTableError(f"{source}: rate_limits: {_error_location(exc)}") from None
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for index, raw in enumerate(doc.routes):
        name = f"routes[{index}]"
        if "path" in raw:
            name += f" ({raw.get('path')} {','.join(map(str, raw.get('methods') or []))})"
        try:
            spec = RouteSpec.model_validate(raw)
        except ValidationError as exc:
            raise RouteTableError(f"{source}: {name}: {_error_location(exc)}") from None
        if spec.upstream == LOCAL_UPSTREAM:
            if spec.handler not in local_handlers:
                raise RouteTableError(
                    f"{source}: {name}: handler must be one of {sorted(local_handlers)}"
                )
        elif spec.upstream not in upstreams:
            raise RouteTableError(
                f"{source}: {name}: unknown upstream {spec.upstream!r} "
                f"(known: {sorted([*upstreams, LOCAL_UPSTREAM])})"
            )
        if spec.auth == "none" and spec.scopes:
            raise RouteTableError(f"{source}: {name}: scopes need auth required or optional")
        cache: Any = spec.cache
        if cache_policy is not None and spec.cache is not None:
            try:
                cache = cache_policy.model_validate(spec.cache)
            except ValidationError as exc:
                raise RouteTableError(f"{source}: {name}: cache: {_error_location(exc)}") from None
        policies = getattr(rate_limits, "policies", None)
        if spec.rate is not None and isinstance(policies, dict) and spec.rate not in policies:
            raise RouteTableError(
                f"{source}: {name}: unknown rate policy {spec.rate!r} (known: {sorted(policies)})"
            )
        normalised = _PARAM.sub("{}", spec.path)
        for method in spec.methods:
            other = seen.get((normalised, method))
            if other is not None:
                raise RouteTableError(f"{source}: {name}: {method} {spec.path} duplicates {other}")
            seen[(normalised, method)] = name
        timeout = spec.timeout or doc.defaults.timeout
        routes.append(
            Route(
                template=spec.path,
                methods=frozenset(spec.methods),
                upstream=spec.upstream,
                handler=spec.handler,
                auth=spec.auth,
                scopes=tuple(spec.scopes),
                api_keys=spec.api_keys,
                timeout=timeout,
                # sock_read bounds time-to-first-byte and every gap while streaming, without
                # capping the length of a large download the way `total` would.
                client_timeout=ClientTimeout(
                    total=None, sock_connect=min(timeout, 5.0), sock_read=timeout
                ),
                retries=doc.defaults.retries if spec.retries is None else spec.retries,
                body_limit=doc.defaults.body_limit if spec.body_limit is None else spec.body_limit,
                websocket=spec.websocket,
                rate=spec.rate,
                cache=cache,
                summary=spec.summary,
                params=tuple(_PARAM.findall(spec.path)),
            )
        )
    table = RouteTable(routes, rate_limits=rate_limits, source=source)
    table.rate_limits_raw = doc.rate_limits or {}
    return table


def load_route_table(
    path: Path,
    *,
    upstreams: set[str],
    local_handlers: set[str],
    cache_policy: Any = None,
    rate_limit_config: Any = None,
) -> RouteTable:
    """Read and validate a routes.yaml file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RouteTableError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RouteTableError(f"{path}: not valid YAML: {exc}") from None
    return parse_route_table(
        data,
        upstreams=upstreams,
        local_handlers=local_handlers,
        source=str(path),
        cache_policy=cache_policy,
        rate_limit_config=rate_limit_config,
    )
