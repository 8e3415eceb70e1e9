"""The signed identity assertion, and redaction of secrets in logs."""

from __future__ import annotations

import json
import time

import pytest

from libs.common.identity import IdentityError, Principal, sign_identity, verify_identity
from libs.common.logging import configure_logging, get_logger, mask_url

SECRET = "s" * 40


def test_round_trip_keeps_every_field() -> None:
    who = Principal(
        id="u1", kind="api_key", roles=("user",), scopes=("files:read",), tier="pro", key_id="k1"
    )
    assert verify_identity(sign_identity(who, SECRET), SECRET) == who


def test_tampered_payload_is_rejected() -> None:
    token = sign_identity(Principal(id="u1"), SECRET)
    version, body, mac = token.split(".")
    forged_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    with pytest.raises(IdentityError):
        verify_identity(f"{version}.{forged_body}.{mac}", SECRET)


def test_expired_assertion_is_rejected() -> None:
    token = sign_identity(Principal(id="u1"), SECRET, ttl=10)
    with pytest.raises(IdentityError):
        verify_identity(token, SECRET, now=time.time() + 11)


@pytest.mark.parametrize("garbage", ["", "v1", "v1.a.b.c", "v2.e30.AAAA", "v1.!!!.???"])
def test_garbage_is_rejected(garbage: str) -> None:
    with pytest.raises(IdentityError):
        verify_identity(garbage, SECRET)


def test_secrets_never_reach_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", json=True, service="t")
    get_logger("t").info(
        "login",
        password="hunter2-hunter2",
        refresh_token="rt-secret-value",
        api_key="pk_abc_secretsecret",
        url="amqp://guest:topsecret@broker:5672/",
        email="a@example.com",
    )
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    for secret in ("hunter2-hunter2", "rt-secret-value", "pk_abc_secretsecret", "topsecret"):
        assert secret not in out
    assert line["email"] == "a@example.com"
    assert mask_url("mongodb://u:p@h:1/db") == "mongodb://u:***@h:1/db"
