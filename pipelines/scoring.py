"""Batch scoring: every customer of a gold snapshot, scored by the registry's ``champion``.

A run has three steps; the engine only does the middle one:

1. **Plan** (driver, :func:`plan_scoring`): resolve the alias to one version, pin the gold Delta
   version, choose the snapshot (the latest unless given) and count its customers. Workers get
   the model's *location* (artifact store, folder, sha256), never its bytes.
2. **Score and commit** (:func:`score_with_spark` here, ``pipelines/scoring_ray.py`` for Ray
   Data): gold rows in Arrow batches through :class:`BatchScorer` (the model is loaded once per
   worker process, cached by the artifact's sha256), then ONE Delta commit that replaces exactly
   the (snapshot, model version) slice of the scores table (``replaceWhere`` on the partition
   columns). A job killed before that commit leaves only unreferenced data files: readers never
   see part of a slice.
3. **Publish** (driver, ``pipelines/scoring_publish.py``): the slice as read back from Delta
   goes to PostgreSQL (each customer's current risk) and to the prediction log; both are
   idempotent, so a re-run after a crash between the commit and the end of the job completes
   them.

Re-running is a no-op for the Delta table: a slice that already holds every customer of the
snapshot, scored from the same gold version, is skipped (its ``scored_at`` and the table
version stay as they were). A slice scored from an older gold version (gold was rebuilt since:
late events can change a past snapshot's features) is scored again and replaced whole. A
change of reasons settings alone does not make a slice incomplete: ``force`` re-scores it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from churn_core.contract import FeatureContract
from churn_core.encryption import FileKey
from churn_core.faults import failpoint
from churn_core.logging import get_logger
from churn_core.model import ChurnModel
from churn_core.registry import ARTIFACT_NAME, ArtifactStore, Registry
from churn_core.settings import Settings
from churn_core.tables import Tables

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "SCORES_SCHEMA",
    "BatchScorer",
    "ModelRef",
    "ReasonsMode",
    "ScoringError",
    "ScoringPlan",
    "SliceState",
    "WriteSummary",
    "encode_arrow",
    "ensure_scores_table",
    "plan_scoring",
    "query",
    "reasons_json",
    "score_with_spark",
    "slice_state",
    "top_contributions",
]

log = get_logger(__name__)

ReasonsMode = Literal["exact", "approximate", "none"]

# Failpoints (churn_core.faults): scored rows handed to the writer, not yet committed; and
# the Delta slice committed, PostgreSQL and the prediction log not yet written.
FAILPOINT_BEFORE_COMMIT = "score.before_commit"
FAILPOINT_AFTER_COMMIT = "score.after_delta_commit"

# What the scorer computes per row; the rest of a scores row is the same for the whole slice.
SCORED_FIELDS: tuple[pa.Field, ...] = (
    pa.field("customer_id", pa.string()),
    pa.field("probability", pa.float64()),
    pa.field("churn", pa.bool_()),
    # JSON: [{"feature": ..., "contribution": ...}, ...], largest |contribution| first (the
    # API's reasons). Text, not array<struct>: Sail's replaceWhere fails on any list column.
    pa.field("reasons", pa.string()),
)
SLICE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("threshold", pa.float64()),
    pa.field("model_name", pa.string()),
    # The gold table version the features came from: a slice is complete only for it.
    pa.field("gold_version", pa.int64()),
    pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    pa.field("snapshot_date", pa.date32()),
    pa.field("model_version", pa.int64()),
)
# Every column nullable: Spark writes nullable columns, and either engine may create the table.
SCORES_SCHEMA = pa.schema([*SCORED_FIELDS, *SLICE_FIELDS])
PARTITION_COLUMNS = ["snapshot_date", "model_version"]
SCORED_DDL = "customer_id string, probability double, churn boolean, reasons string"


class ScoringError(RuntimeError):
    """Scoring cannot run or failed; the message is one line and never carries a password."""


# --- the model, by location ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """Where a worker finds a model version: the artifact store, the folder and the checksum.

    Small and picklable: it travels in the scoring function's closure instead of the model,
    whose bytes are read (and verified) by each worker process once. An encrypted artifact
    travels with its ``file_key`` (the unwrapped data key of model.ubj alone): the pickled
    store leaves the key-encryption keys behind, so a closure never carries them.
    """

    artifacts: ArtifactStore
    directory: str
    sha256: str
    name: str
    version: int
    contract: FeatureContract
    file_key: FileKey | None = None

    def load(self, threads: int) -> ChurnModel:
        """Read the artifact (decrypted, checksum-verified) and build the model."""
        raw = self.artifacts.read(
            self.directory, ARTIFACT_NAME, self.sha256, file_key=self.file_key
        )
        return ChurnModel.from_bytes(raw, self.contract, version=self.version, nthread=threads)


# One model per artifact per process: Spark partitions, Sail's in-process UDFs and the tasks
# a Ray worker runs all find it here after the first load (the first caller's thread count
# stays with it).
_MODELS: dict[str, ChurnModel] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(ref: ModelRef, threads: int) -> ChurnModel:
    """The model of ``ref``, loaded at most once per process (keyed by its sha256)."""
    model = _MODELS.get(ref.sha256)
    if model is None:
        with _MODELS_LOCK:
            model = _MODELS.get(ref.sha256)
            if model is None:
                model = _MODELS[ref.sha256] = ref.load(threads)
                log.info("scoring_model_loaded", model=ref.name, version=ref.version)
    return model


# --- scoring an Arrow batch ---------------------------------------------------------------------


def _string_column(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # Readers hand strings over as string_view, large_string or dictionaries; kernels below
    # want plain strings.
    return column if column.type == pa.string() else pc.cast(column, pa.string())


def _float_column(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    values = pc.cast(column, pa.float32()).to_numpy(zero_copy_only=False)
    # Nulls arrive as NaN (float arrays convert that way); copy so imputation may write.
    return np.array(values, dtype=np.float32, copy=True)


def _number(value: object) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    raise ScoringError(f"impute value {value!r} of a numeric or boolean feature is not a number")


def encode_arrow(contract: FeatureContract, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """The model's float32 matrix for an Arrow batch: ``FeatureEncoder.encode_frame`` without pandas.

    The same encoding, column for column (a unit test compares the two on nulls, NaNs and
    unknown categories): a category becomes its index in the contract's list (unknown or
    missing: NaN), booleans 0/1, and the ``impute`` policy fills nulls and NaNs. About 3x
    faster than converting the batch to pandas first, which would cap batch scoring below the
    model's own speed.
    """
    columns = []
    for spec in contract.features:
        column = batch.column(spec.name)
        if spec.type == "categorical":
            column = _string_column(column)
            if spec.missing == "impute":
                column = pc.fill_null(column, pa.scalar(str(spec.impute_value), pa.string()))
            codes = pc.index_in(column, value_set=pa.array(spec.categories or [], pa.string()))
            columns.append(_float_column(codes))
            continue
        values = _float_column(column)
        if spec.missing == "impute":
            values[np.isnan(values)] = _number(spec.impute_value)
        columns.append(values)
    if not columns:
        return np.empty((batch.num_rows, 0), dtype=np.float32)
    return np.column_stack(columns)


def top_contributions(contributions: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the indices and values of the ``top_k`` largest |contributions|, largest first.

    ``contributions`` holds one column per feature (no bias column). The same ordering as
    ``ChurnModel.explain_matrix``, for a whole batch in one numpy call instead of a Python loop
    per row.
    """
    order = np.argsort(-np.abs(contributions), axis=1)[:, :top_k]
    return order, np.take_along_axis(contributions, order, axis=1)


def reasons_json(names: Sequence[str], order: np.ndarray, values: np.ndarray) -> pa.Array:
    """Each row's reasons as JSON text, built column-wise with Arrow string kernels.

    ``[{"feature":"tenure_days","contribution":-0.53},...]``: the shape of the API's reasons.
    Contributions are float32 (XGBoost's), written in their shortest round-trip form.
    """
    rows = len(order)
    if order.shape[1] == 0:
        return pa.array(["[]"] * rows, pa.string())
    quoted = np.array([json.dumps(name) for name in names], dtype=object)
    parts: list[pa.Array | pa.Scalar] = [pa.scalar("[")]
    for rank in range(order.shape[1]):
        parts.append(pa.scalar('{"feature":' if rank == 0 else ',{"feature":'))
        parts.append(pa.array(quoted[order[:, rank]], pa.string()))
        parts.append(pa.scalar(',"contribution":'))
        parts.append(pc.cast(pa.array(values[:, rank].astype(np.float32)), pa.string()))
        parts.append(pa.scalar("}"))
    parts.append(pa.scalar("]"))
    # Scalars broadcast: one kernel call joins every row's pieces.
    return pc.binary_join_element_wise(*parts, "")


@dataclass(frozen=True)
class BatchScorer:
    """Scores Arrow batches of gold rows: probability, label at the threshold, top reasons.

    A plain callable over an iterator of batches, so it is Spark's ``mapInArrow`` function as
    it is; the Ray Data path calls :meth:`score` per batch.
    """

    model: ModelRef
    threshold: float
    top_reasons: int
    reasons: ReasonsMode
    entity_key: str
    threads: int = 1

    def score(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        """The scored columns (:data:`SCORED_FIELDS`) of one batch."""
        model = cached_model(self.model, self.threads)
        matrix = encode_arrow(model.contract, batch)
        probability = model.predict_matrix(matrix)
        customer = _string_column(batch.column(self.entity_key))
        if isinstance(customer, pa.ChunkedArray):
            customer = customer.combine_chunks()
        return pa.RecordBatch.from_arrays(
            [
                customer,
                pa.array(probability, pa.float64()),
                pa.array(probability >= self.threshold, pa.bool_()),
                self._reasons(model, matrix),
            ],
            schema=pa.schema(SCORED_FIELDS),
        )

    def _reasons(self, model: ChurnModel, matrix: np.ndarray) -> pa.Array:
        if self.reasons == "none" or self.top_reasons <= 0 or len(matrix) == 0:
            if self.reasons == "none":
                return pa.nulls(len(matrix), pa.string())
            return pa.array(["[]"] * len(matrix), pa.string())
        # The call ChurnModel.explain_matrix makes; its per-row Python loop is replaced by
        # top_contributions + reasons_json (a unit test checks they agree).
        contributions = model.booster.predict(
            model.encoder.dmatrix(matrix),
            pred_contribs=True,
            approx_contribs=self.reasons == "approximate",
        )
        order, values = top_contributions(np.asarray(contributions)[:, :-1], self.top_reasons)
        return reasons_json(model.contract.feature_names, order, values)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``mapInArrow``: score every batch of a partition."""
        for batch in batches:
            yield self.score(batch)
        # This partition's rows are with the writer; nothing is committed yet.
        failpoint(FAILPOINT_BEFORE_COMMIT)


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringPlan:
    """One run's fixed inputs, decided once on the driver."""

    model: ModelRef
    threshold: float
    top_reasons: int
    reasons: ReasonsMode
    model_threads: int
    gold_path: str
    gold_version: int
    # The snapshot column in gold ('' for a contract without snapshots: every row is scored
    # and ``snapshot`` is the date given, or the day of the run).
    snapshot_column: str
    snapshot: date
    entity_key: str
    rows: int
    scores_path: str
    scored_at: datetime

    @property
    def slice_predicate(self) -> str:
        """SQL selecting this run's slice (Spark's replaceWhere, delta-rs and DataFusion)."""
        return self.slice_filter()

    def slice_filter(self, alias: str = "") -> str:
        """The slice predicate with columns qualified by ``alias`` (for joins)."""
        prefix = f"{alias}." if alias else ""
        return (
            f"{prefix}snapshot_date = DATE '{self.snapshot.isoformat()}' "
            f"AND {prefix}model_version = {int(self.model.version)}"
        )

    def scorer(self) -> BatchScorer:
        """The batch scorer workers run."""
        return BatchScorer(
            model=self.model,
            threshold=self.threshold,
            top_reasons=self.top_reasons,
            reasons=self.reasons,
            entity_key=self.entity_key,
            threads=self.model_threads,
        )

    def slice_values(self) -> dict[str, Any]:
        """The columns every row of the slice shares (:data:`SLICE_FIELDS`)."""
        return {
            "threshold": self.threshold,
            "model_name": self.model.name,
            "gold_version": self.gold_version,
            "scored_at": self.scored_at,
            "snapshot_date": self.snapshot,
            "model_version": self.model.version,
        }

    def commit_metadata(self, engine: str) -> str:
        """What the slice's Delta commit records (read back by people, not by the job)."""
        return json.dumps(
            {
                "job": "churn-score",
                "engine": engine,
                "snapshot_date": self.snapshot.isoformat(),
                "model_name": self.model.name,
                "model_version": self.model.version,
                "gold_version": self.gold_version,
                "rows": self.rows,
            },
            sort_keys=True,
        )


def _now() -> datetime:
    # Microseconds, as Delta and PostgreSQL keep them: the value round-trips unchanged.
    return datetime.now(UTC)


def query(tables: Mapping[str, DeltaTable], statement: str) -> pa.Table:
    """Run SQL over pinned Delta table versions with DataFusion (delta-rs, no Spark).

    (Not ``DeltaTable.to_pyarrow_dataset()``: reading through delta-rs's Python file system can
    abort the interpreter at exit here.)
    """
    from deltalake import QueryBuilder

    builder = QueryBuilder()
    for name, table in tables.items():
        builder = builder.register(name, table)
    return pa.table(builder.execute(statement).read_all())


def _threshold(params: Mapping[str, Any], default: float) -> float:
    value = params.get("threshold")
    return float(value) if isinstance(value, int | float) else default


def _check_gold_columns(gold: DeltaTable, contract: FeatureContract, key: str) -> None:
    names = set(gold.schema().to_arrow().names)
    missing = [n for n in [key, *contract.feature_names] if n not in names]
    if missing:
        raise ScoringError(f"gold table lacks columns the model needs: {missing}")


def _snapshot_rows(
    gold: DeltaTable, column: str, snapshot: date | None, path: Path
) -> tuple[date, int]:
    """The snapshot to score (given, or the latest) and its number of gold rows."""
    if snapshot is None:
        latest = query({"gold": gold}, f'SELECT max("{column}") AS d FROM gold')
        value = latest.column("d")[0].as_py()
        if value is None:
            raise ScoringError(f"gold table {path} is empty: run `churn features` first")
        snapshot = value
    counted = query(
        {"gold": gold},
        f"SELECT count(*) AS n FROM gold WHERE \"{column}\" = DATE '{snapshot.isoformat()}'",
    )
    rows = int(counted.column("n")[0].as_py())
    if rows == 0:
        dates = query({"gold": gold}, f'SELECT DISTINCT "{column}" AS d FROM gold ORDER BY 1')
        known = ", ".join(d.isoformat() for d in dates.column("d").to_pylist())
        raise ScoringError(f"gold has no rows for snapshot {snapshot} (snapshots: {known})")
    return snapshot, rows


def plan_scoring(
    settings: Settings,
    tables: Tables,
    registry: Registry,
    *,
    snapshot: date | None = None,
    now: datetime | None = None,
) -> ScoringPlan:
    """Resolve the alias once, pin gold's version, pick the snapshot and count its customers."""
    from deltalake import DeltaTable

    scoring = settings.scoring
    name = settings.model_name
    meta = registry.resolve(name, scoring.alias)
    contract = registry.load_contract(name, meta.version)
    gold_path = tables.gold_features
    if not DeltaTable.is_deltatable(str(gold_path)):
        raise ScoringError(f"no gold table at {gold_path}: run `churn features` first")
    gold = DeltaTable(str(gold_path))
    gold_version = int(gold.version())
    _check_gold_columns(gold, contract, contract.entity_key)
    if gold.metadata().partition_columns:
        # Workers of the Ray path read gold's data files directly.
        raise ScoringError(f"gold table {gold_path} is partitioned; scoring expects it is not")
    if contract.snapshot_column:
        day, rows = _snapshot_rows(gold, contract.snapshot_column, snapshot, gold_path)
    else:
        day = snapshot or (now or _now()).date()
        rows = int(query({"gold": gold}, "SELECT count(*) AS n FROM gold").column("n")[0].as_py())
    top = scoring.top_reasons if scoring.top_reasons is not None else settings.serve.top_reasons
    return ScoringPlan(
        model=ModelRef(
            artifacts=registry.artifacts,
            directory=meta.artifact_dir,
            sha256=meta.artifact_sha256,
            name=name,
            version=meta.version,
            contract=contract,
            # Unwrapped here, in the driver, which holds the keys (None: not encrypted).
            file_key=registry.artifacts.file_key(meta.artifact_dir, ARTIFACT_NAME),
        ),
        threshold=_threshold(meta.params, settings.serve.threshold),
        top_reasons=top,
        reasons=scoring.reasons,
        model_threads=scoring.model_threads,
        gold_path=str(gold_path),
        gold_version=gold_version,
        snapshot_column=contract.snapshot_column,
        snapshot=day,
        entity_key=contract.entity_key,
        rows=rows,
        scores_path=str(tables.scores),
        scored_at=now or _now(),
    )


# --- the scores table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceState:
    """What the scores table holds for one (snapshot, model version) slice."""

    rows: int
    gold_versions: tuple[int, ...]
    scored_at: datetime | None

    def complete_for(self, plan: ScoringPlan) -> bool:
        """Every customer of the snapshot, scored from the gold version the plan pinned."""
        return self.rows == plan.rows and self.gold_versions == (plan.gold_version,)


def ensure_scores_table(path: str) -> None:
    """Create the (empty) scores table with its schema and partitioning if it is missing.

    Created here, not by the first write, so both engines always write into the same schema.
    """
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(path):
        DeltaTable.create(path, schema=SCORES_SCHEMA, partition_by=PARTITION_COLUMNS, mode="ignore")


def slice_state(plan: ScoringPlan) -> SliceState:
    """Rows, gold versions and scoring time of the plan's slice (partition-pruned read)."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(plan.scores_path):
        return SliceState(rows=0, gold_versions=(), scored_at=None)
    summary = query(
        {"scores": DeltaTable(plan.scores_path)},
        "SELECT gold_version, count(*) AS n, max(scored_at) AS at FROM scores"
        f" WHERE {plan.slice_predicate} GROUP BY gold_version ORDER BY gold_version",
    )
    rows = int(pc.sum(summary.column("n")).as_py() or 0)
    times = [t for t in summary.column("at").to_pylist() if t is not None]
    return SliceState(
        rows=rows,
        gold_versions=tuple(int(v) for v in summary.column("gold_version").to_pylist()),
        scored_at=max(times) if times else None,
    )


@dataclass(frozen=True)
class WriteSummary:
    """What the score-and-commit step did."""

    engine: str
    scored: int  # rows the model scored in this run (0 when skipped)
    written: int  # rows the commit wrote (0 when skipped)
    skipped: bool  # the slice was already complete: nothing scored, no commit
    table_version: int
    seconds: float


def skipped_write(plan: ScoringPlan, engine: str, started: float) -> WriteSummary:
    """The summary of a run whose slice was already complete."""
    from deltalake import DeltaTable

    log.info(
        "scores_slice_complete",
        snapshot=plan.snapshot.isoformat(),
        model_version=plan.model.version,
        rows=plan.rows,
    )
    return WriteSummary(
        engine=engine,
        scored=0,
        written=0,
        skipped=True,
        table_version=int(DeltaTable(plan.scores_path).version()),
        seconds=time.perf_counter() - started,
    )


def committed_write(plan: ScoringPlan, engine: str, started: float) -> WriteSummary:
    """The summary of a run that committed its slice (counts read back from the table)."""
    from deltalake import DeltaTable

    state = slice_state(plan)
    if state.rows != plan.rows:
        # Gold's keys are unique per snapshot, so this means gold changed under the job.
        raise ScoringError(
            f"scores slice {plan.slice_predicate} holds {state.rows} rows after the commit, "
            f"gold had {plan.rows}"
        )
    summary = WriteSummary(
        engine=engine,
        scored=state.rows,
        written=state.rows,
        skipped=False,
        table_version=int(DeltaTable(plan.scores_path).version()),
        seconds=time.perf_counter() - started,
    )
    log.info(
        "scores_slice_committed",
        engine=engine,
        snapshot=plan.snapshot.isoformat(),
        model_version=plan.model.version,
        rows=summary.written,
        table_version=summary.table_version,
        seconds=round(summary.seconds, 2),
    )
    return summary


# --- Spark ----------------------------------------------------------------------------------------


# SLICE_FIELDS as Spark types: the literals must be written as the table's columns.
_SPARK_SLICE_TYPES = {
    "threshold": "double",
    "model_name": "string",
    "gold_version": "bigint",
    "scored_at": "timestamp",
    "snapshot_date": "date",
    "model_version": "bigint",
}


def gold_slice(spark: SparkSession, plan: ScoringPlan) -> DataFrame:
    """The snapshot's gold rows at the pinned version: the key and the model's features."""
    from pyspark.sql import functions as F

    gold = spark.read.format("delta").option("versionAsOf", plan.gold_version).load(plan.gold_path)
    if plan.snapshot_column:
        gold = gold.where(F.col(plan.snapshot_column) == F.lit(plan.snapshot))
    return gold.select(plan.entity_key, *plan.model.contract.feature_names)


def scored_frame(spark: SparkSession, plan: ScoringPlan) -> DataFrame:
    """Gold rows -> scores rows: ``mapInArrow`` for the per-row columns, literals for the rest."""
    from pyspark.sql import functions as F

    scored = gold_slice(spark, plan).mapInArrow(plan.scorer(), SCORED_DDL)
    shared = plan.slice_values()
    columns = [F.col(f.name) for f in SCORED_FIELDS]
    columns += [
        F.lit(shared[name]).cast(kind).alias(name) for name, kind in _SPARK_SLICE_TYPES.items()
    ]
    return scored.select(*columns)


@contextmanager
def _utc_session(spark: SparkSession) -> Iterator[None]:
    """Run with the session time zone spelled ``UTC``.

    Sail 0.7 plans ``replaceWhere`` as a union of the new rows with the table's, and refuses
    it when one side's timestamps say ``Etc/UTC`` (the default session zone on Debian) and the
    other ``UTC``. Harmless on JVM Spark; the previous zone is restored.
    """
    key = "spark.sql.session.timeZone"
    previous = spark.conf.get(key)
    spark.conf.set(key, "UTC")
    try:
        yield
    finally:
        if previous is not None:
            spark.conf.set(key, previous)


def score_with_spark(
    spark: SparkSession, plan: ScoringPlan, *, force: bool = False
) -> WriteSummary:
    """Score the snapshot with Spark and replace the slice in one Delta commit.

    Skipped when the slice is already complete for this gold version (unless ``force``).
    """
    started = time.perf_counter()
    ensure_scores_table(plan.scores_path)
    if not force and slice_state(plan).complete_for(plan):
        return skipped_write(plan, "spark", started)
    frame = scored_frame(spark, plan)
    with _utc_session(spark):
        # One commit: the slice's old files removed, the new ones added; readers see either.
        frame.write.format("delta").mode("overwrite").option(
            "replaceWhere", plan.slice_predicate
        ).option("userMetadata", plan.commit_metadata("spark")).save(plan.scores_path)
    return committed_write(plan, "spark", started)
