"""Cross-tenant isolation (404 everywhere), unauthenticated calls, hostile input, and the
service's OpenAPI document."""

from __future__ import annotations

import orjson
import pytest
from openapi_spec_validator import validate

from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity
from tests.conftest import TEST_SECRET
from tests.services.orgs.conftest import Api


async def _org_b(api: Api) -> dict[str, str]:
    owner_b, member_b = await api.user(), await api.user("b-member@example.com")
    org_b = await api.org(owner_b, slug="org-b")
    await api.join(org_b, member_b)
    _, team, _ = await api.call("POST", f"/api/v1/orgs/{org_b}/teams", owner_b, {"name": "B"})
    await api.call("PUT", f"/api/v1/orgs/{org_b}/teams/{team['id']}/members/{member_b}", owner_b)
    await api.invite(org_b, owner_b, "pending@example.com")
    invitation = await api.db["invitations"].find_one({"email": "pending@example.com"})
    return {
        "org": org_b,
        "owner": owner_b,
        "member": member_b,
        "team": team["id"],
        "invitation": str(invitation["_id"]),
    }


def _every_org_route(b: dict[str, str]) -> list[tuple[str, str, object]]:
    org = f"/api/v1/orgs/{b['org']}"
    team = f"{org}/teams/{b['team']}"
    return [
        ("GET", org, None),
        ("PATCH", org, {"name": "pwned"}),
        ("DELETE", org, None),
        ("GET", f"{org}/members", None),
        ("PATCH", f"{org}/members/{b['member']}", {"role": "admin"}),
        ("DELETE", f"{org}/members/{b['member']}", None),
        ("POST", f"{org}/invitations", {"email": "x@example.com", "role": "owner"}),
        ("GET", f"{org}/invitations", None),
        ("DELETE", f"{org}/invitations/{b['invitation']}", None),
        ("POST", f"{org}/teams", {"name": "evil"}),
        ("GET", f"{org}/teams", None),
        ("GET", team, None),
        ("PATCH", team, {"name": "pwned"}),
        ("DELETE", team, None),
        ("GET", f"{team}/members", None),
        ("PUT", f"{team}/members/{b['member']}", None),
        ("DELETE", f"{team}/members/{b['member']}", None),
    ]


async def _snapshot(api: Api) -> dict[str, list[object]]:
    out = {}
    for name in ("orgs", "memberships", "teams", "team_members", "invitations", "outbox"):
        out[name] = await api.db[name].find({}, {"rev": 0}).sort("_id", 1).to_list()
    return out


async def test_owner_of_org_a_gets_404_on_everything_of_org_b(api: Api) -> None:
    b = await _org_b(api)
    owner_a = await api.user()
    await api.org(owner_a, slug="org-a")
    before = await _snapshot(api)
    for method, path, body in _every_org_route(b):
        status, answer, headers = await api.call(method, path, owner_a, body)
        assert (status, answer["code"]) == (404, "NOT_FOUND"), (method, path)
        assert "Surrogate-Key" not in headers
        assert b["org"] not in answer["detail"]
    assert await _snapshot(api) == before
    _, mine, _ = await api.call("GET", "/api/v1/orgs", owner_a)
    assert [o["slug"] for o in mine["items"]] == ["org-a"]


async def test_unauthenticated_and_forged_callers_get_401_everywhere(api: Api) -> None:
    b = await _org_b(api)
    before = await _snapshot(api)
    routes = [
        *_every_org_route(b),
        ("POST", "/api/v1/orgs", {"name": "x", "slug": "xyz"}),
        ("GET", "/api/v1/orgs", None),
        ("POST", "/api/v1/invitations/whatever/accept", None),
    ]
    forged = {IDENTITY_HEADER: sign_identity(Principal(id=b["owner"]), "not-the-secret")}
    for headers in ({}, forged, {"X-User-Id": b["owner"], "X-Principal": b["owner"]}):
        for method, path, body in routes:
            status, answer, response_headers = await api.call(
                method, path, None, body, headers=headers
            )
            assert (status, answer["code"]) == (401, "UNAUTHENTICATED"), (method, path)
            assert "WWW-Authenticate" in response_headers
    assert await _snapshot(api) == before


async def test_service_identities_are_not_users(api: Api) -> None:
    service = {IDENTITY_HEADER: sign_identity(Principal(id="gateway", kind="service"), TEST_SECRET)}
    status, body, _ = await api.call(
        "POST", "/api/v1/orgs", None, {"name": "x", "slug": "xyz"}, headers=service
    )
    assert (status, body["code"]) == (403, "FORBIDDEN")
    assert await api.db["orgs"].count_documents({}) == 0


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'{"name": "x", "slug": "ab"', "application/json", 400),
        (b"[]", "application/json", 422),
        (b'"acme"', "application/json", 422),
        (b"name=x&slug=acme", "application/x-www-form-urlencoded", 415),
        (b'{"name": "x", "slug": "acme", "pad": "' + b"a" * (1024 * 1024) + b'"}',
         "application/json", 413),
    ],
)  # fmt: skip
async def test_malformed_bodies_are_refused(
    api: Api, data: bytes, content_type: str, status: int
) -> None:
    got, body, headers = await api.call(
        "POST", "/api/v1/orgs", await api.user(), data=data,
        headers={"Content-Type": content_type},
    )  # fmt: skip
    assert got == status
    assert headers["Content-Type"] == "application/problem+json"
    assert set(body) >= {"type", "title", "status", "detail", "code", "request_id"}
    assert await api.db["orgs"].count_documents({}) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"name": {"$gt": ""}, "slug": "acme"},
        {"name": "x", "slug": {"$gt": ""}},
        {"name": "x", "slug": {"$regex": ".*"}},
        {"name": ["x"], "slug": "acme"},
        {"name": "x", "slug": "acme", "$where": "1"},
        {"name": "x", "slug": "acme", "id": "000000000000000000000000"},
        {"name": "x", "slug": "acme", "role": "owner"},
    ],
)
async def test_operator_injection_and_mass_assignment_in_bodies_are_refused(
    api: Api, body: dict[str, object]
) -> None:
    status, answer, _ = await api.call("POST", "/api/v1/orgs", await api.user(), body)
    assert (status, answer["code"]) == (422, "VALIDATION_FAILED")
    assert await api.db["orgs"].count_documents({}) == 0


async def test_operator_injection_in_paths_and_queries_finds_nothing(api: Api) -> None:
    b = await _org_b(api)
    outsider = await api.user()
    for path in (
        "/api/v1/orgs/%7B%22%24gt%22%3A%22%22%7D",
        "/api/v1/orgs/$gt",
        "/api/v1/orgs/000000000000000000000000",
        f"/api/v1/orgs/{b['org']}/members?user_id[$ne]=x",
    ):
        status, _, _ = await api.call("GET", path, outsider)
        assert status == 404, path
    status, body, _ = await api.call(
        "GET", "/api/v1/orgs?limit[$gt]=0&user_id[$ne]=nobody", outsider
    )
    assert (status, body["items"]) == (200, [])
    status, body, _ = await api.call(
        "PATCH", f"/api/v1/orgs/{b['org']}/members/%24ne", b["owner"], {"role": "admin"}
    )
    assert status == 404
    cursor = "eyIkZ3QiOiAiIn0"  # base64 of {"$gt": ""}
    status, body, _ = await api.call("GET", f"/api/v1/orgs?cursor={cursor}", b["owner"])
    assert (status, body["code"]) == (400, "VALIDATION_FAILED")
    status, body, _ = await api.call(
        "POST", "/api/v1/invitations/%7B%22%24ne%22%3Anull%7D/accept", b["member"]
    )
    assert status == 404
    assert (await api.roles(b["org"]))[b["member"]] == "member"


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    owner = await api.user()
    status, body, _ = await api.call("GET", "/api/v1/nope", owner)
    assert (status, body["code"]) == (404, "NOT_FOUND")
    status, body, headers = await api.call("PUT", "/api/v1/orgs", owner, {})
    assert (status, body["code"]) == (405, "METHOD_NOT_ALLOWED")
    assert "GET" in headers["Allow"]


async def test_openapi_document_is_valid_and_covers_the_contract(api: Api) -> None:
    async with api.client.get("/openapi.json") as response:
        assert response.status == 200
        document = orjson.loads(await response.read())
    validate(document)
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for path, methods in {
        "/api/v1/orgs": {"get", "post"},
        "/api/v1/orgs/{org_id}": {"get", "patch", "delete"},
        "/api/v1/orgs/{org_id}/members": {"get"},
        "/api/v1/orgs/{org_id}/members/{user_id}": {"patch", "delete"},
        "/api/v1/orgs/{org_id}/invitations": {"get", "post"},
        "/api/v1/orgs/{org_id}/invitations/{invitation_id}": {"delete"},
        "/api/v1/invitations/{token}/accept": {"post"},
        "/api/v1/orgs/{org_id}/teams": {"get", "post"},
        "/api/v1/orgs/{org_id}/teams/{team_id}": {"get", "patch", "delete"},
        "/api/v1/orgs/{org_id}/teams/{team_id}/members/{user_id}": {"put", "delete"},
    }.items():
        assert set(paths[path]) >= methods, path
    org_create = document["components"]["schemas"]["OrgCreate"]
    assert org_create["additionalProperties"] is False
    assert set(org_create["required"]) == {"name", "slug"}
