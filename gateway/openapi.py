"""`GET /openapi.json`: one OpenAPI 3.1 document for every public route, merged from each
service's own `/openapi.json` (fetched, cached, a service being down only loses its details);
`GET /docs`: a small self-contained page rendering it (no CDN is needed)."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from typing import Any

import aiohttp
import orjson
import structlog

from gateway.routing import LOCAL_UPSTREAM, RouteTable
from gateway.upstreams import UpstreamPools

__all__ = ["DOCS_HTML", "OpenApiAggregator"]

_log = structlog.get_logger("portico.gateway.openapi")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_PROBLEM_RESPONSE = {
    "description": "Problem details (RFC 9457)",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_OWN: dict[str, dict[str, Any]] = {
    "/healthz": {"get": {"summary": "Liveness", "tags": ["gateway"],
                         "responses": {"200": {"description": "alive"}}}},
    "/readyz": {"get": {"summary": "Readiness", "tags": ["gateway"],
                        "responses": {"200": {"description": "ready"},
                                      "503": _PROBLEM_RESPONSE}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["gateway"],
                         "responses": {"200": {"description": "text exposition format"}}}},
    "/openapi.json": {"get": {"summary": "This document", "tags": ["gateway"],
                              "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    "/docs": {"get": {"summary": "API documentation page", "tags": ["gateway"],
                      "responses": {"200": {"description": "HTML"}}}},
}  # fmt: skip


class OpenApiAggregator:
    """Fetches and caches each service's spec; merges them under the public route table."""

    def __init__(self, pools: UpstreamPools, *, ttl: float, version: str = "1.0.0") -> None:
        self.pools = pools
        self.ttl = ttl
        self.version = version
        self._specs: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = asyncio.Lock()

    async def _fetch(self, name: str) -> dict[str, Any] | None:
        upstream = self.pools[name]
        instance = upstream.pick()
        if instance is None or upstream.session is None:
            return None
        try:
            async with upstream.session.get(
                f"{instance.base}/openapi.json", timeout=aiohttp.ClientTimeout(total=3)
            ) as response:
                if response.status != 200:
                    return None
                spec = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            _log.warning("openapi fetch failed", upstream=name, error=type(exc).__name__)
            return None
        return spec if isinstance(spec, dict) else None

    async def _spec(self, name: str) -> dict[str, Any] | None:
        cached = self._specs.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        spec = await self._fetch(name)
        # A failed fetch is retried sooner than a good spec is refreshed.
        stamp = time.monotonic() - (0 if spec is not None else self.ttl * 0.8)
        self._specs[name] = (stamp, spec)
        return spec

    async def document(self, table: RouteTable) -> dict[str, Any]:
        async with self._lock:
            names = sorted({r.upstream for r in table.routes if r.upstream != LOCAL_UPSTREAM})
            specs = dict(zip(names, await asyncio.gather(*(self._spec(n) for n in names)),
                             strict=True))  # fmt: skip
        return merge(table, specs, version=self.version)


def _service_operation(spec: dict[str, Any] | None, template: str, method: str) -> Any:
    if not spec:
        return None
    paths = spec.get("paths")
    if not isinstance(paths, dict):
        return None
    wanted = _PARAM.sub("{}", template)
    for path, item in paths.items():
        if isinstance(item, dict) and _PARAM.sub("{}", str(path)) == wanted:
            operation = item.get(method.lower())
            if isinstance(operation, dict):
                # Parameter names may differ between the service and the route table.
                return _rename_params(copy.deepcopy(operation), str(path), template)
    return None


def _rename_params(operation: dict[str, Any], service_path: str, template: str) -> dict[str, Any]:
    renames = dict(zip(_PARAM.findall(service_path), _PARAM.findall(template), strict=False))
    for parameter in operation.get("parameters", []) or []:
        if isinstance(parameter, dict) and parameter.get("in") == "path":
            parameter["name"] = renames.get(parameter.get("name"), parameter.get("name"))
    return operation


def _common_errors(upstream: str, auth: str, operation: dict[str, Any]) -> list[str]:
    """Error statuses an operation can answer beyond what its service documents: the gateway's
    own (auth, scopes, rate limits, body limit, unreachable or slow upstream) and those of the
    request parsing every service shares (libs/common/http.py: malformed JSON 400, body too
    large 413, wrong media type 415, invalid body or query 422)."""
    statuses = ["429"]
    if auth == "required":
        statuses += ["401", "403"]
    if upstream != LOCAL_UPSTREAM:
        statuses += ["503", "504"]
    if "requestBody" in operation:
        statuses += ["400", "413", "415", "422"]
    parameters = [p for p in operation.get("parameters", []) or [] if isinstance(p, dict)]
    if any(p.get("in") == "query" for p in parameters):
        statuses += ["400", "422"]
    if any(p.get("in") == "path" for p in parameters):
        statuses += ["404"]
    return statuses


def merge(table: RouteTable, specs: dict[str, dict[str, Any] | None], *,
          version: str) -> dict[str, Any]:  # fmt: skip
    """The public OpenAPI 3.1 document for `table`, with operations taken from `specs`."""
    schemas: dict[str, Any] = {"Problem": _PROBLEM}
    for spec in specs.values():
        components = (spec or {}).get("components", {})
        found = components.get("schemas", {}) if isinstance(components, dict) else {}
        if isinstance(found, dict):
            for name, schema in found.items():
                schemas.setdefault(str(name), schema)
    paths: dict[str, dict[str, Any]] = copy.deepcopy(_OWN)
    for route in table.routes:
        if "*" in route.template:
            continue  # prefix routes have no single documented path
        item = paths.setdefault(route.template, {})
        for method in sorted(route.methods):
            operation = _service_operation(specs.get(route.upstream), route.template, method)
            if operation is None:
                operation = {
                    "summary": route.summary or f"{method} {route.template}",
                    "responses": {"default": _PROBLEM_RESPONSE},
                }
                if route.upstream == LOCAL_UPSTREAM:
                    operation["responses"] = {"200": {"description": "OK"},
                                              "default": _PROBLEM_RESPONSE}  # fmt: skip
            operation.setdefault("tags", [route.upstream])
            declared = {
                p.get("name") for p in operation.get("parameters", []) or [] if isinstance(p, dict)
            }
            for name in route.params:
                if name not in declared:
                    operation.setdefault("parameters", []).append(
                        {
                            "name": name,
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    )
            if route.auth == "required":
                operation["security"] = (
                    [{"bearer": []}, {"apiKey": []}] if route.api_keys else [{"bearer": []}]
                )
            elif route.auth == "optional":
                operation["security"] = [{}, {"bearer": []}, {"apiKey": []}]
            responses = operation.setdefault("responses", {})
            if not responses:
                responses["default"] = _PROBLEM_RESPONSE
            for status in _common_errors(route.upstream, route.auth, operation):
                responses.setdefault(status, _PROBLEM_RESPONSE)
            item[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Portico API",
            "version": version,
            "description": "Every public route, served through the Portico gateway.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Portico API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1000px;
  padding:1rem 2rem;color:#222}
h1{margin-bottom:.2rem} .op{border:1px solid #ddd;border-radius:6px;margin:.4rem 0}
.op summary{cursor:pointer;padding:.45rem .6rem;font-family:ui-monospace,monospace}
.m{display:inline-block;min-width:4.5rem;font-weight:700}
.GET{color:#0a6}.POST{color:#06c}.PUT,.PATCH{color:#b60}.DELETE{color:#c22}
pre{background:#f6f6f6;padding:.6rem;overflow:auto;margin:0 .6rem .6rem}
input{width:100%;padding:.4rem;margin:.6rem 0;font-size:15px}
</style></head><body>
<h1>Portico API</h1><p id="desc">Loading <a href="/openapi.json">/openapi.json</a>…</p>
<input id="q" placeholder="filter by path, method or tag">
<div id="ops"></div>
<script>
const ESC = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
const esc = s => String(s).replace(/[&<>"]/g, c => ESC[c]);
fetch("/openapi.json").then(r => r.json()).then(spec => {
  document.getElementById("desc").textContent = spec.info.description || "";
  const ops = [];
  for (const [path, item] of Object.entries(spec.paths))
    for (const [method, op] of Object.entries(item))
      ops.push({path, method: method.toUpperCase(), op});
  const render = q => {
    document.getElementById("ops").innerHTML = ops
      .filter(o => !q || (o.method + " " + o.path + " " + (o.op.tags || []).join(" "))
        .toLowerCase().includes(q.toLowerCase()))
      .map(o => `<details class="op"><summary><span class="m ${o.method}">${o.method}</span>` +
        `${esc(o.path)} — ${esc(o.op.summary || "")}</summary>` +
        `<pre>${esc(JSON.stringify(o.op, null, 2))}</pre></details>`).join("");
  };
  document.getElementById("q").oninput = e => render(e.target.value);
  render("");
});
</script></body></html>
"""
