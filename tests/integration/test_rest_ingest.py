"""The support source ingested from a real local HTTP API that fails, then recovers."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable

from churn_core.contract import load_contract
from churn_core.settings import IngestSettings, RestSourceSettings
from churn_core.tables import Tables
from pipelines.ingest import IngestError, ingest_with_retries
from pipelines.rest_source import HostNotAllowedError
from pipelines.sample_data import generate_sample_data
from pipelines.silver import build_source_silver
from tests.conftest import REPO_ROOT
from tests.fixtures.support_api import serve_support_api

pytestmark = pytest.mark.integration
CONTRACT = load_contract(REPO_ROOT / "configs" / "contracts" / "saas.yaml")
SPEC = CONTRACT.sources["support"]
TOKEN = "sekrit-token-7c1f"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rest") / "raw"
    generate_sample_data(folder, 40, seed=11, chunk_size=40, page_size=50)
    return folder


def rest_settings(url: str, max_attempts: int = 6) -> RestSourceSettings:
    return RestSourceSettings(
        base_url=url,
        token=TOKEN,
        allowed_hosts=["127.0.0.1"],
        max_attempts=max_attempts,
        backoff_initial_s=0.0,
        backoff_max_s=0.0,
        timeout_s=5.0,
    )


def record_ids(raw: Path) -> list[str]:
    import json

    return sorted(
        r["record_id"]
        for page in (raw / "support").glob("*.json")
        for r in json.loads(page.read_text())["records"]
    )


def test_api_failures_are_retried_and_every_record_lands_once(
    spark: object, raw: Path, tmp_path: Path
) -> None:
    tables = Tables(tmp_path / "lake")
    faults = ["500", "429", "badjson", "truncated", "503"]
    with serve_support_api(raw / "support", token=TOKEN, faults=faults) as api:
        summary = ingest_with_retries(
            spark,
            "support",
            SPEC,
            rest_settings(api.url),
            raw,
            tables,
            IngestSettings(),  # type: ignore[arg-type]
        )
        assert not api.faults  # every scripted fault was served
        pages = len(list((raw / "support").glob("*.json")))
        assert api.requests == pages + len(faults)
    expected = record_ids(raw)
    assert summary.read == summary.appended == len(expected)
    silver = build_source_silver(spark, CONTRACT, tables, "support")  # type: ignore[arg-type]
    assert (silver.read, silver.accepted, silver.quarantined) == (len(expected), len(expected), 0)
    assert sorted(DeltaTable(str(tables.silver("support"))).to_pandas()["record_id"]) == expected


def test_an_api_down_past_the_retry_budget_fails_cleanly_and_a_rerun_recovers(
    spark: object, raw: Path, tmp_path: Path
) -> None:
    tables = Tables(tmp_path / "lake")
    policy = IngestSettings(max_attempts=2, retry_backoff_s=0.0)
    with serve_support_api(raw / "support", token=TOKEN, faults=["500"] * 8) as api:
        with pytest.raises(IngestError) as failure:
            ingest_with_retries(
                spark, "support", SPEC, rest_settings(api.url, 3), raw, tables, policy
            )  # type: ignore[arg-type]
        message = str(failure.value)
        assert "support" in message and "500" in message and TOKEN not in message
        assert not tables.bronze("support").exists()  # nothing half-written
        # The API recovers (the script is used up): the next run ingests everything once.
        api.faults.clear()
        summary = ingest_with_retries(
            spark, "support", SPEC, rest_settings(api.url), raw, tables, policy
        )  # type: ignore[arg-type]
        again = ingest_with_retries(
            spark, "support", SPEC, rest_settings(api.url), raw, tables, policy
        )  # type: ignore[arg-type]
    assert summary.appended == len(record_ids(raw))
    assert again.read == len(record_ids(raw)) and again.appended == 0


def test_a_host_off_the_allowlist_is_never_contacted(
    spark: object, raw: Path, tmp_path: Path
) -> None:
    tables = Tables(tmp_path / "lake")
    with serve_support_api(raw / "support", token=TOKEN) as api:
        settings = rest_settings(api.url).model_copy(update={"allowed_hosts": ["api.example.com"]})
        with pytest.raises(HostNotAllowedError, match="allowed_hosts"):
            ingest_with_retries(spark, "support", SPEC, settings, raw, tables, IngestSettings())  # type: ignore[arg-type]
        assert api.requests == 0
