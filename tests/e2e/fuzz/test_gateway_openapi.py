"""The gateway's `/openapi.json`: a valid OpenAPI 3.1 document covering every contract route, and
the running platform behaves as it says (schemathesis, bounded and deterministic so CI stays fast).

Checks per generated request: never a 5xx, the status code is one the operation documents, the
content type and the body match the documented response (problem+json for errors).
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.fuzz.conftest import FuzzPrincipals

# Every route of the public contract (shared/DESIGN.md) plus the gateway's own.
CONTRACT_ROUTES = """
GET /healthz
GET /readyz
GET /metrics
GET /openapi.json
GET /docs
GET /.well-known/jwks.json
POST /api/v1/auth/register
POST /api/v1/auth/login
POST /api/v1/auth/refresh
POST /api/v1/auth/logout
POST /api/v1/auth/password
GET /api/v1/auth/sessions
DELETE /api/v1/auth/sessions/{id}
POST /api/v1/auth/password-reset
POST /api/v1/auth/password-reset/confirm
GET /api/v1/users/me
PATCH /api/v1/users/me
DELETE /api/v1/users/me
GET /api/v1/users/{id}
GET /api/v1/users
POST /api/v1/users/batch
GET /api/v1/admin/users
PATCH /api/v1/admin/users/{id}
GET /api/v1/api-keys
POST /api/v1/api-keys
DELETE /api/v1/api-keys/{id}
PATCH /api/v1/admin/api-keys/{id}
GET /api/v1/usage
GET /api/v1/orgs
POST /api/v1/orgs
GET /api/v1/orgs/{org_id}
DELETE /api/v1/orgs/{org_id}
PATCH /api/v1/orgs/{org_id}
GET /api/v1/orgs/{org_id}/members
DELETE /api/v1/orgs/{org_id}/members/{user_id}
PATCH /api/v1/orgs/{org_id}/members/{user_id}
GET /api/v1/orgs/{org_id}/invitations
POST /api/v1/orgs/{org_id}/invitations
DELETE /api/v1/orgs/{org_id}/invitations/{id}
POST /api/v1/invitations/{token}/accept
GET /api/v1/orgs/{org_id}/teams
POST /api/v1/orgs/{org_id}/teams
GET /api/v1/orgs/{org_id}/teams/{team_id}
DELETE /api/v1/orgs/{org_id}/teams/{team_id}
PATCH /api/v1/orgs/{org_id}/teams/{team_id}
DELETE /api/v1/orgs/{org_id}/teams/{team_id}/members/{user_id}
PUT /api/v1/orgs/{org_id}/teams/{team_id}/members/{user_id}
GET /api/v1/files
POST /api/v1/files
GET /api/v1/files/{id}
DELETE /api/v1/files/{id}
GET /api/v1/files/{id}/content
POST /api/v1/files/{id}/url
"""

# Operations that end the caller's own session or account run as a throwaway user.
SELF_DESTRUCTIVE = {("POST", "/api/v1/auth/logout"), ("DELETE", "/api/v1/users/me")}
# The shared org, team and file stay: deleting them would turn every later example into a 404.
KEEP = {"/api/v1/orgs/{org_id}", "/api/v1/orgs/{org_id}/teams/{team_id}", "/api/v1/files/{id}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _shape(route: str) -> str:
    return re.sub(r"{[^}]+}", "{}", route)


def _documented(spec: dict[str, Any]) -> set[str]:
    return {
        f"{method.upper()} {re.sub(r'{[^}]+}', '{}', path)}"
        for path, item in spec["paths"].items()
        for method in item
    }


def test_openapi_is_valid_and_covers_every_contract_route(gateway_openapi: dict[str, Any]) -> None:
    validate(gateway_openapi)  # raises on any violation of the OpenAPI 3.1 schema
    assert gateway_openapi["openapi"].startswith("3.1")
    contract = {_shape(line) for line in CONTRACT_ROUTES.strip().splitlines()}
    missing = contract - _documented(gateway_openapi)
    assert not missing, f"contract routes missing from /openapi.json: {sorted(missing)}"


def test_every_operation_documents_its_errors_as_problem_json(
    gateway_openapi: dict[str, Any],
) -> None:
    for path, item in gateway_openapi["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert "application/problem+json" in response.get("content", {}), (
                        f"{method.upper()} {path} {status}"
                    )


def _headers(case: schemathesis.Case, who: FuzzPrincipals, as_key: bool) -> dict[str, str]:
    security = case.operation.definition.raw.get("security")
    if security == []:
        return {}
    if (case.method.upper(), case.path) in SELF_DESTRUCTIVE:
        return who.throwaway
    if as_key and any("apiKey" in requirement for requirement in security or []):
        return who.api_key
    return who.bearer


def _call(
    case: schemathesis.Case, session: requests.Session, headers: dict[str, str]
) -> schemathesis.Response:
    """Send `case`; a 429 with a short Retry-After is waited out once (the limiter is not what
    this test fuzzes, and the 429 itself is checked like every response)."""
    response = case.call(session=session, headers=headers, timeout=15)
    retry_after = response.headers.get("retry-after", ["0"])[0]
    if response.status_code == 429 and retry_after.isdigit() and int(retry_after) <= 2:
        case.validate_response(response, checks=CHECKS)
        time.sleep(int(retry_after) + 0.1)
        response = case.call(session=session, headers=headers, timeout=15)
    return response


FUZZ_SETTINGS = settings(
    max_examples=4,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows the raw example
    suppress_health_check=list(HealthCheck),
)
OPERATIONS = [tuple(line.split(" ", 1)) for line in CONTRACT_ROUTES.strip().splitlines()]


def _with_real_ids(case: schemathesis.Case, who: FuzzPrincipals) -> None:
    """Point the path at resources the caller really has, so the fuzzer gets past the 404s."""
    if case.method.upper() == "DELETE" and case.path in KEEP:
        return
    known = {"org_id": who.org_id, "team_id": who.team_id, "user_id": who.user_id}
    if case.path.startswith("/api/v1/files/"):
        known["id"] = who.file_id
    elif case.path.startswith("/api/v1/users/"):
        known["id"] = who.user_id
    for name in case.path_parameters or {}:
        if name in known:
            case.path_parameters[name] = known[name]


def _fuzz(
    api_schema: BaseSchema,
    method: str,
    path: str,
    who: FuzzPrincipals,
    session: requests.Session,
    *,
    as_key: bool,
) -> None:
    operation = api_schema[path][method]
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    sent = itertools.count()

    @FUZZ_SETTINGS
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        if next(sent) % 2 == 0:  # every other example, on the caller's real resources
            _with_real_ids(case, who)
        response = _call(case, session, _headers(case, who, as_key))
        case.validate_response(response, checks=CHECKS)

    run()


def _ids(operations: list[tuple[str, ...]]) -> list[str]:
    return [" ".join(o) for o in operations]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=_ids(OPERATIONS))
def test_gateway_conforms_to_its_openapi_with_a_token(
    method: str,
    path: str,
    api_schema: BaseSchema,
    principals: FuzzPrincipals,
    fuzz_http: requests.Session,
) -> None:
    _fuzz(api_schema, method, path, principals, fuzz_http, as_key=False)


# Routes that take API keys (the others answer 403 to a key, which the token run covers too).
KEY_OPERATIONS = [o for o in OPERATIONS if o[1].startswith("/api/v1/") and "auth" not in o[1]]


@pytest.mark.parametrize(("method", "path"), KEY_OPERATIONS, ids=_ids(KEY_OPERATIONS))
def test_gateway_conforms_to_its_openapi_with_an_api_key(
    method: str,
    path: str,
    api_schema: BaseSchema,
    principals: FuzzPrincipals,
    fuzz_http: requests.Session,
) -> None:
    _fuzz(api_schema, method, path, principals, fuzz_http, as_key=True)
