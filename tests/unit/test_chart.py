"""The Helm chart in kuberay/chart, proven offline: rendered for each values file by Helm's own
Go SDK, linted, every Ray resource checked against the KubeRay CRDs, every core resource
against Kubernetes' schemas, and the invariants that matter asserted. Each check is also shown
to fail on a deliberately broken value or manifest."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from churn_core.schedules import load_schedules
from kuberay import validate
from kuberay.validate import CHART_DIR, Rendered
from tests.conftest import REPO_ROOT

VALUES_FILES = ["values.yaml", "values-dev.yaml", "values-prod.yaml"]


def values_of(name: str) -> dict[str, Any]:
    return {} if name == "values.yaml" else yaml.safe_load((CHART_DIR / name).read_text())


@pytest.fixture(scope="module")
def renders() -> dict[str, Rendered]:
    return {name: validate.render(values_of(name), name) for name in VALUES_FILES}


@pytest.fixture(scope="module")
def prod(renders: dict[str, Rendered]) -> Rendered:
    return renders["values-prod.yaml"]


def only(rendered: Rendered, kind: str) -> dict[str, Any]:
    (document,) = rendered.of_kind(kind)
    return document


def worker_groups_value(**group: Any) -> dict[str, Any]:
    base = {
        "groupName": "serve",
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 4,
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
    }
    base.update(group)
    return {"serve": {"workerGroups": [{k: v for k, v in base.items() if v is not None}]}}


# --- every values file: lint, schemas, invariants --------------------------------------------


@pytest.mark.parametrize("name", VALUES_FILES)
def test_the_chart_lints_clean(name: str) -> None:
    assert validate.lint(values_of(name)) == []


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_resource_matches_its_schema(renders: dict[str, Rendered], name: str) -> None:
    rendered = renders[name]
    kinds = {d["kind"] for d in rendered.documents}
    assert {"RayService", "ConfigMap", "Ingress", "NetworkPolicy"} <= kinds
    assert validate.schema_errors(rendered) == []


@pytest.mark.parametrize("name", VALUES_FILES)
def test_the_invariants_hold(renders: dict[str, Rendered], name: str) -> None:
    assert validate.invariant_errors(renders[name]) == []


def test_the_command_line_check_passes_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert validate.main([]) == 0
    assert validate.main(["--set", "serve.workerGroups[0].replicas=two"]) == 1
    out = capsys.readouterr().out
    assert "/serve/workerGroups/0/replicas" in out and "want integer" in out


# --- the serve config is the file in configs/serve ------------------------------------------


def test_serve_config_v2_is_configs_serve_k8s_yaml(prod: Rendered) -> None:
    from ray.serve.schema import ServeDeploySchema

    text = only(prod, "RayService")["spec"]["serveConfigV2"]
    source = (REPO_ROOT / "configs" / "serve" / "k8s.yaml").read_text()
    assert text.rstrip() == source.rstrip()
    assert yaml.safe_load(text) == yaml.safe_load(source)
    ServeDeploySchema.model_validate(yaml.safe_load(text))
    # A link, not a copy: the chart cannot hold a second, hand-edited config.
    link = CHART_DIR / "files" / "serve.yaml"
    assert link.is_symlink() and link.resolve() == (REPO_ROOT / "configs/serve/k8s.yaml").resolve()


def test_a_serve_config_that_differs_is_caught(prod: Rendered) -> None:
    edited = (
        (REPO_ROOT / "configs/serve/k8s.yaml")
        .read_text()
        .replace("max_replicas: 16", "max_replicas: 3")
    )
    problems = validate.invariant_errors(prod, serve_config_text=edited)
    assert any("serveConfigV2 differs" in p for p in problems)


def test_the_k8s_settings_point_at_the_k8s_serve_config() -> None:
    from churn_core.settings import load_settings

    settings = load_settings("k8s")
    assert settings.resolve(settings.serve.config_path) == REPO_ROOT / "configs/serve/k8s.yaml"
    assert settings.serve.ingress == "proxy"  # KubeRay's serve Service fronts Ray's proxies


# --- the RayService --------------------------------------------------------------------------


def test_the_rayservice_autoscales_and_survives_a_head_restart(prod: Rendered) -> None:
    spec = only(prod, "RayService")["spec"]
    cluster = spec["rayClusterConfig"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    assert (group["groupName"], group["minReplicas"], group["maxReplicas"]) == ("serve", 2, 8)
    gcs = cluster["gcsFaultToleranceOptions"]
    assert gcs["redisPassword"] == {
        "valueFrom": {"secretKeyRef": {"name": "churn-secrets", "key": "RAY_GCS_REDIS_PASSWORD"}}
    }
    assert "externalStorageNamespace" not in gcs  # per-cluster namespaces across upgrades
    assert cluster["rayVersion"] == version("ray")


def test_dev_values_shrink_the_cluster_and_drop_gcs_fault_tolerance(
    renders: dict[str, Rendered],
) -> None:
    cluster = only(renders["values-dev.yaml"], "RayService")["spec"]["rayClusterConfig"]
    assert "gcsFaultToleranceOptions" not in cluster
    assert cluster["workerGroupSpecs"][0]["maxReplicas"] == 2
    assert [c["metadata"]["name"] for c in renders["values-dev.yaml"].of_kind("RayCronJob")] == [
        "churn-drift"
    ]


def test_the_image_is_the_project_version_everywhere(prod: Rendered) -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["appVersion"] == version("churn-on-ray")
    assert yaml.safe_load((CHART_DIR / "values.yaml").read_text())["image"]["tag"] == version(
        "churn-on-ray"
    )
    images = {
        c["name"]: c["image"]
        for d in prod.documents
        for _, t in validate.pod_templates(d)
        for c in t["spec"]["containers"]
    }
    project = f"registry.example.com/churn/churn-on-ray:{version('churn-on-ray')}"
    assert {images[n] for n in ("ray-head", "ray-worker", "sail")} == {project}
    # The only other container: the log shipper sidecar (prod values), pinned too.
    assert set(images) == {"ray-head", "ray-worker", "sail", "fluent-bit"}
    assert validate.image_is_pinned(images["fluent-bit"])


# --- the jobs ------------------------------------------------------------------------------


def test_every_schedule_is_one_raycronjob_with_the_same_timing_and_commands(
    prod: Rendered,
) -> None:
    schedules = load_schedules().schedules
    cronjobs = {c["metadata"]["labels"]["churn/schedule"]: c for c in prod.of_kind("RayCronJob")}
    assert set(cronjobs) == set(schedules)
    for name, s in schedules.items():
        spec, job = cronjobs[name]["spec"], cronjobs[name]["spec"]["jobTemplate"]
        assert (spec["schedule"], spec["timeZone"], spec["suspend"]) == (
            s.cron,
            s.timezone,
            not s.enabled,
        )
        # The same command line `churn schedule run` executes on a laptop.
        assert job["entrypoint"] == s.describe_steps("k8s")
        assert job["activeDeadlineSeconds"] == s.timeout_s
        assert job["shutdownAfterJobFinishes"] is True and job["backoffLimit"] == 0
        workers = job["rayClusterSpec"].get("workerGroupSpecs", [])
        assert sum(group["replicas"] for group in workers) == s.ray_workers


def chart_with_schedules(tmp_path: Path, schedules: dict[str, Any]) -> Path:
    chart = tmp_path / "chart"
    shutil.copytree(CHART_DIR, chart, symlinks=False)
    (chart / "files" / "schedules.yaml").write_text(yaml.safe_dump({"schedules": schedules}))
    return chart


def test_a_disabled_schedule_is_rendered_suspended_and_odd_arguments_quoted(
    tmp_path: Path,
) -> None:
    schedules = {
        "drift": {
            "cron": "15 * * * *",
            "steps": [["drift", "--window", "last 2 h"], ["accuracy"]],
            "timeout_s": 600,
            "enabled": False,
        }
    }
    rendered = validate.render({}, chart_dir=chart_with_schedules(tmp_path, schedules))
    (cronjob,) = rendered.of_kind("RayCronJob")
    assert cronjob["spec"]["suspend"] is True
    from churn_core.schedules import Schedule

    expected = Schedule(name="drift", **schedules["drift"]).describe_steps("k8s")
    assert cronjob["spec"]["jobTemplate"]["entrypoint"] == expected
    assert "'last 2 h'" in expected


def test_the_training_rayjob_is_one_object_per_run(renders: dict[str, Rendered]) -> None:
    assert renders["values.yaml"].of_kind("RayJob") == []
    rendered = validate.render(
        {"train": {"enabled": True, "runId": "2026-11-28", "command": "tune"}}
    )
    job = only(rendered, "RayJob")
    assert job["metadata"]["name"] == "churn-tune-2026-11-28"
    assert job["spec"]["entrypoint"] == "churn --env k8s tune"
    assert job["spec"]["submissionMode"] == "SidecarMode"
    assert validate.schema_errors(rendered) == [] and validate.invariant_errors(rendered) == []


# --- ingress, network policy, monitoring, secrets ------------------------------------------


def test_the_ingress_serves_the_api_over_tls_with_rate_limits_and_never_the_dashboard(
    prod: Rendered,
) -> None:
    ingress = only(prod, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/limit-rps"] == "50"
    assert notes["nginx.ingress.kubernetes.io/limit-connections"] == "20"
    assert notes["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    assert ingress["spec"]["tls"] == [{"hosts": ["churn.example.com"], "secretName": "churn-tls"}]
    backends = [
        p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]
    ]
    assert backends == [{"name": "churn-serve-svc", "port": {"number": 8000}}]


def test_ray_ports_are_open_only_inside_the_cluster_and_to_the_operator(prod: Rendered) -> None:
    policy = next(
        p for p in prod.of_kind("NetworkPolicy") if p["metadata"]["name"] == "churn-ray-serve"
    )
    rules = policy["spec"]["ingress"]
    unrestricted = [r for r in rules if "ports" not in r]
    assert [r["from"] for r in unrestricted] == [
        [{"podSelector": {"matchLabels": policy["spec"]["podSelector"]["matchLabels"]}}]
    ]
    opened = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: {
            p["port"] for p in rule["ports"]
        }
        for rule in rules
        if "ports" in rule
        for peer in rule["from"]
    }
    assert opened == {
        "kuberay-system": {8265, 52365, 8000},
        "monitoring": {8080, 8000},
        "ingress-nginx": {8000},
    }


def test_every_ray_pod_is_scraped_by_the_pod_monitor(prod: Rendered) -> None:
    monitor = only(prod, "PodMonitor")
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert set(expression["values"]) == {"serve", "train", "schedule"}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "serve"]


def test_secrets_are_referenced_and_config_names_are_settings(prod: Rendered) -> None:
    from churn_core.settings import unknown_setting_variables

    assert prod.of_kind("Secret") == []
    config = only(prod, "ConfigMap")["data"]
    assert unknown_setting_variables(config) == []
    for document in prod.documents:
        for _, template in validate.pod_templates(document):
            for container in template["spec"]["containers"]:
                if container["name"] == "fluent-bit":
                    assert not any(validate.SECRET_NAME.search(e["name"]) for e in container["env"])
                    continue
                assert "env" not in container
                assert {"secretRef": {"name": "churn-secrets"}} in container["envFrom"]


# --- broken values fail with a clear message --------------------------------------------------


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (
            worker_groups_value(replicas="two"),
            "at '/serve/workerGroups/0/replicas': got string, want integer",
        ),
        (worker_groups_value(groupName=None), "missing property 'groupName'"),
        (worker_groups_value(groupName="Serve_Group"), "/serve/workerGroups/0/groupName"),
        (
            worker_groups_value(minReplicas=5, maxReplicas=2),
            "minReplicas (5) is above maxReplicas (2)",
        ),
        ({"image": {"tag": "latest"}}, 'image.tag "latest" moves: pin a version'),
        ({"image": {"tag": "0.1.0 "}}, "at '/image/tag'"),
        ({"config": {"CHURN_SERVE__REDIS_URL": "redis://:pw@redis"}}, "CHURN_SERVE__REDIS_URL"),
        ({"serve": {"upgradeStrategy": "Rolling"}}, "/serve/upgradeStrategy"),
        ({"ingress": {"rateLimit": {"rps": 0}}}, "/ingress/rateLimit/rps"),
        ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
    ],
)
def test_a_broken_value_is_refused_with_a_clear_message(values: dict[str, Any], says: str) -> None:
    import helm_python as helm

    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as error:
        validate.render(values)
    assert says in str(error.value)


# --- the checks themselves catch broken manifests ------------------------------------------


def _set(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


WORKER = ("spec", "rayClusterConfig", "workerGroupSpecs", 0)


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ((*WORKER, "groupName"), None, "'groupName' is a required property"),
        ((*WORKER, "maxReplicas"), "8", "'8' is not of type 'integer'"),
        (
            ("spec", "upgradeStrategie"),
            {"type": "NewCluster"},
            "Additional properties are not allowed",
        ),
        (
            ("spec", "rayClusterConfig", "autoscalerOptions", "upscalingMode"),
            "Fast",
            "is not one of",
        ),
    ],
)
def test_the_crd_check_catches_a_broken_rayservice(
    prod: Rendered, path: tuple[Any, ...], value: Any, says: str
) -> None:
    broken = copy.deepcopy(only(prod, "RayService"))
    _set(broken, path, value)
    assert any(says in p for p in validate.ray_resource_errors(broken)), (
        validate.ray_resource_errors(broken)
    )


def test_the_crd_check_catches_a_broken_raycronjob(prod: Rendered) -> None:
    broken = copy.deepcopy(prod.of_kind("RayCronJob")[0])
    broken["spec"]["jobTemplate"]["activeDeadlineSeconds"] = "3h"
    broken["spec"]["concurrencyPolicy"] = "Forbid"  # not in the RayCronJob API
    problems = validate.ray_resource_errors(broken)
    assert any("'3h' is not of type 'integer'" in p for p in problems)
    assert any("'concurrencyPolicy' was unexpected" in p for p in problems)


def test_the_core_check_catches_a_broken_ingress(prod: Rendered) -> None:
    broken = copy.deepcopy(only(prod, "Ingress"))
    broken["spec"]["rules"][0]["http"]["paths"][0]["pathType"] = 7
    assert validate.core_resource_errors(broken) != []
    assert validate.core_resource_errors(only(prod, "Ingress")) == []


Mutation = Callable[[list[dict[str, Any]]], None]


def _first(kind: str, documents: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind)


def _head_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    service = _first("RayService", documents)
    return service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "privileged": (
        lambda docs: _head_container(docs)["securityContext"].update(privileged=True),
        "privileged",
    ),
    "latest image": (
        lambda docs: _head_container(docs).update(image="churn-on-ray:latest"),
        "is not pinned",
    ),
    "untagged image": (
        lambda docs: _head_container(docs).update(image="registry:5000/churn-on-ray"),
        "is not pinned",
    ),
    "inlined password": (
        lambda docs: _head_container(docs).update(env=[{"name": "REDIS_PASSWORD", "value": "x"}]),
        "REDIS_PASSWORD is inlined",
    ),
    "dashboard on the ingress": (
        lambda docs: _first("Ingress", docs)["spec"]["rules"][0]["http"]["paths"].append(
            {
                "path": "/dashboard",
                "pathType": "Prefix",
                "backend": {"service": {"name": "churn-head-svc", "port": {"number": 8265}}},
            }
        ),
        "exposes Ray's private port 8265",
    ),
    "a Secret in the chart": (
        lambda docs: docs.append({"kind": "Secret", "metadata": {"name": "x"}, "data": {}}),
        "never carry one",
    ),
    "GCS opened to everyone": (
        lambda docs: _first("NetworkPolicy", docs)["spec"]["ingress"].append(
            {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 6379}]}
        ),
        "opens GCS/client/all ports",
    ),
    "pods without a policy": (
        lambda docs: docs.remove(_first("NetworkPolicy", docs)),
        "no NetworkPolicy selects its pods",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_invariant_check_catches(prod: Rendered, mutation: str) -> None:
    change, says = MUTATIONS[mutation]
    broken = copy.deepcopy(prod)
    change(broken.documents)
    problems = validate.invariant_errors(broken)
    assert any(says in p for p in problems), problems


# --- the operator -----------------------------------------------------------------------------


def test_the_operator_values_enable_raycronjob_and_pin_the_chart() -> None:
    operator = REPO_ROOT / "kuberay" / "operator"
    values = yaml.safe_load((operator / "values.yaml").read_text())
    gates = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert gates["RayCronJob"] is True
    pinned = yaml.safe_load((operator / "chart.yaml").read_text())
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert pinned["version"] == chart["annotations"]["churn/kuberay-operator-chart"]
    assert values["image"]["tag"] == f"v{pinned['version']}"


def _paths(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [p for value in node.values() for p in _paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _paths(value)]
    return (
        [node]
        if isinstance(node, str) and node.startswith(("/etc/churn/", "/data", "/backups"))
        else []
    )


def test_every_file_the_k8s_settings_name_is_mounted_in_the_ray_pods(prod: Rendered) -> None:
    from churn_core.settings import load_settings

    named = sorted(set(_paths(load_settings("k8s").model_dump(mode="json"))))
    assert any(p.startswith("/etc/churn/tls/") for p in named)  # TLS files are among them
    for document in prod.documents:
        if document["kind"] not in {"RayService", "RayJob", "RayCronJob"}:
            continue
        for where, template in validate.pod_templates(document):
            mounts = [m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]]
            unmounted = [
                p for p in named if not any(p == m or p.startswith(m + "/") for m in mounts)
            ]
            assert unmounted == [], f"{document['kind']} {where}: {unmounted}"


def test_a_store_without_a_tls_secret_is_not_mounted() -> None:
    rendered = validate.render(
        {"secrets": {"tls": {"postgres": "", "redis": "r", "mongodb": "m", "kafka": ""}}}
    )
    service = only(rendered, "RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert "/etc/churn/tls/postgres" not in mounts and "/etc/churn/tls/redis" in mounts
    assert validate.schema_errors(rendered) == []
