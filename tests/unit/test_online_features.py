"""The online store's shared format: keys, values and the PostgreSQL DDL."""

from __future__ import annotations

import math
from datetime import date

import orjson
import pytest

from churn_core.online_features import (
    OnlineFeatures,
    create_table_sql,
    decode_features,
    describe_error,
    encode_features,
    feature_key,
    lookup_sql,
    table_identifier,
)


def test_feature_key_format() -> None:
    assert feature_key("churn:features", "saas", "C000123") == "churn:features:saas:C000123"


def test_round_trip_keeps_scalars_and_nulls() -> None:
    features = {"fee": 19.5, "age": 42, "plan": "basic", "autopay": False, "tenure": None}
    decoded = decode_features(encode_features(features, "2025-10-01"))
    assert decoded == OnlineFeatures(features=features, snapshot_date="2025-10-01")
    assert decoded.features["autopay"] is False
    assert decoded.features["tenure"] is None


def test_dates_become_iso_strings_and_nan_becomes_null() -> None:
    decoded = decode_features(
        encode_features({"since": date(2025, 3, 1), "x": math.nan, "y": math.inf}, "2025-10-01")
    )
    assert decoded.features == {"since": "2025-03-01", "x": None, "y": None}


def test_non_scalars_are_refused() -> None:
    with pytest.raises(TypeError, match="not a JSON scalar"):
        encode_features({"bad": [1, 2]}, "2025-10-01")


@pytest.mark.parametrize("raw", [b"[]", b'{"features": {}}', b'{"snapshot_date": "x"}'])
def test_malformed_values_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_features(raw)


def test_value_is_compact_json() -> None:
    payload = orjson.loads(encode_features({"a": 1.0}, "2025-10-01"))
    assert payload == {"snapshot_date": "2025-10-01", "features": {"a": 1.0}}


@pytest.mark.parametrize(
    ("table", "quoted"),
    [
        ("online_features", '"online_features"'),
        ("serving.online_features", '"serving"."online_features"'),
        ("Odd-Name", '"Odd-Name"'),
        ('we"ird', '"we""ird"'),
        ("select", '"select"'),
        ("tëst table", '"tëst table"'),
    ],
)
def test_identifiers_are_quoted_exactly(table: str, quoted: str) -> None:
    assert table_identifier(table).as_string() == quoted
    ddl = create_table_sql(table).as_string()
    assert ddl.startswith(f"CREATE TABLE IF NOT EXISTS {quoted} (")
    assert "PRIMARY KEY (contract, customer_id)" in ddl
    assert f"FROM {quoted} WHERE" in lookup_sql(table).as_string()


@pytest.mark.parametrize("table", ["", "schema.", ".table", "nul\x00name"])
def test_impossible_identifiers_are_refused(table: str) -> None:
    with pytest.raises(ValueError, match="invalid PostgreSQL table name"):
        table_identifier(table)


def test_describe_error_masks_passwords() -> None:
    url = "postgresql://app:s3cr%40t@db:5432/churn"
    error = RuntimeError(f"failed for {url} with password s3cr@t\nsecond line")
    text = describe_error(error, url)
    assert "s3cr" not in text
    assert "\n" not in text
    assert text.startswith("RuntimeError: failed for postgresql://app:***@db:5432/churn")
