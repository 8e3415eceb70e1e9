"""Fixtures for the deployment-artifact tests: the check script, loaded from scripts/."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def check_deploy() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_deploy", ROOT / "scripts" / "check_deploy.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_deploy"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tools(check_deploy: ModuleType) -> None:
    """The external tools `make deploy-tools` installs; these tests need them."""
    missing = [t for t in ("docker-compose", "promtool") if not shutil.which(t)]
    kubectl = (Path(sys.executable).parent / "kubectl").exists() or shutil.which("kubectl")
    if missing or not kubectl:
        pytest.fail(f"deployment tools missing ({missing or ['kubectl']}): run `make deploy-tools`")


@pytest.fixture
def deploy_copy(tmp_path: Path, check_deploy: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch copy of deploy/ the check script reads instead of the real one."""
    copy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", copy)
    monkeypatch.setattr(check_deploy, "DEPLOY", copy)
    monkeypatch.setattr(check_deploy, "ROOT", tmp_path)
    return copy
