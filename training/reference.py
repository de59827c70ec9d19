"""The drift reference stored with each model version: a sample of its training rows and scores.

The drift job (``monitoring/drift_job.py``) compares a window of the prediction log with the
champion's training data. It reads that data from the version itself (``reference.parquet``),
not from gold: gold is rebuilt and moves on, the version does not. The file holds a seeded
sample of the training split's contract feature columns, typed like the prediction log's
columns, plus ``probability``, the model's own score on those rows (the score's reference).

Rows are chosen by a hash of (entity key, snapshot) and the seed, computed in DataFusion next
to the data, so the same gold version and seed give the same sample however its files are laid
out, and only the sample is read into memory (not the whole training split).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churn_core.contract import FeatureContract
from churn_core.logging import get_logger
from churn_core.model import ChurnModel
from churn_core.prediction_log import prediction_log_schema
from churn_core.settings import TrainingSettings
from training.data import assign_splits

log = get_logger(__name__)

# The version file the drift job reads (monitoring/drift_job.py spells the same name: monitoring
# may not import training; a unit test checks the two agree).
REFERENCE_FILE = "reference.parquet"
# The score column, named like the prediction log's so the two frames compare column by column.
SCORE_COLUMN = "probability"
# Oversampling of the hash filter, so the exact cap is still reached when the binomial draw
# falls short of its expectation.
_OVERSAMPLE = 1.2
_OVERSAMPLE_ROWS = 100
# Row hashes are compared on their first 8 hex digits: 2**32 values.
_HASH_RANGE = 16**8


def reference_schema(contract: FeatureContract) -> pa.Schema:
    """The file's schema: each contract feature typed as in the prediction log, then the score."""
    log_schema = prediction_log_schema(contract)
    features = [log_schema.field(name) for name in contract.feature_names]
    return pa.schema([*features, pa.field(SCORE_COLUMN, pa.float64(), nullable=False)])


def key_columns(contract: FeatureContract) -> list[str]:
    """The columns that identify a gold row (entity key, and snapshot when there is one)."""
    return [contract.entity_key, *([contract.snapshot_column] if contract.snapshot else [])]


def sample_fraction(train_rows: int, max_rows: int) -> float:
    """Share of rows the hash filter keeps: enough to reach ``max_rows`` training rows (<= 1)."""
    if train_rows <= 0:
        return 0.0
    return min(1.0, (max_rows * _OVERSAMPLE + _OVERSAMPLE_ROWS) / train_rows)


def sample_query(contract: FeatureContract, fraction: float, seed: int) -> str:
    """SQL over ``gold`` keeping a seeded ``fraction`` of rows, by an MD5 of key and seed.

    The hash runs in DataFusion next to the data, so only the sample reaches Python; its first
    32 bits, as 8 hex digits, compare as the number they spell.
    """
    columns = ", ".join(_quoted(name) for name in [*key_columns(contract), *contract.feature_names])
    sql = f"SELECT {columns} FROM gold"
    if fraction >= 1:
        return sql
    parts = [f"CAST({_quoted(name)} AS VARCHAR)" for name in key_columns(contract)]
    identity = ", '|', ".join([*parts, f"'{int(seed)}'"])
    limit = f"{min(int(fraction * _HASH_RANGE), _HASH_RANGE - 1):08x}"
    return f"{sql} WHERE substr(md5(concat({identity})), 1, 8) < '{limit}'"


def _quoted(name: str) -> str:
    # Unquoted identifiers are lower-cased by DataFusion (Telco's columns are camel case).
    return '"' + name.replace('"', '""') + '"'


def training_rows(
    frame: pd.DataFrame, contract: FeatureContract, settings: TrainingSettings
) -> pd.DataFrame:
    """The rows of ``frame`` that fall in the training split (as ``split_gold`` assigns them)."""
    return frame[(assign_splits(frame, contract, settings) == "train").to_numpy()]


def cap_rows(
    frame: pd.DataFrame, contract: FeatureContract, max_rows: int, seed: int
) -> pd.DataFrame:
    """At most ``max_rows`` rows (seeded), key columns dropped, in a stable order."""
    # Sorted first: a scan returns rows in file order, which a seed alone cannot pin down.
    ordered = frame.sort_values(key_columns(contract), kind="stable").reset_index(drop=True)
    if len(ordered) > max_rows:
        ordered = ordered.sample(n=max_rows, random_state=seed).sort_index()
    return ordered[contract.feature_names].reset_index(drop=True)


def read_training_sample(
    path: Path,
    version: int,
    contract: FeatureContract,
    settings: TrainingSettings,
    *,
    train_rows: int,
    max_rows: int,
    seed: int,
) -> pd.DataFrame:
    """Contract feature columns of at most ``max_rows`` seeded training-split rows of gold.

    Reads version ``version`` of the gold table (the one training read) through DataFusion;
    ``train_rows``, the training split's size, sets the hash filter's fraction so that only
    about ``max_rows`` training rows leave the scan.
    """
    from deltalake import DeltaTable, QueryBuilder

    query = sample_query(contract, sample_fraction(train_rows, max_rows), seed)
    builder = QueryBuilder().register("gold", DeltaTable(str(path), version=version))
    sampled = pa.table(builder.execute(query).read_all()).to_pandas()
    return cap_rows(training_rows(sampled, contract, settings), contract, max_rows, seed)


def reference_table(
    features: pd.DataFrame, contract: FeatureContract, model: ChurnModel
) -> pa.Table:
    """The sample's features typed like the prediction log's columns, plus the model's scores."""
    schema = reference_schema(contract)
    columns = [
        pa.array(features[name], from_pandas=True).cast(schema.field(name).type)
        for name in contract.feature_names
    ]
    scores = model.predict_frame(features) if len(features) else np.empty(0)
    columns.append(pa.array(np.asarray(scores, dtype=np.float64), type=pa.float64()))
    return pa.Table.from_arrays(columns, schema=schema)


def to_parquet_bytes(table: pa.Table) -> bytes:
    """The table as one Parquet file's bytes (what the registry stores)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def build_reference(
    gold_path: Path,
    gold_version: int,
    contract: FeatureContract,
    settings: TrainingSettings,
    model: ChurnModel,
    *,
    train_rows: int,
    max_rows: int,
) -> bytes:
    """``reference.parquet`` of a new version: sampled training rows and the model's scores."""
    started = time.perf_counter()
    features = read_training_sample(
        gold_path,
        gold_version,
        contract,
        settings,
        train_rows=train_rows,
        max_rows=max_rows,
        seed=settings.seed,
    )
    if features.empty:
        raise ValueError(f"the drift reference sample of {gold_path} has no training rows")
    table = reference_table(features, contract, model)
    log.info(
        "drift reference sampled",
        rows=table.num_rows,
        train_rows=train_rows,
        seconds=round(time.perf_counter() - started, 2),
    )
    return to_parquet_bytes(table)
