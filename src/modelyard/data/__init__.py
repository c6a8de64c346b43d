"""The data stage: schemas, validation, built-in datasets and the content-addressed snapshot store.

Typical use::

    from modelyard.data import DataConfig, Snapshot, run

    result = run(DataConfig(dataset="transactions"))      # writes data/store/...
    snap = Snapshot.open("transactions")                   # ref, digest prefix or path
    train = snap.split("train")
"""

from modelyard.data.config import DataConfig, DriftConfig, SplitConfig
from modelyard.data.digest import compute_digest, short_digest
from modelyard.data.generators import (
    BUILTIN_DATASETS,
    BuiltinDataset,
    digits_schema,
    load_digits_frame,
    make_transaction_events,
    make_transactions,
    transactions_schema,
)
from modelyard.data.run import DataResult, read_table, run
from modelyard.data.schema import DTYPES, ColumnSpec, Schema, SchemaError
from modelyard.data.splits import SPLIT_NAMES, assign_splits
from modelyard.data.store import (
    DEFAULT_STORE,
    AmbiguousRefError,
    Snapshot,
    SnapshotNotFoundError,
    list_refs,
    write_snapshot,
)
from modelyard.data.validate import (
    ColumnViolations,
    DataValidationError,
    ValidationReport,
    coerce,
    quarantine_frame,
    validate,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_STORE",
    "DTYPES",
    "SPLIT_NAMES",
    "AmbiguousRefError",
    "BuiltinDataset",
    "ColumnSpec",
    "ColumnViolations",
    "DataConfig",
    "DataResult",
    "DataValidationError",
    "DriftConfig",
    "Schema",
    "SchemaError",
    "Snapshot",
    "SnapshotNotFoundError",
    "SplitConfig",
    "ValidationReport",
    "assign_splits",
    "coerce",
    "compute_digest",
    "digits_schema",
    "list_refs",
    "load_digits_frame",
    "make_transaction_events",
    "make_transactions",
    "quarantine_frame",
    "read_table",
    "run",
    "short_digest",
    "transactions_schema",
    "validate",
    "write_snapshot",
]
