"""Load gold features from Delta into Ray Data and split them without leakage.

With snapshots, the split is by time: the latest snapshot is the test set, the one before it the
validation set, all earlier ones train. Without snapshots (a single-table data set), a stable hash
of the entity key assigns each customer to one split, so re-runs and new rows never move a
customer between splits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from churn_core.contract import FeatureContract
from churn_core.model import FeatureEncoder
from churn_core.settings import TrainingSettings

if TYPE_CHECKING:
    import ray.data

SPLITS = ("train", "valid", "test")
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class GoldData:
    """The gold table as read: the dataset and the Delta version it came from."""

    dataset: ray.data.Dataset
    delta_version: int
    path: Path
    # What the gold build recorded in its commit (contract hash, silver versions): lineage.
    inputs: dict[str, object] | None = None


def read_gold(path: Path) -> GoldData:
    """Read the current version of the gold table, pinning the version for lineage."""
    import ray.data
    from deltalake import DeltaTable

    table = DeltaTable(str(path))
    version = int(table.version())
    commit = next((c for c in table.history() if c.get("version") == version), {})
    metadata = commit.get("userMetadata")
    inputs = json.loads(metadata) if metadata else None
    return GoldData(ray.data.read_delta(str(path), version=version), version, path, inputs)


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for a key (same on every machine and run)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_splits(
    frame: pd.DataFrame, contract: FeatureContract, settings: TrainingSettings
) -> pd.Series:
    """The split name of every row."""
    if contract.snapshot:
        dates = sorted(contract.snapshot.dates)
        if len(dates) < 3:
            raise ValueError("a time split needs at least 3 snapshot dates (train, valid, test)")
        column = pd.to_datetime(frame[contract.snapshot_column]).dt.date
        labels = np.where(
            column == dates[-1], "test", np.where(column == dates[-2], "valid", "train")
        )
        return pd.Series(labels, index=frame.index)
    fractions = frame[contract.entity_key].astype(str).map(hash_fraction)
    test, valid = settings.hash_split_test_fraction, settings.hash_split_valid_fraction
    labels = np.where(
        fractions < test, "test", np.where(fractions < test + valid, "valid", "train")
    )
    return pd.Series(labels, index=frame.index)


def encode_batch(
    frame: pd.DataFrame, contract: FeatureContract, settings: TrainingSettings
) -> pd.DataFrame:
    """Model-ready columns: encoded features (float32), label and split name."""
    matrix = FeatureEncoder(contract).encode_frame(frame)
    encoded = pd.DataFrame(matrix, columns=contract.feature_names, index=frame.index)
    encoded[LABEL_COLUMN] = frame[contract.label.name].astype(np.float32)
    encoded["_split"] = assign_splits(frame, contract, settings)
    return encoded


def split_gold(
    gold: GoldData, contract: FeatureContract, settings: TrainingSettings
) -> dict[str, ray.data.Dataset]:
    """Encoded train/valid/test datasets, materialised once (Train workers then read no files)."""
    encoded = gold.dataset.map_batches(
        encode_batch,
        batch_format="pandas",
        fn_kwargs={"contract": contract, "settings": settings},
        num_cpus=0.5,
    ).materialize()
    splits = {}
    for name in SPLITS:
        part = encoded.filter(expr=f"_split == '{name}'").drop_columns(["_split"]).materialize()
        if part.count() == 0:
            raise ValueError(f"the {name} split of {gold.path} is empty")
        splits[name] = part
    return splits
