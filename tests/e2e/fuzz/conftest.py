"""Fixtures for fuzzing the gateway's public OpenAPI document against the running platform.

The fuzzer talks to the gateway from its own loopback address (127.0.0.2), so the per-IP
anonymous and login rate limits it spends are not the ones the other e2e tests of this worker
(which share the stack, from 127.0.0.1) need.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from requests.adapters import HTTPAdapter
from schemathesis import Config
from schemathesis.schemas import BaseSchema

from tests.e2e.stack import Stack

FUZZ_SOURCE_IP = "127.0.0.2"
PASSWORD = "a long enough passphrase 42"
ALL_SCOPES = ["users:read", "users:write", "orgs:read", "orgs:write", "files:read", "files:write"]


class _SourceAddressAdapter(HTTPAdapter):
    """Connects from a fixed local address."""

    def __init__(self, source: str) -> None:
        self._source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._source, 0)
        super().init_poolmanager(*args, **kwargs)


@dataclass(frozen=True)
class FuzzPrincipals:
    """Who the fuzzer calls as: a user (bearer), the same user's API key, and a throwaway user
    for the operations that end the caller's own session or account."""

    bearer: dict[str, str]
    api_key: dict[str, str]
    throwaway: dict[str, str]
    user_id: str
    org_id: str
    team_id: str
    file_id: str


def _session() -> requests.Session:
    session = requests.Session()
    adapter = _SourceAddressAdapter(FUZZ_SOURCE_IP)
    session.mount("http://", adapter)
    return session


def _user(session: requests.Session, gateway: str, name: str) -> dict[str, str]:
    email = f"fuzz-{name}-{uuid.uuid4().hex[:8]}@example.com"
    created = session.post(
        f"{gateway}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": name},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    login = session.post(
        f"{gateway}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=10
    )
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


@pytest.fixture(scope="session")
def fuzz_http() -> Iterator[requests.Session]:
    with _session() as session:
        yield session


@pytest.fixture(scope="session")
def principals(stack: Stack, fuzz_http: requests.Session) -> FuzzPrincipals:
    gw = stack.gateway
    bearer = _user(fuzz_http, gw, "Fuzz")
    throwaway = _user(fuzz_http, gw, "Throwaway")
    key = fuzz_http.post(
        f"{gw}/api/v1/api-keys", headers=bearer, json={"name": "fuzz", "scopes": ALL_SCOPES},
        timeout=10,
    )  # fmt: skip
    assert key.status_code == 201, key.text
    org = fuzz_http.post(
        f"{gw}/api/v1/orgs", headers=bearer,
        json={"name": "Fuzz", "slug": f"fuzz-{uuid.uuid4().hex[:8]}"}, timeout=10,
    )  # fmt: skip
    assert org.status_code == 201, org.text
    team = fuzz_http.post(
        f"{gw}/api/v1/orgs/{org.json()['id']}/teams", headers=bearer, json={"name": "Fuzzers"},
        timeout=10,
    )  # fmt: skip
    assert team.status_code == 201, team.text
    me = fuzz_http.get(f"{gw}/api/v1/users/me", headers=bearer, timeout=10)
    assert me.status_code == 200, me.text
    upload = fuzz_http.post(
        f"{gw}/api/v1/files", headers={**bearer, "Content-Type": "text/plain"},
        params={"name": "fuzz.txt"}, data=b"fuzz me\n", timeout=10,
    )  # fmt: skip
    assert upload.status_code == 201, upload.text
    return FuzzPrincipals(
        bearer=bearer,
        api_key={"X-API-Key": key.json()["key"]},
        throwaway=throwaway,
        user_id=me.json()["id"],
        org_id=org.json()["id"],
        team_id=team.json()["id"],
        file_id=upload.json()["id"],
    )


@pytest.fixture(scope="session")
def gateway_openapi(stack: Stack, fuzz_http: requests.Session) -> dict[str, Any]:
    response = fuzz_http.get(f"{stack.gateway}/openapi.json", timeout=10)
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


@pytest.fixture(scope="session")
def api_schema(stack: Stack, gateway_openapi: dict[str, Any]) -> BaseSchema:
    config = Config.from_dict(
        {
            "base-url": stack.gateway,
            "generation": {
                "max-examples": 4,
                "deterministic": True,
                "database": "none",
                "with-security-parameters": False,
            },
        }
    )
    return schemathesis.openapi.from_dict(gateway_openapi, config=config)
