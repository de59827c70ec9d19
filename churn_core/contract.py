"""The feature contract: one declaration of the data set that every consumer derives from.

A contract file (``configs/contracts/<name>.yaml``) declares the sources and their typed
columns, the entity key, the snapshot and label definitions, and each feature with its type,
allowed range or categories, missing-value policy and how it is derived. Spark casts, the gold
Delta schema, the XGBoost feature types and the API's request model are all computed here, so a
new data set is a new contract file, not new code.
"""

from __future__ import annotations

import itertools
from datetime import date
from pathlib import Path
from typing import Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SourceType = Literal["string", "int", "double", "date", "timestamp", "boolean"]
FeatureType = Literal["numeric", "categorical", "boolean"]
MissingPolicy = Literal["impute", "flag", "reject"]

SPARK_SOURCE_TYPES: dict[str, str] = {
    "string": "string",
    "int": "bigint",
    "double": "double",
    "date": "date",
    "timestamp": "timestamp",
    "boolean": "boolean",
}
SPARK_FEATURE_TYPES: dict[str, str] = {
    "numeric": "double",
    "categorical": "string",
    "boolean": "boolean",
}
ARROW_FEATURE_TYPES: dict[str, pa.DataType] = {
    "numeric": pa.float64(),
    "categorical": pa.string(),
    "boolean": pa.bool_(),
}
# XGBoost names: "float" quantitative, "c" categorical (codes), "i" indicator (0/1).
XGBOOST_FEATURE_TYPES: dict[str, str] = {"numeric": "float", "categorical": "c", "boolean": "i"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """One raw source: where its files are, its format, identity and typed columns."""

    format: Literal["parquet", "csv", "jsonl", "json_pages"]
    path: str
    role: Literal["entity", "events"]
    key: list[str] = Field(min_length=1)
    event_time: str | None = None
    order_by: str | None = None
    records_field: str = "records"
    # Events more than this many days older than the newest event already accepted are
    # quarantined as late (they would silently change features of past snapshots).
    max_lateness_days: int | None = Field(None, ge=0)
    columns: dict[str, SourceType]

    @model_validator(mode="after")
    def _columns_cover_identity(self) -> SourceSpec:
        named = [*self.key, *(c for c in (self.event_time, self.order_by) if c)]
        missing = [c for c in named if c not in self.columns]
        if missing:
            raise ValueError(f"key/event_time/order_by columns not declared: {missing}")
        if self.role == "events" and not self.event_time:
            raise ValueError("an events source needs event_time")
        return self


class Aggregate(_Strict):
    """Conditional aggregation of an events source over a window before the snapshot."""

    source: str
    fn: Literal["count", "sum", "avg", "max", "min"]
    value: str | None = None
    filter: str | None = None
    window_days: int | None = Field(None, ge=1)
    default: float | None = None


class Recency(_Strict):
    """Days from the last matching event before the snapshot to the snapshot."""

    source: str
    filter: str | None = None


class Derivation(_Strict):
    """Exactly one way to compute a feature."""

    column: str | None = None
    sql: str | None = None
    aggregate: Aggregate | None = None
    recency: Recency | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Derivation:
        given = [
            k for k in ("column", "sql", "aggregate", "recency") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"derive needs exactly one of column/sql/aggregate/recency, got {given}"
            )
        return self

    @property
    def event_source(self) -> str | None:
        """The events source an aggregate or recency reads (None for column and sql)."""
        reference = self.aggregate or self.recency
        return reference.source if reference else None


class FeatureSpec(_Strict):
    """One model feature: type, allowed values, missing-value policy and derivation."""

    name: str
    type: FeatureType
    description: str = ""
    range: tuple[float, float] | None = None
    categories: list[str] | None = None
    missing: MissingPolicy = "flag"
    impute_value: float | str | bool | None = None
    derive: Derivation

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"{self.name}: a categorical feature needs categories")
        if self.type != "categorical" and self.categories:
            raise ValueError(f"{self.name}: only categorical features have categories")
        if self.range and self.range[0] > self.range[1]:
            raise ValueError(f"{self.name}: range min {self.range[0]} > max {self.range[1]}")
        if self.missing == "impute" and self.impute_value is None:
            raise ValueError(f"{self.name}: missing=impute needs impute_value")
        imputed_category = self.type == "categorical" and self.missing == "impute"
        if imputed_category and str(self.impute_value) not in (self.categories or []):
            raise ValueError(f"{self.name}: impute_value must be one of its categories")
        return self

    @property
    def spark_type(self) -> str:
        """Spark SQL type of this feature in the gold table."""
        return SPARK_FEATURE_TYPES[self.type]

    @property
    def xgboost_type(self) -> str:
        """XGBoost feature type of this feature."""
        return XGBOOST_FEATURE_TYPES[self.type]


class SnapshotSpec(_Strict):
    """Point-in-time definition: features use events before each date, labels the horizon after."""

    column: str = "snapshot_date"
    dates: list[date] = Field(min_length=1)
    horizon_days: int = Field(ge=1)
    # Entity column holding when an entity starts to exist (e.g. signup date): entities are in a
    # snapshot only from then on, and only while the label event has not happened yet.
    entity_since: str


class LabelSpec(_Strict):
    """How the churn label is defined."""

    name: str = "churned"
    kind: Literal["column", "event_within_horizon"]
    source: str
    column: str
    positive: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _positive_for_column(self) -> LabelSpec:
        if self.kind == "column" and not self.positive:
            raise ValueError("label kind 'column' needs the positive values")
        return self


class SegmentSpec(_Strict):
    """One way to slice the evaluation: by a feature's values, or by bins of a numeric feature.

    Segments name model features because the held-out split the trainer evaluates holds only
    the encoded features and the label.
    """

    column: str
    # Ascending edges of right-open bins [e0, e1), [e1, e2), ...; numeric features only.
    bins: list[float] | None = Field(None, min_length=2)
    # Prefix of the segment keys ("tenure_band=[0, 90)"); the column name by default.
    name: str | None = None

    @model_validator(mode="after")
    def _ascending_bins(self) -> SegmentSpec:
        if self.bins and any(b <= a for a, b in itertools.pairwise(self.bins)):
            raise ValueError(f"segment {self.label}: bins must be strictly ascending")
        return self

    @property
    def label(self) -> str:
        """The prefix of this segment's keys."""
        return self.name or self.column


class ReportSpec(_Strict):
    """What the evaluation report slices by, and when a slice is too small to score."""

    segments: list[SegmentSpec] = Field(default_factory=list)
    # A segment's ROC-AUC and PR-AUC are reported (not null) only with at least this many rows
    # and this many rows of each class: AUCs of a handful of rows are noise, not evidence.
    min_segment_rows: int = Field(50, ge=1)
    min_class_rows: int = Field(5, ge=1)


class BusinessSpec(_Strict):
    """What the business metrics of batch scoring weigh and slice by."""

    # A customer's monthly revenue (a numeric feature): revenue at risk is the sum over
    # customers of revenue x probability of churn.
    revenue: str
    # The slices reported besides the whole base; the report's segments when not given.
    segments: list[SegmentSpec] | None = None


class FeatureContract(_Strict):
    """A whole data set's contract."""

    name: str
    description: str = ""
    entity_key: str
    sources: dict[str, SourceSpec]
    snapshot: SnapshotSpec | None = None
    label: LabelSpec
    features: list[FeatureSpec] = Field(min_length=1)
    report: ReportSpec | None = None
    business: BusinessSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FeatureContract:
        entities = [n for n, s in self.sources.items() if s.role == "entity"]
        if len(entities) != 1:
            raise ValueError(f"exactly one entity source is required, got {entities}")
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate feature names: {duplicates}")
        reserved = {self.entity_key, self.label.name, self.snapshot_column}
        clash = sorted(reserved.intersection(names))
        if clash:
            raise ValueError(f"feature names clash with key/label/snapshot columns: {clash}")
        for name, source in self.sources.items():
            if source.role == "events" and self.entity_key not in source.columns:
                raise ValueError(f"events source {name!r} lacks the entity key {self.entity_key!r}")
        if self.snapshot and self.snapshot.entity_since not in self.sources[entities[0]].columns:
            raise ValueError(
                f"snapshot.entity_since {self.snapshot.entity_since!r} is not an entity column"
            )
        if self.label.source not in self.sources:
            raise ValueError(f"label source {self.label.source!r} is not a declared source")
        for feature in self.features:
            event_source = feature.derive.event_source
            if event_source is not None and event_source not in self.sources:
                raise ValueError(f"{feature.name}: unknown source {event_source!r}")
            if event_source is not None and self.snapshot is None:
                raise ValueError(f"{feature.name}: aggregates need a snapshot definition")
        return self

    @model_validator(mode="after")
    def _report_segments_are_features(self) -> FeatureContract:
        if self.report is None:
            return self
        labels = [segment.label for segment in self.report.segments]
        duplicates = sorted({n for n in labels if labels.count(n) > 1})
        if duplicates:
            raise ValueError(f"report: duplicate segment names: {duplicates}")
        names = set(self.feature_names)
        for segment in self.report.segments:
            if segment.column not in names:
                raise ValueError(f"report: segment column {segment.column!r} is not a feature")
            numeric = self.feature(segment.column).type == "numeric"
            if segment.bins and not numeric:
                raise ValueError(f"report: segment {segment.label!r} bins a non-numeric feature")
            if numeric and not segment.bins:
                # One segment per distinct value of a continuous feature would be thousands.
                raise ValueError(f"report: numeric segment {segment.label!r} needs bins")
        return self

    @model_validator(mode="after")
    def _business_names_features(self) -> FeatureContract:
        if self.business is None:
            return self
        names = set(self.feature_names)
        if (
            self.business.revenue not in names
            or self.feature(self.business.revenue).type != "numeric"
        ):
            raise ValueError(
                f"business: revenue {self.business.revenue!r} is not a numeric feature"
            )
        for segment in self.business.segments or []:
            if segment.column not in names:
                raise ValueError(f"business: segment column {segment.column!r} is not a feature")
            if (self.feature(segment.column).type == "numeric") != bool(segment.bins):
                raise ValueError(
                    f"business: segment {segment.label!r} needs bins exactly when it is numeric"
                )
        return self

    @property
    def business_segments(self) -> list[SegmentSpec]:
        """The business metrics' segments: their own, else the evaluation report's."""
        if self.business is None:
            return []
        if self.business.segments is not None:
            return self.business.segments
        return self.report.segments if self.report else []

    @property
    def entity_source_name(self) -> str:
        """Name of the single entity (one row per customer) source."""
        return next(n for n, s in self.sources.items() if s.role == "entity")

    @property
    def snapshot_column(self) -> str:
        """Name of the snapshot column in gold ('' when the data set has no snapshots)."""
        return self.snapshot.column if self.snapshot else ""

    @property
    def feature_names(self) -> list[str]:
        """Model input names, in model order."""
        return [f.name for f in self.features]

    @property
    def xgboost_feature_types(self) -> list[str]:
        """XGBoost feature types, in model order."""
        return [f.xgboost_type for f in self.features]

    def feature(self, name: str) -> FeatureSpec:
        """The feature called ``name``."""
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def gold_columns(self) -> list[tuple[str, str]]:
        """(name, Spark SQL type) of every gold column, in table order."""
        columns = [(self.entity_key, "string")]
        if self.snapshot:
            columns.append((self.snapshot.column, "date"))
        columns += [(f.name, f.spark_type) for f in self.features]
        columns.append((self.label.name, "int"))
        return columns

    def gold_arrow_schema(self) -> pa.Schema:
        """The gold table's Arrow schema (what Delta stores)."""
        arrow: dict[str, pa.DataType] = {
            "string": pa.string(),
            "date": pa.date32(),
            "int": pa.int32(),
            "double": pa.float64(),
            "boolean": pa.bool_(),
        }
        return pa.schema([pa.field(name, arrow[kind]) for name, kind in self.gold_columns()])

    def to_yaml(self) -> str:
        """Serialise the contract (stored with every model version)."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


def load_contract(path: Path) -> FeatureContract:
    """Load and validate a contract file; errors name the file and the field."""
    if not path.exists():
        raise FileNotFoundError(f"feature contract not found: {path}")
    try:
        return FeatureContract.model_validate(yaml.safe_load(path.read_text()))
    except ValueError as error:
        raise ValueError(f"invalid feature contract {path}: {error}") from error


def parse_contract(text: str) -> FeatureContract:
    """Parse a contract from YAML text (as stored with a model version)."""
    return FeatureContract.model_validate(yaml.safe_load(text))
