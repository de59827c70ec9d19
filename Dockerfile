# syntax=docker/dockerfile:1
# The churn-on-ray image: one image for every role (Ray head and workers of the RayService,
# RayJobs and RayCronJobs, the Sail Spark Connect server, the Compose stack). The code and the
# pinned dependencies are baked in, as Ray advises for production: nothing is downloaded when
# a pod starts (no runtime_env working_dir or pip).
#
#   docker build -t churn-on-ray:0.1.0 .
#
# Base images are pinned by exact version; add the digests your registry mirrors
# (`docker buildx imagetools inspect python:3.11.7-slim-bookworm`) for byte-for-byte builds.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# --- the web dashboard's static build (served by the API under /ui) ------------------------
FROM ${NODE_IMAGE} AS dashboard
WORKDIR /src/dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY dashboard/ ./
RUN npm run build

# --- dependencies and the project, into a virtualenv copied whole into the runtime ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# requirements.lock: every dependency, pinned with hashes (`make lock`), so the image holds
# exactly the set the tests ran against. Wheels only, except pyspark, which PyPI ships as a
# pure-Python source archive: no compiler is needed.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --only-binary=:all: --no-binary=pyspark \
      -r /tmp/requirements.lock \
 && pip install setuptools==80.9.0
COPY pyproject.toml README.md /src/
COPY churn /src/churn
COPY churn_core /src/churn_core
COPY pipelines /src/pipelines
COPY training /src/training
COPY serve_apps /src/serve_apps
COPY monitoring /src/monitoring
RUN pip install --no-deps --no-build-isolation /src

# --- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# wget: KubeRay's readiness and liveness probes run `bash -c "wget ... | grep success"` in Ray
# containers (bash is already in the base). libgomp1: XGBoost's OpenMP runtime. tini reaps
# Ray's child processes. Versions as Debian 12 ships them (apt-cache policy, 2026-11-28).
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget=1.21.3-1+deb12u1 \
      libgomp1=12.2.0-14+deb12u1 tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/*
# uid 1000, gid 100: the user and group of Ray's own images, which KubeRay's examples and the
# chart's runAsUser/fsGroup assume.
RUN useradd --uid 1000 --gid 100 --create-home --shell /bin/bash ray \
 && mkdir -p /app /data \
 && chown 1000:100 /app /data
COPY --from=build /opt/venv /opt/venv
COPY --chown=1000:100 configs /app/configs
COPY --from=dashboard --chown=1000:100 /src/dashboard/dist /app/dashboard/dist
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHURN_ROOT=/app \
    CHURN_CONFIG_DIR=/app/configs \
    CHURN_ENV=k8s \
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /app
USER 1000:100
# Serve (8000), Ray GCS (6379), dashboard (8265), client (10001), metrics (8080), Spark Connect.
EXPOSE 8000 6379 8265 10001 8080 15002
# The API's liveness endpoint; roles without it (Spark Connect, batch jobs) override or disable
# the check (docker-compose.yml does; Kubernetes ignores HEALTHCHECK and uses its probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-m", "churn_core.healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["churn", "--help"]
