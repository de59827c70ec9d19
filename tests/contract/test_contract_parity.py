"""Every consumer derived from the feature contract agrees with it: Spark/Delta, XGBoost, the API."""

from __future__ import annotations

from typing import Any, get_args

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from churn_core.contract import SPARK_SOURCE_TYPES, FeatureContract
from pipelines.silver import SILVER_METADATA
from serve_apps.schemas import features_model
from tests.conftest import PipelineRun

pytestmark = pytest.mark.integration

ARROW_OF_SPARK = {
    "string": pa.string(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "date": pa.date32(),
    "boolean": pa.bool_(),
}


def delta_schema(path: Any) -> pa.Schema:
    return pa.schema(DeltaTable(str(path)).to_pyarrow_dataset().schema)


def check_run(run: PipelineRun) -> None:
    contract = run.contract
    # Gold: the Delta table's schema is the contract's, column for column.
    gold = delta_schema(run.tables.gold_features)
    assert gold.names == contract.gold_arrow_schema().names
    assert [f.type for f in gold] == [f.type for f in contract.gold_arrow_schema()]
    # Silver: Spark cast every source column to its declared type.
    for name, source in contract.sources.items():
        silver = delta_schema(run.tables.silver(name))
        assert silver.names == [*source.columns, *SILVER_METADATA]
        for column, kind in source.columns.items():
            actual = silver.field(column).type
            if kind == "timestamp":
                assert pa.types.is_timestamp(actual), column
            else:
                assert actual == ARROW_OF_SPARK[SPARK_SOURCE_TYPES[kind]], column
    # XGBoost: the registered model's feature names and types are the contract's.
    model = run.registry.load_model(run.settings.model_name, "champion")
    assert model.booster.feature_names == contract.feature_names
    assert model.booster.feature_types == contract.xgboost_feature_types
    assert model.contract == contract
    # API: one request field per feature, with the contract's categories, ranges and policy.
    check_request_model(contract)


def check_request_model(contract: FeatureContract) -> None:
    fields = features_model(contract).model_fields
    assert list(fields) == contract.feature_names
    for spec in contract.features:
        field = fields[spec.name]
        assert field.is_required() == (spec.missing == "reject"), spec.name
        if spec.type == "categorical":
            literal = (
                next(a for a in get_args(field.annotation) if get_args(a))
                if not field.is_required()
                else field.annotation
            )
            assert list(get_args(literal)) == spec.categories, spec.name
        if spec.range:
            bounds = {type(m).__name__: m for m in field.metadata}
            assert bounds["Ge"].ge == spec.range[0] and bounds["Le"].le == spec.range[1], spec.name


def test_sample_business_contract_parity(saas_run: PipelineRun) -> None:
    check_run(saas_run)


def test_telco_contract_parity(telco_run: PipelineRun) -> None:
    check_run(telco_run)
