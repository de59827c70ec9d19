"""Prove the chart correct offline: render, lint, schema-check and assert its invariants.

    python -m kuberay.validate                                  # values.yaml, -dev and -prod
    python -m kuberay.validate -f kuberay/chart/values-prod.yaml --set image.tag=0.2.0

No Kubernetes API server or helm binary is needed: Helm 4's Go SDK renders and lints in-process
(helm-python-sdk), Ray resources are checked against the KubeRay CRDs' OpenAPI schemas, core
resources against Kubernetes' own (kubernetes-validate). Run it in CI before ``helm upgrade``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from churn_core.settings import deep_merge

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = REPO_ROOT / "kuberay" / "chart"
SERVE_CONFIG = REPO_ROOT / "configs" / "serve" / "k8s.yaml"
# The KubeRay CRDs (ray-project/kuberay, ray-operator/config/crd/bases), kept beside the
# project rather than copied into it; CHURN_KUBERAY_CRDS points elsewhere.
DEFAULT_CRD_DIR = REPO_ROOT.parent / "shared" / "kuberay-crds"
KUBERNETES_VERSION = "1.33.0"
RAY_KINDS = {"RayService", "RayJob", "RayCronJob", "RayCluster"}
# Kinds of operators other than Kubernetes and KubeRay: no schema here, invariants only.
OTHER_CRD_KINDS = {"PodMonitor", "ServiceMonitor"}
PRIVATE_RAY_PORTS = {6379, 8265, 10001, 52365}
# Reachable only from the Ray cluster's own pods.
CLUSTER_ONLY_PORTS = {6379, 10001}
# The dashboard and its agent: also from the KubeRay operator's namespace.
OPERATOR_PORTS = {8265, 52365}
UNPINNED_TAGS = {"", "latest", "main", "master", "nightly", "stable"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE|_URL$|WEBHOOK", re.IGNORECASE)
RELEASE = "churn"
NAMESPACE = "churn"


@dataclass
class Rendered:
    """The manifests of one render, with where each came from."""

    values_name: str
    documents: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every document of ``kind``."""
        return [d for d in self.documents if d.get("kind") == kind]


def crd_dir() -> Path:
    """Where the KubeRay CRDs are read from."""
    return Path(os.environ.get("CHURN_KUBERAY_CRDS", DEFAULT_CRD_DIR))


def load_values(files: list[Path], overrides: list[str] | None = None) -> dict[str, Any]:
    """Values files merged left to right, then ``--set`` strings, as helm does."""
    import helm_python as helm

    merged: dict[str, Any] = {}
    for path in files:
        merged = deep_merge(merged, yaml.safe_load(path.read_text()) or {})
    for item in overrides or []:
        merged = deep_merge(merged, helm.parse_set_string(item))
    return merged


def render(
    values: dict[str, Any], values_name: str = "values.yaml", chart_dir: Path = CHART_DIR
) -> Rendered:
    """Render the chart with ``values`` (validated against values.schema.json by Helm)."""
    import helm_python as helm

    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    rendered = Rendered(values_name)
    for source, text in sorted(manifests.items()):
        if not source.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for document in yaml.safe_load_all(text):
            if document:
                rendered.documents.append(document)
                rendered.sources.append(source)
    return rendered


def lint(values: dict[str, Any]) -> list[str]:
    """Helm's lint findings at warning level or worse (strict: warnings count)."""
    import helm_python as helm

    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    found = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return found + list(report.get("errors") or [])


# --- schemas -------------------------------------------------------------------------------


def _strict_schema(schema: Any) -> Any:
    """A CRD's OpenAPI schema as JSON Schema, with unknown fields refused.

    The API server prunes fields a structural schema does not declare; a validator that
    ignored them would pass a misspelt field that the cluster silently drops.
    """
    if isinstance(schema, list):
        return [_strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(kind: str, api_version: str = "ray.io/v1") -> Any:
    """A JSON-schema validator for one KubeRay kind at ``api_version``."""
    import jsonschema

    path = crd_dir() / f"ray.io_{kind.lower()}s.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no CRD for {kind} at {path} (set CHURN_KUBERAY_CRDS)")
    crd = yaml.safe_load(path.read_text())
    version = api_version.split("/", 1)[1]
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    if not served:
        raise ValueError(f"{kind} {api_version} is not served by the CRD in {path}")
    schema = _strict_schema(served[0]["schema"]["openAPIV3Schema"])
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft7Validator(schema)


def ray_resource_errors(document: dict[str, Any]) -> list[str]:
    """Where ``document`` breaks its KubeRay CRD's schema, one line per problem."""
    validator = crd_validator(document["kind"], document.get("apiVersion", "ray.io/v1"))
    name = document.get("metadata", {}).get("name", "?")
    return [
        f"{document['kind']}/{name}: at {'.'.join(str(p) for p in error.absolute_path) or '<root>'}: "
        f"{error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def core_resource_errors(document: dict[str, Any], version: str = KUBERNETES_VERSION) -> list[str]:
    """Where a core Kubernetes ``document`` breaks its schema (strict: unknown fields count)."""
    import kubernetes_validate

    name = f"{document.get('kind')}/{document.get('metadata', {}).get('name', '?')}"
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path) or "<root>"
        return [f"{name}: at {where}: {error.message}"]
    return []


def schema_errors(rendered: Rendered) -> list[str]:
    """Schema problems of every rendered document."""
    problems: list[str] = []
    for document in rendered.documents:
        kind = document.get("kind", "")
        if kind in RAY_KINDS:
            problems += ray_resource_errors(document)
        elif kind not in OTHER_CRD_KINDS:
            problems += core_resource_errors(document)
    return problems


# --- invariants ----------------------------------------------------------------------------


def pod_templates(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template (``metadata`` + a ``spec`` with ``containers``) under ``node``."""
    if isinstance(node, dict):
        spec = node.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("containers"), list):
            yield path, node
        for key, value in node.items():
            yield from pod_templates(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from pod_templates(value, f"{path}[{index}]")


def image_is_pinned(image: str) -> bool:
    """True for ``repo@sha256:...`` or ``repo:tag`` with a fixed tag."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all (a registry port is not a tag)
        return False
    return tag.lower() not in UNPINNED_TAGS


def invariant_errors(rendered: Rendered, serve_config_text: str | None = None) -> list[str]:
    """The rules every render must keep, one line per violation."""
    problems: list[str] = []
    problems += _serve_config_errors(rendered, serve_config_text or SERVE_CONFIG.read_text())
    for document in rendered.documents:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name', '?')}"
        if document.get("kind") == "Secret":
            problems.append(f"{name}: the chart must reference Secrets, never carry one")
        for where, template in pod_templates(document):
            problems += _pod_errors(f"{name} {where}", template["spec"])
    problems += _ingress_errors(rendered)
    problems += _network_policy_errors(rendered)
    problems += _config_map_errors(rendered)
    return problems


def _serve_config_errors(rendered: Rendered, expected: str) -> list[str]:
    problems = []
    for service in rendered.of_kind("RayService"):
        text = service["spec"].get("serveConfigV2", "")
        if text.rstrip() != expected.rstrip():
            problems.append(
                f"RayService/{service['metadata']['name']}: serveConfigV2 differs from "
                f"{SERVE_CONFIG.relative_to(REPO_ROOT)}"
            )
    return problems


def _pod_errors(where: str, spec: dict[str, Any]) -> list[str]:
    problems = []
    pod_security = spec.get("securityContext") or {}
    if pod_security.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod must set securityContext.runAsNonRoot: true")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append(f"{where}: pod must not share the host's namespaces")
    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        label = f"{where} container {container.get('name')}"
        image = str(container.get("image", ""))
        if not image_is_pinned(image):
            problems.append(f"{label}: image {image!r} is not pinned to a version or digest")
        security = container.get("securityContext") or {}
        if security.get("privileged") is True:
            problems.append(f"{label}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{label}: must set allowPrivilegeEscalation: false")
        if "ALL" not in (security.get("capabilities") or {}).get("drop", []):
            problems.append(f"{label}: must drop ALL capabilities")
        resources = container.get("resources") or {}
        if not resources.get("requests") or not resources.get("limits"):
            problems.append(f"{label}: needs resource requests and limits")
        for variable in container.get("env", []) or []:
            if "value" in variable and SECRET_NAME.search(variable.get("name", "")):
                problems.append(f"{label}: {variable['name']} is inlined; reference a Secret")
    return problems


def _ingress_errors(rendered: Rendered) -> list[str]:
    problems = []
    for ingress in rendered.of_kind("Ingress"):
        name = f"Ingress/{ingress['metadata']['name']}"
        if not ingress["spec"].get("tls"):
            problems.append(f"{name}: no TLS")
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                service = path["backend"].get("service", {})
                port = service.get("port", {}).get("number")
                if port in PRIVATE_RAY_PORTS or service.get("port", {}).get("name") == "dashboard":
                    problems.append(f"{name}: exposes Ray's private port {port}")
                if service.get("name", "").endswith(("-head-svc", "-dashboard-svc")):
                    problems.append(f"{name}: routes to the Ray head service {service['name']}")
    return problems


def _network_policy_errors(rendered: Rendered) -> list[str]:
    """Every Ray pod is selected by a policy, and Ray's private ports stay in the cluster."""
    problems = []
    policies = rendered.of_kind("NetworkPolicy")
    for document in rendered.documents:
        if document.get("kind") not in RAY_KINDS:
            continue
        for where, template in pod_templates(document):
            labels = template.get("metadata", {}).get("labels", {})
            if not any(_selects(p["spec"]["podSelector"], labels) for p in policies):
                problems.append(f"{document['kind']} {where}: no NetworkPolicy selects its pods")
    for policy in policies:
        name = f"NetworkPolicy/{policy['metadata']['name']}"
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        for rule in policy["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            # No ports listed opens every port, GCS and client included.
            cluster_only = not rule.get("ports") or bool(ports & CLUSTER_ONLY_PORTS)
            operator_ports = bool(ports & OPERATOR_PORTS)
            for peer in rule.get("from", []) or [{"everyone": True}]:
                same_pods = (
                    peer.get("podSelector", {}).get("matchLabels") == selector and len(peer) == 1
                )
                if same_pods:
                    continue
                if cluster_only:
                    problems.append(f"{name}: opens GCS/client/all ports to {peer}")
                elif operator_ports and set(peer) != {"namespaceSelector"}:
                    problems.append(f"{name}: opens the dashboard to {peer}")
    return problems


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _config_map_errors(rendered: Rendered) -> list[str]:
    return [
        f"ConfigMap/{c['metadata']['name']}: {key} looks like a credential; use the Secret"
        for c in rendered.of_kind("ConfigMap")
        for key in c.get("data", {})
        if SECRET_NAME.search(key)
    ]


def check(values: dict[str, Any], values_name: str) -> list[str]:
    """Render, lint, schema-check and invariant-check one set of values."""
    problems = [f"lint: {p}" for p in lint(values)]
    rendered = render(values, values_name)
    return problems + schema_errors(rendered) + invariant_errors(rendered)


def main(argv: list[str] | None = None) -> int:
    """Check the chart for each values file (or each of the chart's own); exit 1 on problems."""
    parser = argparse.ArgumentParser(prog="python -m kuberay.validate", description=__doc__)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    sets = (
        [[p] for p in args.values]
        if args.values
        else [[], [CHART_DIR / "values-dev.yaml"], [CHART_DIR / "values-prod.yaml"]]
    )
    failed = False
    for files in sets:
        label = ", ".join(str(p) for p in files) or "values.yaml"
        try:
            problems = check(load_values(files, args.overrides), label)
        except Exception as error:  # a schema refusal or a template failure: one clear line
            problems = [f"{type(error).__name__}: {error}"]
        failed = failed or bool(problems)
        print(f"{label}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
