"""Source settings: typed from YAML or CHURN_* variables, secrets kept out of reprs and errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from churn_core.faults import FAILPOINT_EXIT_CODE
from churn_core.settings import (
    FileSourceSettings,
    KafkaSourceSettings,
    PostgresSourceSettings,
    RestSourceSettings,
    load_settings,
)
from pipelines.ingest import origin_of


def test_sources_come_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_SOURCES__TRANSACTIONS__KIND", "kafka")
    monkeypatch.setenv("CHURN_SOURCES__TRANSACTIONS__BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("CHURN_SOURCES__TRANSACTIONS__TOPIC", "tx")
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__KIND", "postgres")
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__URL", "postgresql://u:hunter2@db/crm")
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__TABLE", "customers")
    settings = load_settings("test")
    assert isinstance(settings.source("transactions"), KafkaSourceSettings)
    customers = settings.source("customers")
    assert isinstance(customers, PostgresSourceSettings)
    assert "hunter2" not in repr(customers)  # the URL is a secret
    assert customers.url.get_secret_value().endswith("/crm")
    assert isinstance(settings.source("support"), FileSourceSettings)  # unlisted: files


def test_an_unknown_source_kind_is_refused_with_the_field_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHURN_SOURCES__TRANSACTIONS__KIND", "ftp")
    with pytest.raises(ValidationError, match=r"sources\.transactions"):
        load_settings("test")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com", "absolute http"),
        ("https://user:pw@example.com", "must not carry credentials"),
    ],
)
def test_rest_base_url_is_checked(url: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        RestSourceSettings(base_url=url, allowed_hosts=["example.com"])


def test_origins_name_the_system_and_object() -> None:
    from churn_core.contract import SourceSpec

    spec = SourceSpec(
        format="jsonl",
        path="tx",
        role="events",
        key=["id"],
        event_time="t",
        columns={"id": "string", "t": "timestamp"},
    )
    assert origin_of(spec, FileSourceSettings()) == "files:tx"
    kafka = KafkaSourceSettings(bootstrap_servers="b:1", topic="payments")
    assert origin_of(spec, kafka) == "kafka:payments"
    rest = RestSourceSettings(
        base_url="https://api.example.com/", allowed_hosts=["api.example.com"]
    )
    assert origin_of(spec, rest) == "rest:https://api.example.com/support/records"


def run_failpoint(active: str | None) -> int:
    code = (
        "from churn_core.faults import failpoint; failpoint('bronze.after_commit.x'); print('on')"
    )
    env = {k: v for k, v in os.environ.items() if k != "CHURN_FAILPOINTS"}
    if active is not None:
        env["CHURN_FAILPOINTS"] = active
    return subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode


def test_a_failpoint_kills_only_when_named() -> None:
    assert run_failpoint(None) == 0
    assert run_failpoint("silver.after_upsert.x") == 0
    assert run_failpoint("a,bronze.after_commit.x") == FAILPOINT_EXIT_CODE
