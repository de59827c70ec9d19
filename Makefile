# Two commands matter: `make run` (everything end to end on embedded defaults) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test install lint audit unit integration services benchmark clean lock

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install services
	$(BIN)/churn run

test: install services lint audit
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
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
