# Two commands matter: `make run` (everything end to end on embedded defaults) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test install lint audit unit integration services benchmark clean lock dashboard dashboard-test

# The web dashboard (dashboard/: React, Vite, npm). Its dependencies are installed from the
# committed lock file again only when package.json or the lock changed.
DASHBOARD_STAMP := dashboard/node_modules/.installed-stamp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(DASHBOARD_STAMP): dashboard/package.json dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund
	touch $(DASHBOARD_STAMP)

# Type-check and build the static files the API serves under /ui (dashboard/dist).
dashboard: $(DASHBOARD_STAMP)
	cd dashboard && npm run build

# The dashboard's unit tests (Vitest); its browser tests run in pytest against the served app.
dashboard-test: dashboard
	cd dashboard && npm test

run: install services dashboard
	$(BIN)/churn run

test: install services lint audit dashboard-test
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Known vulnerabilities of the pinned set (allow-list with reasons: security/), secrets in
# tracked files (reviewed fixtures: security/secrets-baseline.json). Static security checks
# are ruff's S rules in `lint`.
audit: install
	$(BIN)/python scripts/security_audit.py $(AUDIT_FLAGS)

unit: install
	$(BIN)/pytest tests/unit

integration: install services
	$(BIN)/pytest tests/integration tests/contract

services:
	bash scripts/services.sh

benchmark: install
	$(BIN)/python -m benchmarks.train_overhead

# The image's dependency set (Dockerfile), with hashes; tests/unit/test_image.py checks it
# against pyproject.toml's pins and the tested virtualenv.
lock: install
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-header --annotation-style line -q -o requirements.lock

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache dashboard/dist dashboard/node_modules
