"""Bad configuration fails start-up with one clear line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from libs.common.settings import DEV_INTERNAL_SECRET, BaseServiceSettings, load_settings
from services.users.settings import Settings as UsersSettings


def test_bad_port_names_the_variable_and_exits_nonzero() -> None:
    env = {**os.environ, "PORTICO_USERS_PORT": "abc"}
    result = subprocess.run(
        [sys.executable, "-m", "services.users"], env=env, capture_output=True, timeout=60
    )
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "PORTICO_USERS_PORT" in lines[0]
    assert "Traceback" not in result.stderr.decode()


def test_env_prefix_and_shared_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTICO_USERS_PORT", "9999")
    monkeypatch.setenv("MONGODB_URL", "mongodb://elsewhere:1/")
    settings = load_settings(UsersSettings)
    assert settings.port == 9999
    assert settings.mongodb_url == "mongodb://elsewhere:1/"
    assert settings.mongodb_database == "portico_users"


def test_default_secret_refused_in_production(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(BaseServiceSettings, environment="production")
    err = capsys.readouterr().err
    assert "internal_secret" in err or "INTERNAL_SECRET" in err
    assert DEV_INTERNAL_SECRET not in err
    ok = load_settings(
        BaseServiceSettings, environment="production", internal_secret=SecretStr("s" * 40)
    )
    assert ok.environment == "production"
