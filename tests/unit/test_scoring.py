"""Batch scoring's pure pieces: Arrow encoding, scoring a batch, reasons, ids, the plan.

No Spark and no Ray here: Delta tables are written with delta-rs into ``tmp_path`` and the
model is the unit tests' tiny one, registered in a real (local) registry.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pydantic import SecretStr, ValidationError

from churn_core.contract import FeatureContract, load_contract
from churn_core.model import ChurnModel, FeatureEncoder
from churn_core.prediction_log import query_delta
from churn_core.registry import LocalRegistry, RegistryError
from churn_core.settings import PACKAGE_CONFIG_DIR, ScoringSettings, load_settings
from churn_core.tables import Tables
from pipelines.scoring import (
    SCORES_SCHEMA,
    BatchScorer,
    ModelRef,
    ReasonsMode,
    ScoringError,
    SliceState,
    cached_model,
    encode_arrow,
    ensure_scores_table,
    plan_scoring,
    reasons_json,
    slice_state,
    top_contributions,
)
from pipelines.scoring_publish import (
    batch_prediction_id,
    create_scores_table_sql,
    upsert_sql,
)
from pipelines.scoring_ray import with_slice_columns
from tests.unit.conftest import register_tiny, tiny_frame

CONTRACTS = [
    load_contract(PACKAGE_CONFIG_DIR / "contracts" / "saas.yaml"),
    load_contract(PACKAGE_CONFIG_DIR / "contracts" / "telco.yaml"),
]


def random_features(contract: FeatureContract, rows: int, seed: int = 0) -> pa.Table:
    """Gold-like columns with nulls, NaNs, unknown categories and imputable gaps."""
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {}
    for spec in contract.features:
        missing = rng.random(rows) < 0.15
        if spec.type == "categorical":
            choices = [*(spec.categories or []), "never-seen"]
            values = rng.choice(choices, rows).astype(object)
            values[missing] = None
            columns[spec.name] = pa.array(values, pa.string())
        elif spec.type == "boolean":
            flags = (rng.random(rows) < 0.5).astype(object)
            flags[missing] = None
            columns[spec.name] = pa.array(flags, pa.bool_())
        else:
            numbers = rng.normal(50, 30, rows)
            numbers[rng.random(rows) < 0.05] = np.nan  # NaN, not null: pandas treats it alike
            columns[spec.name] = pa.array(numbers, pa.float64(), mask=missing)
    return pa.table(columns)


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.name)
def test_arrow_encoding_equals_the_models_pandas_encoding(contract: FeatureContract) -> None:
    table = random_features(contract, 3000)
    expected = FeatureEncoder(contract).encode_frame(table.to_pandas())
    np.testing.assert_array_equal(encode_arrow(contract, table), expected)


def test_arrow_encoding_accepts_every_string_layout(tiny_contract: FeatureContract) -> None:
    table = random_features(tiny_contract, 500, seed=3)
    expected = encode_arrow(tiny_contract, table)
    plan = table.column("plan")
    for variant in (
        plan.cast(pa.large_string()),
        plan.cast(pa.string_view()),
        plan.dictionary_encode(),
    ):
        changed = table.set_column(table.schema.get_field_index("plan"), "plan", variant)
        np.testing.assert_array_equal(encode_arrow(tiny_contract, changed), expected)


@pytest.fixture
def model_ref(tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract) -> ModelRef:
    registry = LocalRegistry(tmp_path / "registry")
    meta = register_tiny(registry, tiny_model_bytes, tiny_contract, "tiny")
    return ModelRef(
        artifacts=registry.artifacts,
        directory=meta.artifact_dir,
        sha256=meta.artifact_sha256,
        name="tiny",
        version=meta.version,
        contract=tiny_contract,
    )


def gold_batch(rows: int, seed: int = 1) -> pa.Table:
    frame = tiny_frame(rows, seed).drop(columns=["churned"])
    frame.insert(0, "id", [f"C{i:05d}" for i in range(rows)])
    frame.loc[::7, "plan"] = None  # a flagged missing category
    frame.loc[::11, "autopay"] = None  # an imputed boolean
    return pa.Table.from_pandas(frame, preserve_index=False)


def scorer(ref: ModelRef, reasons: ReasonsMode = "exact", top: int = 3) -> BatchScorer:
    return BatchScorer(model=ref, threshold=0.3, top_reasons=top, reasons=reasons, entity_key="id")


@pytest.mark.parametrize("reasons", ["exact", "approximate"])
def test_a_batch_scores_as_the_model_predicts_and_explains(
    model_ref: ModelRef, tiny_model: ChurnModel, reasons: ReasonsMode
) -> None:
    batch = gold_batch(400)
    scored = scorer(model_ref, reasons).score(batch)
    assert scored.schema == pa.schema([SCORES_SCHEMA.field(n) for n in scored.schema.names])
    frame = batch.to_pandas()
    expected = tiny_model.predict_frame(frame)
    np.testing.assert_allclose(scored.column("probability").to_numpy(), expected, rtol=0, atol=0)
    assert scored.column("churn").to_pylist() == [bool(p >= 0.3) for p in expected]
    assert scored.column("customer_id").to_pylist() == frame["id"].tolist()
    explained = tiny_model.explain_matrix(
        tiny_model.encoder.encode_frame(frame), 3, approximate=reasons == "approximate"
    )
    for text, reasons_of_row in zip(scored.column("reasons").to_pylist(), explained, strict=True):
        parsed = json.loads(text)
        assert [r["feature"] for r in parsed] == [r.feature for r in reasons_of_row]
        for got, want in zip(parsed, reasons_of_row, strict=True):
            assert math.isclose(got["contribution"], want.contribution, rel_tol=1e-6)


def test_reasons_can_be_left_out(model_ref: ModelRef) -> None:
    batch = gold_batch(10)
    assert scorer(model_ref, "none").score(batch).column("reasons").null_count == 10
    assert (
        scorer(model_ref, "exact", top=0).score(batch).column("reasons").to_pylist() == ["[]"] * 10
    )


def test_the_model_is_loaded_once_per_process_and_checked(model_ref: ModelRef) -> None:
    assert cached_model(model_ref, 1) is cached_model(model_ref, 1)
    tampered = ModelRef(
        artifacts=model_ref.artifacts,
        directory=model_ref.directory,
        sha256="0" * 64,
        name=model_ref.name,
        version=model_ref.version,
        contract=model_ref.contract,
    )
    with pytest.raises(RegistryError, match="checksum"):
        cached_model(tampered, 1)


def test_top_contributions_orders_by_absolute_value() -> None:
    contributions = np.array([[0.1, -0.5, 0.3, 0.0], [2.0, 0.0, -3.0, 1.0]], np.float32)
    order, values = top_contributions(contributions, 2)
    assert order.tolist() == [[1, 2], [2, 0]]
    np.testing.assert_array_equal(values, np.array([[-0.5, 0.3], [-3.0, 2.0]], np.float32))


def test_reasons_json_is_valid_json_for_any_feature_name() -> None:
    names = ['quote"d', "back\\slash", "plain"]
    order = np.array([[0, 1, 2], [2, 1, 0]])
    values = np.array([[1.5, -2.25, 1e-7], [0.0, 3.0, -1.0]], np.float32)
    texts = reasons_json(names, order, values).to_pylist()
    assert json.loads(texts[0]) == [
        {"feature": 'quote"d', "contribution": 1.5},
        {"feature": "back\\slash", "contribution": -2.25},
        {"feature": "plain", "contribution": pytest.approx(1e-7)},
    ]
    assert [r["feature"] for r in json.loads(texts[1])] == ["plain", "back\\slash", 'quote"d']


def test_prediction_ids_are_deterministic_and_match_the_sql(tmp_path: Path) -> None:
    first = batch_prediction_id("churn-saas", 3, date(2025, 10, 1), "C1")
    assert first == batch_prediction_id("churn-saas", 3, date(2025, 10, 1), "C1")
    assert len(first) == 32
    assert first != batch_prediction_id("churn-saas", 4, date(2025, 10, 1), "C1")
    assert first != batch_prediction_id("churn-saas", 3, date(2025, 9, 1), "C1")
    # The formula the publish step runs in DataFusion (pipelines/scoring_publish._log_rows).
    path = tmp_path / "t"
    write_deltalake(
        str(path),
        pa.table(
            {
                "model_name": ["churn-saas"],
                "model_version": pa.array([3], pa.int64()),
                "snapshot_date": pa.array([date(2025, 10, 1)]),
                "customer_id": ["C1"],
            }
        ),
    )
    sql_id = query_delta(
        {"s": path},
        "SELECT substr(encode(sha256(concat_ws('|', 'batch_scoring', s.model_name, "
        "CAST(s.model_version AS VARCHAR), CAST(s.snapshot_date AS VARCHAR), s.customer_id)), "
        "'hex'), 1, 32) AS id FROM s",
    )
    assert sql_id.column("id").to_pylist() == [first]


def test_postgres_statements_quote_the_table_name() -> None:
    assert '"ops"."scores"' in create_scores_table_sql("ops.scores").as_string(None)
    upsert = upsert_sql("customer_scores").as_string(None)
    assert "ON CONFLICT (contract, customer_id) DO UPDATE" in upsert
    # The newer-only rule: snapshot first, then model version, then scoring time.
    assert (
        "(EXCLUDED.snapshot_date, EXCLUDED.model_version, EXCLUDED.scored_at) > "
        "(t.snapshot_date, t.model_version, t.scored_at)"
    ) in upsert


def test_scoring_settings_hide_the_url_and_refuse_unknown_fields() -> None:
    settings = ScoringSettings(postgres_url=SecretStr("postgresql://u:pw@h/db"))
    assert "pw" not in repr(settings)
    with pytest.raises(ValidationError):
        ScoringSettings.model_validate({"enigne": "ray"})
    assert load_settings("test").scoring.engine == "spark"


# --- the plan and the slice, over real Delta tables --------------------------------------------


@pytest.fixture
def lake(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> tuple[Tables, LocalRegistry]:
    """A gold table of the tiny contract (no snapshots) and a registry whose champion is tiny."""
    tables = Tables(tmp_path / "lake" / "tiny")
    gold = gold_batch(250).append_column("y", pa.array([0] * 250, pa.int32()))
    write_deltalake(str(tables.gold_features), gold)
    registry = LocalRegistry(tmp_path / "registry")
    meta = register_tiny(registry, tiny_model_bytes, tiny_contract, "churn-tiny")
    registry.set_alias("churn-tiny", "champion", meta.version)
    return tables, registry


def test_a_plan_pins_gold_and_counts_its_rows(lake: tuple[Tables, LocalRegistry]) -> None:
    tables, registry = lake
    settings = load_settings("test").model_copy(update={"dataset": "tiny"})
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    plan = plan_scoring(settings, tables, registry, now=now)
    assert (plan.rows, plan.gold_version, plan.model.version) == (250, 0, 1)
    assert plan.threshold == 0.3  # the version's own threshold
    assert plan.top_reasons == settings.serve.top_reasons  # scoring.top_reasons unset
    # No snapshots in this contract: the day of the run names the slice.
    assert plan.snapshot == date(2026, 1, 2)
    assert plan.slice_predicate == "snapshot_date = DATE '2026-01-02' AND model_version = 1"


def test_a_slice_is_complete_only_for_its_gold_version(
    lake: tuple[Tables, LocalRegistry],
) -> None:
    tables, registry = lake
    settings = load_settings("test").model_copy(update={"dataset": "tiny"})
    plan = plan_scoring(settings, tables, registry)
    ensure_scores_table(plan.scores_path)
    assert DeltaTable(plan.scores_path).schema().to_arrow() == pa.schema(SCORES_SCHEMA)
    assert slice_state(plan) == SliceState(rows=0, gold_versions=(), scored_at=None)
    scored = plan.scorer().score(query_delta({"gold": plan.gold_path}, "SELECT * FROM gold"))
    write_deltalake(
        plan.scores_path,
        pa.Table.from_batches([with_slice_columns(scored, plan.slice_values())]),
        mode="append",
    )
    state = slice_state(plan)
    assert state.complete_for(plan)
    assert state.scored_at == plan.scored_at
    assert not state.complete_for(replace(plan, gold_version=plan.gold_version + 1))
    assert not state.complete_for(replace(plan, rows=plan.rows + 1))


def test_a_missing_gold_table_is_one_clear_error(
    tmp_path: Path, lake: tuple[Tables, LocalRegistry]
) -> None:
    _, registry = lake
    settings = load_settings("test").model_copy(update={"dataset": "tiny"})
    with pytest.raises(ScoringError, match="run `churn features` first"):
        plan_scoring(settings, Tables(tmp_path / "nowhere"), registry)
