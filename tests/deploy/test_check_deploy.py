"""The deployment artifacts validate, and the validation catches what it claims to catch."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (service) (rate(http_requests_total{status=~"5.."}[5m]))'
            " / sum by (service) (rate(http_requests_total[5m])) > 0.05",
            {"http_requests_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (job, le) "
            "(rate(event_consume_lag_seconds_bucket[$__rate_interval]))) > 30",
            {"event_consume_lag_seconds_bucket"},
        ),
        (
            "sum by (job) (outbox_pending) > 100 and sum by (job) (delta(outbox_pending[10m])) > 0",
            {"outbox_pending"},
        ),
        (
            'max by (upstream) (gateway_circuit_state{upstream="users"}) == 1',
            {"gateway_circuit_state"},
        ),
        ("up unless on (instance) nope_total offset 5m", {"up", "nope_total"}),
    ],
)
def test_metric_names_are_extracted_from_promql(
    check_deploy: ModuleType, expr: str, names: set[str]
) -> None:
    assert check_deploy.metric_names(expr) == names


def test_dashboards_and_rules_query_only_exported_metrics(check_deploy: ModuleType) -> None:
    refs = check_deploy.referenced_metrics()
    used = {fam for names in refs.values() for fams in names.values() for fam in fams}
    unknown = {n for names in refs.values() for n, fams in names.items() if not fams}
    assert unknown == set()
    # the three dashboards and the rules together cover every exported family
    assert used == set(check_deploy.exported_metrics())
    assert check_deploy.check_metrics().startswith("4 files")


def test_list_metrics_prints_machine_readable_families(
    check_deploy: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_deploy.main(["--list-metrics"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "gateway_circuit_state" in listed["families"]
    assert "http_request_duration_seconds" in listed["families"]
    assert "deploy/prometheus/rules/portico.yml" in listed["by_file"]


def test_a_dashboard_querying_an_unexported_metric_fails(
    check_deploy: ModuleType, deploy_copy: Path
) -> None:
    path = deploy_copy / "grafana" / "dashboards" / "portico-gateway.json"
    dash = json.loads(path.read_text())
    dash["panels"][0]["targets"][0]["expr"] = "sum(rate(gateway_made_up_total[5m]))"
    path.write_text(json.dumps(dash))
    with pytest.raises(check_deploy.CheckFailed, match="gateway_made_up_total"):
        check_deploy.check_metrics()


def test_a_rule_querying_an_unexported_metric_fails(
    check_deploy: ModuleType, deploy_copy: Path
) -> None:
    path = deploy_copy / "prometheus" / "rules" / "portico.yml"
    path.write_text(path.read_text().replace("outbox_pending", "outbox_backlog"))
    with pytest.raises(check_deploy.CheckFailed, match="outbox_backlog"):
        check_deploy.check_metrics()


def test_a_panel_without_query_fails(check_deploy: ModuleType, deploy_copy: Path) -> None:
    path = deploy_copy / "grafana" / "dashboards" / "portico-events.json"
    dash = json.loads(path.read_text())
    dash["panels"][1]["targets"] = []
    path.write_text(json.dumps(dash))
    with pytest.raises(check_deploy.CheckFailed, match="has no query"):
        check_deploy.check_dashboards()


@pytest.mark.usefixtures("tools")
def test_compose_renders_and_prometheus_scrapes_every_process(check_deploy: ModuleType) -> None:
    assert "docker-compose config ok" in check_deploy.check_compose()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["gateway"]["deploy"]["replicas"] == 2
    assert {"mongo", "redis", "rabbitmq", "minio", "minio-init", "prometheus", "grafana"} <= set(
        compose["services"]
    )


@pytest.mark.usefixtures("tools")
def test_prometheus_rules_pass_promtool_and_every_alert_has_a_test(
    check_deploy: ModuleType,
) -> None:
    assert check_deploy.check_rules() == "7 alerts, each with a firing promtool test"


@pytest.mark.usefixtures("tools")
def test_a_wrong_promtool_expectation_fails(check_deploy: ModuleType, deploy_copy: Path) -> None:
    path = deploy_copy / "prometheus" / "tests" / "portico_test.yml"
    path.write_text(path.read_text().replace("queue: files.events", "queue: orgs.events", 1))
    with pytest.raises(check_deploy.CheckFailed, match="promtool"):
        check_deploy.check_rules()


@pytest.fixture(scope="module")
def rendered(check_deploy: ModuleType, tools: None) -> dict[str, list[dict[str, Any]]]:
    return {overlay: check_deploy.render(overlay) for overlay in check_deploy.OVERLAYS}


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_every_overlay_renders_schema_valid(
    check_deploy: ModuleType, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    for overlay, docs in rendered.items():
        assert check_deploy.validate_schema(docs, overlay) > 20
        check_deploy.check_workloads(docs, overlay)
    prod_kinds = {d["kind"] for d in rendered["prod"]}
    assert {"RabbitmqCluster", "MongoDBCommunity", "StatefulSet", "ServiceMonitor"} <= prod_kinds
    assert _find(rendered["prod"], "RabbitmqCluster", "portico-rabbitmq")["spec"]["replicas"] == 3
    assert _find(rendered["prod"], "Deployment", "gateway")["spec"]["replicas"] == 4
    assert _find(rendered["dev"], "Deployment", "gateway")["spec"]["replicas"] == 1
    assert {
        d["metadata"].get("namespace") for d in rendered["prod"] if d["kind"] != "Namespace"
    } == {"portico"}


def test_schema_validation_is_strict(
    check_deploy: ModuleType, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    bad = copy.deepcopy(_find(rendered["dev"], "Deployment", "users"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(check_deploy.CheckFailed, match="Deployment/users"):
        check_deploy.validate_schema([bad], "dev")
    unknown_crd = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(check_deploy.CheckFailed, match="Widget"):
        check_deploy.validate_schema([unknown_crd], "dev")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, p: c["lifecycle"]["preStop"]["exec"].update(command=["sleep", "3"]), "preStop"),
        (lambda c, p: p.update(terminationGracePeriodSeconds=10), "terminationGracePeriod"),
        (lambda c, p: c["securityContext"].update(readOnlyRootFilesystem=False), "read-only"),
        (lambda c, p: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
        (lambda c, p: p["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda c, p: c["readinessProbe"]["httpGet"].update(path="/healthz"), "readiness"),
        (lambda c, p: c["env"][0].update(value="127.0.0.1"), "HOST must be 0.0.0.0"),
        (lambda c, p: c.update(volumeMounts=[]), "/tmp"),
    ],
)
def test_workload_rules_catch_unsafe_deployments(
    check_deploy: ModuleType,
    rendered: dict[str, list[dict[str, Any]]],
    mutate: Any,
    message: str,
) -> None:
    docs = copy.deepcopy(rendered["prod"])
    pod = _find(docs, "Deployment", "files")["spec"]["template"]["spec"]
    mutate(pod["containers"][0], pod)
    with pytest.raises(check_deploy.CheckFailed, match=message):
        check_deploy.check_workloads(docs, "prod")


def test_a_real_looking_secret_is_refused(
    check_deploy: ModuleType, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = copy.deepcopy(rendered["dev"])
    _find(docs, "Secret", "portico-secrets")["stringData"]["PORTICO_INTERNAL_SECRET"] = "x" * 40
    with pytest.raises(check_deploy.CheckFailed, match="not a placeholder"):
        check_deploy.check_workloads(docs, "dev")


def test_only_the_gateway_is_behind_the_ingress(
    check_deploy: ModuleType, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = copy.deepcopy(rendered["dev"])
    ingress = _find(docs, "Ingress", "gateway")
    ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "users"
    with pytest.raises(check_deploy.CheckFailed, match="only the gateway"):
        check_deploy.check_workloads(docs, "dev")
    policy = _find(rendered["dev"], "NetworkPolicy", "users-ingress")
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "api"}}} in sources
    assert not any("ingress-nginx" in json.dumps(peer) for peer in sources)


@pytest.fixture
def dockerfile(tmp_path: Path, check_deploy: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("Dockerfile", ".dockerignore"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    monkeypatch.setattr(check_deploy, "ROOT", tmp_path)
    return tmp_path / "Dockerfile"


def test_dockerfile_is_multistage_non_root_with_healthcheck(
    check_deploy: ModuleType, dockerfile: Path
) -> None:
    assert check_deploy.check_dockerfile().startswith("2 stages, non-root user 10001")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("USER 10001:10001", "USER root", "non-root USER"),
        ("USER 10001:10001", "", "non-root USER"),
        (
            "WORKDIR /app\n",
            "WORKDIR /app\nRUN apt-get install -y gcc\n",
            "builder stage",
        ),
        ("/healthz", "/", "HEALTHCHECK"),
        ("FROM ${PYTHON_IMAGE} AS builder", "FROM python:3.12 AS builder", "PYTHON_IMAGE"),
    ],
)
def test_dockerfile_mistakes_are_caught(
    check_deploy: ModuleType, dockerfile: Path, old: str, new: str, message: str
) -> None:
    text = dockerfile.read_text()
    assert old in text
    dockerfile.write_text(text.replace(old, new))
    with pytest.raises(check_deploy.CheckFailed, match=message):
        check_deploy.check_dockerfile()


def test_every_contracted_metric_is_declared_in_our_code(check_deploy: ModuleType) -> None:
    """deploy/metrics.yaml matches the metrics our packages register (name and type). Whether a
    running process really exports them is the live-scrape test's job."""
    import importlib
    import pkgutil

    from prometheus_client import REGISTRY

    for package in ("libs", "gateway", "services"):
        for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it would start a server
                importlib.import_module(info.name)
    declared = {}
    for family in REGISTRY.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        declared[name] = family.type
    contract = check_deploy.exported_metrics()
    assert {name: declared.get(name) for name in contract} == contract
