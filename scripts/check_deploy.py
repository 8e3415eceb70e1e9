"""Validate the deployment and observability artifacts offline (`make check-deploy`).

Runs the real tools: `docker-compose config`, `kubectl kustomize` for every overlay,
kubernetes-validate (strict) on what they render, `promtool check/test rules`, and checks that
Grafana dashboards and alert rules query only the metrics listed in deploy/metrics.yaml.

    python scripts/check_deploy.py                 # everything; exit 1 on the first failing group
    python scripts/check_deploy.py --list-metrics  # JSON: metric families dashboards/rules use
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "prod")
# Kubernetes version the rendered manifests are validated against (kubernetes-validate schemas).
KUBERNETES_VERSION = "1.33.0"
# Custom resources kubernetes-validate has no schema for; checked structurally below instead.
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"),
    ("mongodbcommunity.mongodb.com/v1", "MongoDBCommunity"),
}
PROCESSES = {"gateway": 8080, "users": 8081, "orgs": 8082, "files": 8083}

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2", "topk", "bottomk", "le",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class CheckFailed(Exception):
    """A deployment artifact is invalid; the message says which and why."""


# --- metric names ---------------------------------------------------------------------------------


def exported_metrics() -> dict[str, str]:
    """Metric family name -> type, from deploy/metrics.yaml."""
    doc = yaml.safe_load((DEPLOY / "metrics.yaml").read_text())
    return {m["name"]: m["type"] for m in doc["metrics"]}


def allowed_series(families: dict[str, str]) -> dict[str, str]:
    """Series name a query may use -> the family it belongs to."""
    series: dict[str, str] = {}
    for name, kind in families.items():
        if kind == "histogram":
            series.update({name + suffix: name for suffix in HISTOGRAM_SUFFIXES})
        else:
            series[name] = name
    return series


def metric_names(expr: str) -> set[str]:
    """The metric (series) names a PromQL expression or Grafana query selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range / subquery windows
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    # grouping clauses name labels, not metrics
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        after = text[match.end() :].lstrip()
        if after.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function call or a keyword
        if text[: match.start()].rstrip().endswith(("'", '"')):
            continue
        names.add(word)
    return names


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text in a Grafana dashboard: panel targets and templating queries."""
    queries = [
        n["expr"] for n in _walk(dashboard.get("panels", [])) if isinstance(n.get("expr"), str)
    ]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if var.get("type") != "query" or not isinstance(text, str):
            continue
        label_values = re.fullmatch(r"\s*label_values\((.*)\)\s*", text)
        query_result = re.fullmatch(r"\s*query_result\((.*)\)\s*", text)
        if label_values:  # label_values(metric, label) or label_values(label)
            if "," in label_values.group(1):
                queries.append(label_values.group(1).rsplit(",", 1)[0])
        else:
            queries.append(query_result.group(1) if query_result else text)
    return queries


def rule_queries(path: Path) -> list[str]:
    """Every `expr` of a Prometheus rule file."""
    doc = yaml.safe_load(path.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def referenced_metrics() -> dict[str, dict[str, list[str]]]:
    """Series names used by each dashboard / rule file: {file: {series: [families]}}."""
    series = allowed_series(exported_metrics())
    found: dict[str, dict[str, list[str]]] = {}
    sources: list[tuple[Path, list[str]]] = [
        (path, dashboard_queries(json.loads(path.read_text())))
        for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    ]
    sources += [
        (p, rule_queries(p)) for p in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    ]
    for path, queries in sources:
        names = set().union(*(metric_names(q) for q in queries)) if queries else set()
        found[str(path.relative_to(ROOT))] = {
            name: [series[name]] if name in series else [] for name in sorted(names)
        }
    return found


def check_metrics() -> str:
    refs = referenced_metrics()
    unknown = {f: sorted(n for n, fam in names.items() if not fam) for f, names in refs.items()}
    unknown = {f: names for f, names in unknown.items() if names}
    if unknown:
        raise CheckFailed(f"queries use metrics not in deploy/metrics.yaml: {unknown}")
    empty = [f for f, names in refs.items() if not names]
    if empty:
        raise CheckFailed(f"no metric found in {empty}")
    used = {fam for names in refs.values() for fams in names.values() for fam in fams}
    return f"{len(refs)} files query {len(used)} exported metric families, nothing else"


def check_dashboards() -> str:
    paths = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    uids = set()
    for path in paths:
        dash = json.loads(path.read_text())
        if not dash.get("uid") or dash["uid"] in uids or not dash.get("panels"):
            raise CheckFailed(f"{path.name}: needs a unique uid and panels")
        uids.add(dash["uid"])
        for panel in dash["panels"]:
            if not panel.get("targets") or any(not t.get("expr") for t in panel["targets"]):
                raise CheckFailed(f"{path.name}: panel {panel.get('title')!r} has no query")
            if panel.get("datasource", {}).get("uid") != "prometheus":
                raise CheckFailed(f"{path.name}: panel {panel.get('title')!r} not on Prometheus")
    expected = {"portico-overview", "portico-gateway", "portico-events"}
    if not expected <= uids:
        raise CheckFailed(f"missing dashboards: {sorted(expected - uids)}")
    return f"{len(paths)} dashboards parse"


# --- external tools -------------------------------------------------------------------------------


def tool(name: str) -> str:
    """The tool from the virtualenv (kubectl comes from a PyPI wheel) or PATH."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which(name)
    if not found:
        raise CheckFailed(f"{name} not found: run `make deploy-tools`")
    return found


def run(*args: str) -> str:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CheckFailed(f"`{' '.join(args)}` failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def tool_versions() -> str:
    """One line naming the versions of the tools the checks run."""
    import kubernetes_validate

    def first_line(name: str, *args: str) -> str:
        try:
            return f"{name} " + run(tool(name), *args).strip().splitlines()[0]
        except (CheckFailed, IndexError):
            return f"{name} missing"

    return "; ".join(
        [
            first_line("docker-compose", "version", "--short"),
            first_line("promtool", "--version"),
            first_line("kubectl", "version", "--client"),
            f"kubernetes-validate {kubernetes_validate.__version__} (schemas {KUBERNETES_VERSION})",
        ]
    )


def check_compose() -> str:
    run(tool("docker-compose"), "-f", "docker-compose.yml", "config", "-q")
    out = run(tool("docker-compose"), "-f", "docker-compose.yml", "config")
    services = yaml.safe_load(out)["services"]
    for name, port in PROCESSES.items():
        svc = services.get(name) or {}
        environ = svc.get("environment") or {}
        if environ.get(f"PORTICO_{name.upper()}_HOST") != "0.0.0.0":
            raise CheckFailed(f"compose {name}: PORTICO_{name.upper()}_HOST must be 0.0.0.0")
        if str(environ.get(f"PORTICO_{name.upper()}_PORT")) != str(port):
            raise CheckFailed(f"compose {name}: PORTICO_{name.upper()}_PORT must be {port}")
    if (services["gateway"].get("deploy") or {}).get("replicas") != 2:
        raise CheckFailed("compose gateway: 2 replicas expected")
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    if not set(PROCESSES) <= jobs:
        raise CheckFailed(f"compose prometheus does not scrape {sorted(set(PROCESSES) - jobs)}")
    run(tool("promtool"), "check", "config", "deploy/compose/prometheus.yml")
    return f"docker-compose config ok ({len(services)} services), prometheus config ok"


def check_dockerfile() -> str:
    """No engine runs here, so check the Dockerfile's promises by reading it."""
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM\s+", text)[1:]
    if len(stages) < 2:
        raise CheckFailed("Dockerfile: multi-stage build expected (builder + runtime)")
    final = stages[-1]
    # wheels built in one stage must match the interpreter of the other: one base for both
    if not all(stage.startswith("${PYTHON_IMAGE}") for stage in stages):
        raise CheckFailed("Dockerfile: every stage must be FROM ${PYTHON_IMAGE}")
    if not re.search(r"(?m)^ARG PYTHON_IMAGE=python:3\.11-slim", text):
        raise CheckFailed("Dockerfile: PYTHON_IMAGE must default to python:3.11-slim")
    if re.search(r"build-essential|gcc|apt-get install", final):
        raise CheckFailed("Dockerfile: compilers/apt installs belong in the builder stage")
    user = re.findall(r"(?m)^USER\s+(\S+)", final)
    if not user or user[-1].split(":")[0] in {"root", "0"}:
        raise CheckFailed("Dockerfile: the final stage must switch to a non-root USER")
    if not re.search(r"(?m)^HEALTHCHECK .*\n?.*CMD .*urllib.*/healthz", final):
        raise CheckFailed("Dockerfile: HEALTHCHECK must probe /healthz with the stdlib")
    ignored = set((ROOT / ".dockerignore").read_text().split())
    if not {".git", ".venv", ".env", "var"} <= ignored:
        raise CheckFailed(".dockerignore must exclude .git, .venv, .env and var")
    return f"{len(stages)} stages, non-root user {user[-1]}, HEALTHCHECK on /healthz"


def render(overlay: str) -> list[dict[str, Any]]:
    out = run(tool("kubectl"), "kustomize", f"deploy/k8s/overlays/{overlay}")
    return [doc for doc in yaml.safe_load_all(out) if doc]


def validate_schema(docs: Iterable[dict[str, Any]], overlay: str) -> int:
    import kubernetes_validate

    checked = 0
    for doc in docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = f"{overlay}: {kind}/{doc.get('metadata', {}).get('name')}"
        if (api, kind) in CRDS:
            if not doc.get("metadata", {}).get("name") or not isinstance(doc.get("spec"), dict):
                raise CheckFailed(f"{name}: custom resource needs metadata.name and spec")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except Exception as exc:  # the library raises several types; all mean "invalid"
            raise CheckFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
        checked += 1
    return checked


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def check_workloads(docs: list[dict[str, Any]], overlay: str) -> None:
    """Portico's own rules for its Deployments (beyond the schema)."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    for name, port in PROCESSES.items():
        where = f"{overlay}: {name}"
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            if name not in by_kind.get(kind, {}):
                raise CheckFailed(f"{where}: no {kind}")
        if f"{name}-ingress" not in by_kind.get("NetworkPolicy", {}):
            raise CheckFailed(f"{where}: no ingress NetworkPolicy")
        pod = by_kind["Deployment"][name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = _env(container)
        prefix = f"PORTICO_{name.upper()}_"
        ok: list[tuple[bool, str]] = [
            (env.get(prefix + "HOST") == "0.0.0.0", "HOST must be 0.0.0.0"),
            (env.get(prefix + "PORT") == str(port), f"PORT must be {port}"),
            (container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz"),
            (container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness on /healthz"),
            (container["startupProbe"]["httpGet"]["path"] == "/healthz", "startup on /healthz"),
            (pod["securityContext"].get("runAsNonRoot") is True, "pod runAsNonRoot"),
            (
                pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault",
                "seccomp RuntimeDefault",
            ),
            (container["securityContext"].get("readOnlyRootFilesystem") is True, "read-only root"),
            (
                container["securityContext"].get("allowPrivilegeEscalation") is False,
                "no escalation",
            ),
            (
                container["securityContext"].get("capabilities", {}).get("drop") == ["ALL"],
                "drop ALL",
            ),
            (
                {"requests", "limits"} <= set(container.get("resources", {})),
                "resource requests and limits",
            ),
            (
                # the root filesystem is read-only, so /tmp must be a writable emptyDir
                any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", [])),  # noqa: S108
                "/tmp emptyDir",  # noqa: S108
            ),
        ]
        for passed, what in ok:
            if not passed:
                raise CheckFailed(f"{where}: {what}")
        drain = float(env.get(prefix + "SHUTDOWN_TIMEOUT", "10"))
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        if command[:1] != ["sleep"] or float(command[1]) != drain:
            raise CheckFailed(f"{where}: preStop must sleep {prefix}SHUTDOWN_TIMEOUT ({drain}s)")
        grace = pod["terminationGracePeriodSeconds"]
        if grace < 2 * drain:
            raise CheckFailed(f"{where}: terminationGracePeriodSeconds {grace} < preStop + drain")
    ingresses = by_kind.get("Ingress", {})
    backends = {
        p["backend"]["service"]["name"]
        for ing in ingresses.values()
        for rule in ing["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    if backends != {"gateway"}:
        raise CheckFailed(f"{overlay}: only the gateway may be behind the Ingress, got {backends}")
    for secret in by_kind.get("Secret", {}).values():
        for key, value in (secret.get("stringData") or {}).items():
            if any(w in key for w in ("SECRET", "KEY", "password", "URL")) and (
                "change-me" not in value and key not in {"REDIS_URL"}
            ):
                raise CheckFailed(
                    f"{overlay}: Secret {secret['metadata']['name']}/{key} not a placeholder"
                )


def check_k8s() -> str:
    parts = []
    for overlay in OVERLAYS:
        docs = render(overlay)
        checked = validate_schema(docs, overlay)
        check_workloads(docs, overlay)
        crds = sorted({d["kind"] for d in docs if (d["apiVersion"], d["kind"]) in CRDS})
        parts.append(f"{overlay}: {len(docs)} objects, {checked} schema-valid, CRDs {crds}")
    return "; ".join(parts)


def check_rules() -> str:
    rules = sorted(
        str(p.relative_to(ROOT)) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml")
    )
    tests = sorted(
        str(p.relative_to(ROOT)) for p in (DEPLOY / "prometheus" / "tests").glob("*.yml")
    )
    run(tool("promtool"), "check", "rules", *rules)
    run(tool("promtool"), "test", "rules", *tests)
    names = {r["alert"] for p in rules for g in yaml.safe_load(Path(ROOT / p).read_text())["groups"]
             for r in g["rules"] if "alert" in r}  # fmt: skip
    tested = set()
    for path in tests:
        for case in yaml.safe_load(Path(ROOT / path).read_text())["tests"]:
            for art in case.get("alert_rule_test", []):
                if art.get("exp_alerts"):
                    tested.add(art["alertname"])
    if names - tested:
        raise CheckFailed(f"alerts without a firing unit test: {sorted(names - tested)}")
    return f"{len(names)} alerts, each with a firing promtool test"


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("dockerfile", check_dockerfile),
    ("compose", check_compose),
    ("kubernetes", check_k8s),
    ("prometheus rules", check_rules),
    ("grafana dashboards", check_dashboards),
    ("metric names", check_metrics),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list-metrics", action="store_true", help="print referenced metrics")
    parser.add_argument("--only", choices=[name for name, _ in CHECKS], action="append")
    args = parser.parse_args(argv)
    if args.list_metrics:
        by_file = referenced_metrics()
        families = sorted(
            {f for names in by_file.values() for fams in names.values() for f in fams}
        )
        print(json.dumps({"families": families, "by_file": by_file}, indent=2))
        return 0
    failed = 0
    print(f"tools: {tool_versions()}")
    for name, check in CHECKS:
        if args.only and name not in args.only:
            continue
        try:
            print(f"ok   {name}: {check()}")
        except CheckFailed as exc:
            failed += 1
            print(f"FAIL {name}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
