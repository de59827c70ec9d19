"""The online feature store's shared format: Redis keys and values, and the PostgreSQL table.

``pipelines/online_store.py`` writes each customer's latest gold features with these functions and
``serve_apps/online_store.py`` reads them back, so the two sides cannot drift apart. Nothing here
imports Spark or Ray: the serving replicas import this module.

A Redis value is one JSON object ``{"snapshot_date": "2025-10-01", "features": {...}}``; the
PostgreSQL row holds the same ``features`` object as ``jsonb``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson
from psycopg import sql

__all__ = [
    "OnlineFeatures",
    "create_table_sql",
    "decode_features",
    "describe_error",
    "encode_features",
    "feature_key",
    "json_scalar",
    "lookup_sql",
    "table_identifier",
]

_REDACTED = "***"
_URL_CREDENTIALS = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


@dataclass(frozen=True)
class OnlineFeatures:
    """One customer's features as materialised, and the gold snapshot they come from."""

    features: dict[str, Any]
    snapshot_date: str


def feature_key(prefix: str, contract_name: str, customer_id: str) -> str:
    """The Redis key of one customer's features, e.g. ``churn:features:saas:C000123``."""
    return f"{prefix}:{contract_name}:{customer_id}"


def json_scalar(value: Any) -> Any:
    """``value`` as a JSON scalar: dates become ISO strings, NaN and infinities become null.

    Anything that is not a scalar is refused: a list or a mapping in a feature would reach the
    model as an object it cannot encode.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        # JSON has no NaN; a gold NaN is a missing value for the model anyway.
        return value if math.isfinite(value) else None
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"not a JSON scalar: {type(value).__name__}")


def encode_features(features: Mapping[str, Any], snapshot_date: str) -> bytes:
    """The Redis value for ``features`` taken from gold snapshot ``snapshot_date``."""
    payload = {
        "snapshot_date": snapshot_date,
        "features": {name: json_scalar(value) for name, value in features.items()},
    }
    return orjson.dumps(payload)


def decode_features(raw: bytes | str) -> OnlineFeatures:
    """Parse a value written by :func:`encode_features`; a malformed value raises ValueError."""
    payload = orjson.loads(raw)
    if not isinstance(payload, dict):
        raise ValueError("online feature value is not a JSON object")
    features = payload.get("features")
    snapshot_date = payload.get("snapshot_date")
    if not isinstance(features, dict) or not isinstance(snapshot_date, str):
        raise ValueError("online feature value lacks 'features' or 'snapshot_date'")
    return OnlineFeatures(features=features, snapshot_date=snapshot_date)


def table_identifier(table: str) -> sql.Identifier:
    """``table`` or ``schema.table`` as a quoted identifier (the first dot separates the schema).

    Any name PostgreSQL accepts is accepted, quoted exactly (case-sensitive); only names that
    cannot be identifiers at all (empty parts, NUL bytes) are refused.
    """
    schema, dot, name = table.partition(".")
    parts = (schema, name) if dot else (table,)
    if any(not part or "\x00" in part for part in parts):
        raise ValueError(f"invalid PostgreSQL table name {table!r}")
    return sql.Identifier(*parts)


def create_table_sql(table: str) -> sql.Composed:
    """``CREATE TABLE IF NOT EXISTS`` for the online feature table named ``table``."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "contract text NOT NULL, "
        "customer_id text NOT NULL, "
        "snapshot_date date NOT NULL, "
        "features jsonb NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (contract, customer_id))"
    ).format(table_identifier(table))


def lookup_sql(table: str) -> sql.Composed:
    """One customer's ``snapshot_date`` and ``features`` (parameters: contract, customer_id)."""
    return sql.SQL(
        "SELECT snapshot_date, features FROM {} WHERE contract = %s AND customer_id = %s"
    ).format(table_identifier(table))


def _password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def describe_error(error: BaseException, *urls: str | None) -> str:
    """``Type: message`` on one line, with the passwords of ``urls`` (in any spelling) masked."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    for url in urls:
        password = _password(url)
        if password:
            for spelling in sorted({password, quote(password, safe="")}, key=len, reverse=True):
                text = text.replace(spelling, _REDACTED)
    return _URL_CREDENTIALS.sub(rf"\1:{_REDACTED}@", text)
