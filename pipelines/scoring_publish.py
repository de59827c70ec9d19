"""Publish a committed scores slice: current risk to PostgreSQL, every score to the prediction log.

Both steps read the slice back from the Delta scores table (DataFusion, partition-pruned), so
what applications and monitoring see is exactly what was committed, ``scored_at`` included, and
a run that only publishes (the slice was already complete) sends the same values again. Both
are idempotent:

* PostgreSQL keeps one row per (contract, customer) and takes an incoming score only if it is
  NEWER: a later (snapshot, model version, scored_at). Re-running a slice changes no row; an
  old snapshot re-scored after a newer one cannot overwrite it.
* The prediction log gets one row per score with a deterministic id and an insert-if-absent
  merge: a re-run adds nothing.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from churn_core.logging import get_logger
from churn_core.online_features import describe_error, table_identifier
from churn_core.prediction_log import prediction_log_schema
from churn_core.settings import ScoringSettings
from churn_core.tls import postgres_params
from pipelines.scoring import SCORES_SCHEMA, ScoringError, ScoringPlan, query

__all__ = [
    "LOG_ENDPOINT",
    "LOG_FEATURES_FROM",
    "PublishSummary",
    "batch_prediction_id",
    "create_scores_table_sql",
    "log_batch_predictions",
    "upsert_current_scores",
    "upsert_sql",
]

log = get_logger(__name__)

# The endpoint and feature origin batch scores carry in the prediction log.
LOG_ENDPOINT = "batch_scoring"
LOG_FEATURES_FROM = "gold"
_COMMIT_ATTEMPTS = 3


# --- PostgreSQL -------------------------------------------------------------------------------

_STAGE = "_customer_scores_stage"
_PG_COLUMNS = (
    "customer_id",
    "snapshot_date",
    "model_name",
    "model_version",
    "probability",
    "churn",
    "threshold",
    "reasons",
    "scored_at",
)


def create_scores_table_sql(table: str) -> sql.Composed:
    """``CREATE TABLE IF NOT EXISTS`` for the current-risk table: one row per customer."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "contract text NOT NULL, "
        "customer_id text NOT NULL, "
        "snapshot_date date NOT NULL, "
        "model_name text NOT NULL, "
        "model_version bigint NOT NULL, "
        "probability double precision NOT NULL, "
        "churn boolean NOT NULL, "
        "threshold double precision NOT NULL, "
        "reasons jsonb, "
        "scored_at timestamptz NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (contract, customer_id))"
    ).format(table_identifier(table))


def upsert_sql(table: str) -> sql.Composed:
    """Insert new customers; overwrite a customer's row only with a NEWER score.

    Newer means a later (snapshot, model version, scored_at), compared in that order: a re-run
    of an old snapshot, or of the same slice, changes nothing; a re-scored slice (gold rebuilt)
    replaces its own earlier rows. Parameter: the contract name.
    """
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in _PG_COLUMNS)
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
        for c in (*_PG_COLUMNS[1:], "updated_at")
    )
    return sql.SQL(
        "INSERT INTO {table} AS t (contract, {columns}, updated_at) "
        "SELECT %s, {columns}, now() FROM {stage} "
        "ON CONFLICT (contract, customer_id) DO UPDATE SET {updates} "
        "WHERE (EXCLUDED.snapshot_date, EXCLUDED.model_version, EXCLUDED.scored_at) "
        "> (t.snapshot_date, t.model_version, t.scored_at)"
    ).format(
        table=table_identifier(table),
        columns=columns,
        stage=sql.Identifier(_STAGE),
        updates=updates,
    )


def _stage_sql() -> sql.Composed:
    return sql.SQL(
        "CREATE TEMP TABLE {} (customer_id text, snapshot_date date, model_name text, "
        "model_version bigint, probability double precision, churn boolean, "
        "threshold double precision, reasons jsonb, scored_at timestamptz) ON COMMIT DROP"
    ).format(sql.Identifier(_STAGE))


def _slice_batches(plan: ScoringPlan, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The committed slice from the scores table, batch by batch (DataFusion, partition-pruned)."""
    from deltalake import DeltaTable, QueryBuilder

    selected = ", ".join(f'"{c}"' for c in columns)
    reader = (
        QueryBuilder()
        .register("scores", DeltaTable(plan.scores_path))
        .execute(f"SELECT {selected} FROM scores WHERE {plan.slice_predicate}")
    )
    target = pa.schema([SCORES_SCHEMA.field(c) for c in columns])
    for batch in pa.RecordBatchReader.from_stream(reader):
        yield batch.cast(target)


def _csv(batch: pa.RecordBatch) -> bytes:
    # PostgreSQL's CSV format: an unquoted empty field is NULL, timestamps end in "Z" (UTC).
    sink = io.BytesIO()
    pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=False))
    return sink.getvalue()


@dataclass(frozen=True)
class PublishSummary:
    """What a publish step did."""

    rows: int  # rows of the slice sent
    changed: int  # rows the target gained or changed
    seconds: float


def upsert_current_scores(
    plan: ScoringPlan, scoring: ScoringSettings, contract_name: str
) -> PublishSummary:
    """Each customer's score from the committed slice -> PostgreSQL, newer scores only.

    The slice is COPY'd (CSV written by Arrow) into a temporary table and merged with one
    ``INSERT ... ON CONFLICT`` (:func:`upsert_sql`), in one transaction: a failed run leaves the
    table as it was, and a re-run changes no row.
    """
    if scoring.postgres_url is None:
        raise ScoringError("scoring.postgres_url is not set")
    started = time.perf_counter()
    url = scoring.postgres_url.get_secret_value()
    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        sql.Identifier(_STAGE), sql.SQL(", ").join(sql.Identifier(c) for c in _PG_COLUMNS)
    )
    rows = 0
    tls_params = postgres_params(scoring.postgres_tls, "scoring.postgres_tls")
    try:
        with psycopg.connect(
            url,
            connect_timeout=max(1, int(scoring.postgres_timeout_s)),
            application_name="churn-score",
            **tls_params,
        ) as conn:
            conn.execute(create_scores_table_sql(scoring.postgres_table))
            conn.execute(_stage_sql())
            with conn.cursor() as cursor:
                with cursor.copy(copy) as stream:
                    for batch in _slice_batches(plan, _PG_COLUMNS):
                        stream.write(_csv(batch))
                        rows += batch.num_rows
                cursor.execute(upsert_sql(scoring.postgres_table), [contract_name])
                changed = max(cursor.rowcount, 0)
    except psycopg.Error as error:
        raise ScoringError(f"PostgreSQL upsert failed: {describe_error(error, url)}") from None
    summary = PublishSummary(rows=rows, changed=changed, seconds=time.perf_counter() - started)
    log.info(
        "scores_upserted",
        table=scoring.postgres_table,
        rows=rows,
        changed=changed,
        seconds=round(summary.seconds, 2),
    )
    return summary


# --- the prediction log -----------------------------------------------------------------------


def batch_prediction_id(model_name: str, model_version: int, snapshot: date, customer: str) -> str:
    """The prediction id of one batch score: the same on every re-run (32 hex characters).

    The SQL in :func:`_log_rows` computes the same value; a test checks both agree.
    """
    import hashlib

    key = f"{LOG_ENDPOINT}|{model_name}|{model_version}|{snapshot.isoformat()}|{customer}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _log_rows(plan: ScoringPlan) -> pa.Table:
    """The slice joined to its gold features, as prediction-log rows (DataFusion)."""
    from deltalake import DeltaTable

    contract = plan.model.contract
    gold = DeltaTable(plan.gold_path, version=plan.gold_version)
    features = ", ".join(f'g."{name}"' for name in contract.feature_names)
    on = f'CAST(g."{plan.entity_key}" AS VARCHAR) = s.customer_id'
    if plan.snapshot_column:
        on += f" AND g.\"{plan.snapshot_column}\" = DATE '{plan.snapshot.isoformat()}'"
    statement = (
        "SELECT substr(encode(sha256(concat_ws('|', "
        f"'{LOG_ENDPOINT}', s.model_name, CAST(s.model_version AS VARCHAR), "
        "CAST(s.snapshot_date AS VARCHAR), s.customer_id)), 'hex'), 1, 32) AS prediction_id, "
        "s.scored_at AS logged_at, CAST(s.scored_at AS DATE) AS log_date, s.model_name, "
        f"s.model_version, '{LOG_ENDPOINT}' AS endpoint, s.customer_id, "
        f"'{LOG_FEATURES_FROM}' AS features_from, s.snapshot_date AS as_of, s.probability, "
        f"s.churn, s.threshold, {features} "
        f"FROM scores s JOIN gold g ON {on} "
        f"WHERE {plan.slice_filter('s')}"
    )
    table = query({"scores": DeltaTable(plan.scores_path), "gold": gold}, statement)
    return table.cast(prediction_log_schema(contract))


def _merge_new_predictions(path: str, rows: pa.Table) -> int:
    """Insert the rows whose prediction id the log does not hold yet (one commit); the count."""
    from deltalake import DeltaTable, write_deltalake

    if not DeltaTable.is_deltatable(path):
        # The replicas' writer creates the log the same way (partitioned by day).
        write_deltalake(path, rows, mode="append", partition_by=["log_date"], schema_mode="merge")
        return int(rows.num_rows)
    metrics = (
        DeltaTable(path)
        .merge(
            source=rows,
            # as_of and endpoint follow from the id; they let file statistics skip the files
            # of the log's online predictions.
            predicate=(
                "t.prediction_id = s.prediction_id AND t.as_of = s.as_of "
                "AND t.endpoint = s.endpoint"
            ),
            source_alias="s",
            target_alias="t",
            merge_schema=True,
        )
        .when_not_matched_insert_all()
        .execute()
    )
    inserted: int = metrics.get("num_target_rows_inserted", 0)
    return inserted


def log_batch_predictions(plan: ScoringPlan, log_path: str) -> PublishSummary:
    """Every score of the slice, with its features, into the prediction log, once.

    Ids are deterministic (:func:`batch_prediction_id`) and the merge inserts only absent ids,
    so a re-run, or a run after a crash mid-way, adds no duplicate. A re-scored slice (gold
    rebuilt) keeps its first logged rows: the id names (model, version, snapshot, customer).
    """
    started = time.perf_counter()
    rows = _log_rows(plan)
    added = 0
    for attempt in range(1, _COMMIT_ATTEMPTS + 1):
        try:
            added = _merge_new_predictions(log_path, rows)
            break
        except Exception as error:
            # A serving replica committed to the log meanwhile: merge again on the new version.
            if attempt == _COMMIT_ATTEMPTS:
                raise ScoringError(f"prediction log merge failed: {error}") from error
            log.warning("prediction_log_merge_retry", attempt=attempt, error=str(error)[:300])
            time.sleep(0.2 * attempt)
    summary = PublishSummary(
        rows=rows.num_rows, changed=added, seconds=time.perf_counter() - started
    )
    log.info(
        "batch_predictions_logged",
        rows=rows.num_rows,
        added=added,
        seconds=round(summary.seconds, 2),
    )
    return summary
