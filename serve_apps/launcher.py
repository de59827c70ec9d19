"""Deploy the Serve config file on the running Ray cluster, as ``serve run`` and KubeRay do.

The config file is the single description of the deployments (``serveConfigV2`` on KubeRay);
settings only fill in where to listen and where the registry is.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from churn_core.settings import ServeSettings, Settings
from churn_core.tls import server_ssl_options


class ServeStartError(RuntimeError):
    """The application did not reach RUNNING."""


def load_serve_config(
    settings: Settings,
    overrides: dict[str, Any] | None = None,
    environment: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Serve config of ``settings`` with host, port and app args filled from settings.

    ``environment`` (``CHURN_*`` variables) reaches the replicas through each application's
    runtime_env: how a caller hands them settings it changed in code (secrets included, so
    production sets them in the pods' environment instead).
    """
    path = settings.resolve(settings.serve.config_path)
    if not path.exists():
        raise FileNotFoundError(f"Serve config not found: {path}")
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config.setdefault("http_options", {}).update(host=settings.serve.host, port=settings.serve.port)
    config["http_options"].update(serve_tls_options(settings))
    for app in config.get("applications", []):
        app.setdefault("args", {}).update(
            env=settings.env,
            registry_root=str(settings.resolve(settings.registry.root)),
            lake_dir=str(settings.resolve(settings.lake_dir)),
            dataset=settings.dataset,
            prediction_spool_dir=str(
                settings.resolve(settings.monitoring.prediction_log.spool_dir)
            ),
            model_name=settings.model_name,
            alias=settings.serve.alias,
            **(overrides or {}),
        )
        if environment:
            runtime_env = app.setdefault("runtime_env", {})
            # Variables the config file sets for one application win over the common ones.
            runtime_env["env_vars"] = {**environment, **runtime_env.get("env_vars", {})}
    return config


def deploy(
    settings: Settings,
    timeout_s: float = 180.0,
    environment: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Deploy every application of the config and wait until all run; return the base URL."""
    from ray.serve import status
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(load_serve_config(settings, overrides, environment))
    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(), proxy_location=config.proxy_location
    )
    client.deploy_apps(config, _blocking=False)
    deadline = time.monotonic() + timeout_s
    names = [app.name for app in config.applications]
    while True:
        apps = status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        if all(s == "RUNNING" for s in states.values()):
            break
        failed = {
            n: apps[n].message for n in names if n in apps and apps[n].status == "DEPLOY_FAILED"
        }
        if failed:
            raise ServeStartError(f"Serve deploy failed: {failed}")
        if time.monotonic() > deadline:
            raise ServeStartError(f"Serve apps not running after {timeout_s:.0f} s: {states}")
        time.sleep(0.5)
    scheme = "https" if settings.serve.tls_cert_file is not None else "http"
    return f"{scheme}://{settings.serve.host}:{settings.serve.port}"


def serve_tls_options(settings: Settings) -> dict[str, str]:
    """``ssl_certfile``/``ssl_keyfile`` for Serve's ``http_options`` (empty: plain HTTP).

    Ray's Python proxy (``serve.ingress: proxy``) serves HTTPS with them. Ray 2.60's HAProxy
    mode cannot: its frontend binds without ``ssl`` and its backends speak plain HTTP to the
    replicas, and ``http_options`` would instead turn each replica's own server to HTTPS
    behind it. So HAProxy mode with a certificate is refused; TLS then terminates at the
    Ingress or load balancer in front (``kuberay/chart``'s NGINX Ingress does).
    """
    serve = settings.serve
    if serve.tls_cert_file is None or serve.tls_key_file is None:
        return {}
    if serve.ingress == "haproxy":
        raise ServeStartError(
            "serve.tls_cert_file is set but serve.ingress is 'haproxy': Ray's HAProxy "
            "frontend cannot terminate TLS; set serve.ingress to 'proxy', or terminate TLS "
            "at an ingress in front and unset serve.tls_cert_file"
        )
    return server_ssl_options(
        settings.resolve(serve.tls_cert_file), settings.resolve(serve.tls_key_file)
    )


def serve_environment(settings: ServeSettings, workdir: Path) -> dict[str, str]:
    """Environment of the Ray processes for the configured ingress (set before Ray starts).

    HAProxy mode turns on direct ingress (each replica runs its own HTTP server) with HAProxy
    in front on the Serve port; its files go in a folder of ``workdir``'s own so two clusters
    on one host do not share them.
    """
    if settings.ingress != "haproxy":
        return {}
    # HAProxy refuses admin socket paths over 97 bytes and Ray nests a 56-character folder
    # under this one: keep it short, but still one per workdir.
    digest = hashlib.blake2b(str(workdir.resolve()).encode(), digest_size=4).hexdigest()
    haproxy = Path(tempfile.gettempdir()) / f"chp-{digest}"
    haproxy.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(settings.haproxy_stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(settings.haproxy_metrics_port),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(settings.drain_s),
    }
