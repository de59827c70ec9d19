"""The log shipping configuration in deploy/logging, checked offline.

No Fluent Bit binary is installable here (neither Debian 12 nor PyPI ships one), so its
configs are checked for what a dry run would catch and what matters to us: each parses, each
input's lines reach an output, parsers exist and read our timestamp, request_id and job_id are
kept per line without becoming Loki labels, every ``${VAR}`` is provided where it runs, and the
tailed paths are the ones the settings write. The Kubernetes manifests are validated against
the Kubernetes schemas (strict), as the chart's are.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

import churn_core.logging as churn_logging
from churn_core.logging import configure_logging, get_logger
from churn_core.settings import LogFileSettings, load_settings
from kuberay.validate import core_resource_errors
from tests.log_scan import parse_json_lines, read_lines

PROJECT = Path(__file__).resolve().parents[2]
LOGGING = PROJECT / "deploy/logging"
CONFIGS = sorted((LOGGING / "fluent-bit").glob("*.yaml"))
INPUTS = {"tail"}
FILTERS = {"grep", "record_modifier", "kubernetes", "modify", "nest"}
OUTPUTS = {"loki"}
BUILTIN_MULTILINE = {"cri", "docker", "go", "python", "java"}
# Fields of our JSON lines (churn_core/logging.py) that the outputs may read.
LINE_FIELDS = {"component", "level", "job", "job_id", "request_id", "pid", "logger", "event"}
LABELS_ALLOWED = {
    "service",
    "source",
    "namespace",
    "container",
    "host",
    "component",
    "level",
    "job",
}
# What the runtime provides for each config: the manifests' env, or the documented command.
PROVIDED = {
    "host.yaml": {"CHURN_LOG_DIR", "LOKI_HOST", "LOKI_PORT", "LOKI_TENANT", "HOSTNAME"},
}


def is_on(value: object) -> bool:
    """Fluent Bit's booleans: ``on`` is a string to Fluent Bit and True to PyYAML."""
    return str(value).lower() in {"on", "true"}


def load(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict), path
    return config


def pairs(value: str) -> dict[str, str]:
    """``a=1, b=$x`` (Fluent Bit's loki labels / structured_metadata) as a dict."""
    return dict(item.strip().split("=", 1) for item in value.split(",") if item.strip())


def accessed_fields(value: str) -> set[str]:
    """Top-level record keys a ``$key`` or ``$key['sub']`` record accessor reads."""
    return set(re.findall(r"\$(\w+)", value))


def test_there_is_a_config_per_place_logs_are_read() -> None:
    assert [p.name for p in CONFIGS] == [
        "host.yaml",
        "kubernetes-daemonset.yaml",
        "ray-sidecar.yaml",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_input_reaches_an_output_through_known_plugins(path: Path) -> None:
    config = load(path)
    assert set(config) == {"service", "parsers", "pipeline"}
    pipeline = config["pipeline"]
    inputs, filters, outputs = pipeline["inputs"], pipeline.get("filters", []), pipeline["outputs"]
    assert {i["name"] for i in inputs} <= INPUTS
    assert {f["name"] for f in filters} <= FILTERS
    assert {o["name"] for o in outputs} <= OUTPUTS
    tags = [i["tag"] for i in inputs]
    assert len(set(tags)) == len(tags)
    for step in [*filters, *outputs]:
        assert any(fnmatch.fnmatch(tag, step["match"]) for tag in tags), step
    for tag in tags:
        assert any(fnmatch.fnmatch(tag, o["match"]) for o in outputs), f"{tag} is never shipped"
    parsers = {p["name"] for p in config["parsers"]}
    for source in inputs:
        if "parser" in source:
            assert source["parser"] in parsers
        for name in str(source.get("multiline.parser", "")).split(","):
            assert not name.strip() or name.strip() in BUILTIN_MULTILINE | parsers
        # A batch request's line (1,000 prediction ids) fits; longer lines are skipped whole.
        assert source["buffer_max_size"] == "1M" and is_on(source["skip_long_lines"])
        assert source["db"], "positions must survive a restart"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ids_stay_per_line_and_labels_stay_few(path: Path) -> None:
    for output in load(path)["pipeline"]["outputs"]:
        labels = pairs(output["labels"])
        metadata = pairs(output["structured_metadata"])
        assert set(labels) <= LABELS_ALLOWED, labels
        assert labels["service"] == "churn"
        assert output["line_format"] == "json"  # the whole record, ids included, is the line
        if labels["source"] == "ray":
            continue  # Ray's own lines carry no ids of ours
        assert metadata["request_id"] == "$request_id" and metadata["job_id"] == "$job_id"
        assert {"$component", "$level", "$job"} <= set(labels.values())
        read = accessed_fields(output["labels"]) | accessed_fields(output["structured_metadata"])
        assert read <= LINE_FIELDS | {"kubernetes", "pod"}, read


def test_the_parser_reads_the_timestamp_our_lines_carry(tmp_path: Path) -> None:
    parsers = [load(path)["parsers"] for path in CONFIGS]
    assert all(p == parsers[0] for p in parsers), "the churn_json parser differs between files"
    (parser,) = parsers[0]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(
            "INFO",
            json=True,
            component="cli",
            file=LogFileSettings(path=str(tmp_path / "{component}-{pid}.jsonl")),
        )
        get_logger("x").info("one line")
    finally:
        for handler in churn_logging._INSTALLED:
            handler.close()
        churn_logging._INSTALLED.clear()
        churn_logging._CURRENT = None
        churn_logging._PROCESS_FIELDS.clear()
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    (line,) = parse_json_lines(read_lines(tmp_path.iterdir()))
    # Fluent Bit's %L is the fraction of a second, like Python's %f here.
    python_format = parser["time_format"].replace("%L", "%f")
    assert datetime.strptime(line[parser["time_key"]], python_format)
    assert parser["format"] == "json" and is_on(parser["time_keep"])


def environment_variables(path: Path) -> set[str]:
    return set(re.findall(r"\$\{(\w+)\}", path.read_text()))


def container_env(container: dict[str, Any]) -> set[str]:
    return {item["name"] for item in container["env"]}


def test_every_variable_a_config_uses_is_provided_where_it_runs() -> None:
    daemonset = [d for d in yaml.safe_load_all((LOGGING / "kubernetes/daemonset.yaml").read_text())]
    (agent,) = [d for d in daemonset if d["kind"] == "DaemonSet"]
    (node_container,) = agent["spec"]["template"]["spec"]["containers"]
    sidecar = yaml.safe_load((LOGGING / "kubernetes/ray-sidecar-patch.yaml").read_text())
    (ray_container,) = sidecar["containers"]
    provided = {
        **PROVIDED,
        "kubernetes-daemonset.yaml": container_env(node_container),
        "ray-sidecar.yaml": container_env(ray_container),
    }
    for path in CONFIGS:
        missing = environment_variables(path) - provided[path.name]
        assert not missing, f"{path.name} uses {missing}, which nothing sets"
    assert "--config=/fluent-bit/etc/kubernetes-daemonset.yaml" in node_container["args"]
    assert "--config=/fluent-bit/etc/ray-sidecar.yaml" in ray_container["args"]


def test_the_tailed_files_are_the_ones_the_settings_write() -> None:
    sidecar = load(LOGGING / "fluent-bit/ray-sidecar.yaml")["pipeline"]["inputs"]
    host = load(LOGGING / "fluent-bit/host.yaml")["pipeline"]["inputs"]
    for env, tailed in (("k8s", sidecar[0]["path"]), ("local", host[0]["path"])):
        template = load_settings(env).logging.file.path
        assert template is not None
        example = template.format(component="serve", pid=42)
        pattern = tailed.replace("${CHURN_LOG_DIR}", str(Path(example).parent))
        assert fnmatch.fnmatch(example, pattern), (env, example, pattern)
    # The sidecar sees those files: Ray's /tmp/ray is the shared emptyDir.
    patch = yaml.safe_load((LOGGING / "kubernetes/ray-sidecar-patch.yaml").read_text())
    assert {"name": "ray-logs", "mountPath": "/tmp/ray"} in patch["rayContainerVolumeMounts"]


def test_the_manifests_pass_the_kubernetes_schemas() -> None:
    documents = list(yaml.safe_load_all((LOGGING / "kubernetes/daemonset.yaml").read_text()))
    assert {d["kind"] for d in documents} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    }
    patch = yaml.safe_load((LOGGING / "kubernetes/ray-sidecar-patch.yaml").read_text())
    # The patch inside a Ray pod shaped like the chart's (a ray container plus the sidecar).
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ray-worker"},
        "spec": {
            "containers": [
                {
                    "name": "ray-worker",
                    "image": "churn:latest",
                    "volumeMounts": patch["rayContainerVolumeMounts"],
                },
                *patch["containers"],
            ],
            "volumes": patch["volumes"],
        },
    }
    problems = [p for d in [*documents, pod] for p in core_resource_errors(d)]
    assert problems == []
    mounted = {m["name"] for c in pod["spec"]["containers"] for m in c["volumeMounts"]}
    assert mounted == {v["name"] for v in patch["volumes"]}


def test_the_kustomization_builds_both_configmaps_from_the_files() -> None:
    kustomization = load(LOGGING / "kustomization.yaml")
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    assert generated == {
        "fluent-bit-node": ["fluent-bit/kubernetes-daemonset.yaml"],
        "fluent-bit-ray": ["fluent-bit/ray-sidecar.yaml"],
    }
    for files in generated.values():
        assert all((LOGGING / f).is_file() for f in files)
    assert all((LOGGING / r).is_file() for r in kustomization["resources"])
