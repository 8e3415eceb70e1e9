"""What the fuzzer found, pinned as plain regression tests through the running platform."""

from __future__ import annotations

import pytest
import requests

from tests.e2e.fuzz.conftest import FuzzPrincipals
from tests.e2e.stack import Stack


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/orgs/H%0A%C2%AF/teams/x/members/y",
        "/api/v1/files/a%0Ab",
        "/api/v1/users/%0D%0A",
        "/nope%0A",
    ],
)
def test_paths_with_encoded_line_breaks_get_a_problem_not_plain_text(
    stack: Stack, fuzz_http: requests.Session, principals: FuzzPrincipals, path: str
) -> None:
    response = fuzz_http.delete(f"{stack.gateway}{path}", headers=principals.bearer, timeout=10)
    assert response.status_code in (404, 405)
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["X-Request-ID"]
    assert response.json()["code"] in ("NOT_FOUND", "METHOD_NOT_ALLOWED")


def test_a_multipart_part_with_a_broken_header_is_400_and_stores_nothing(
    stack: Stack, fuzz_http: requests.Session, principals: FuzzPrincipals
) -> None:
    files = f"{stack.gateway}/api/v1/files"
    before = fuzz_http.get(files, headers=principals.bearer, params={"limit": 100}, timeout=10)
    assert before.status_code == 200
    response = fuzz_http.post(
        files,
        headers={**principals.bearer, "Content-Type": "multipart/form-data; boundary=9cc6"},
        data=b"--9cc6\r\nFalse--9cc6--\r\n",
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "VALIDATION_FAILED"
    after = fuzz_http.get(files, headers=principals.bearer, params={"limit": 100}, timeout=10)
    assert after.json()["items"] == before.json()["items"]
