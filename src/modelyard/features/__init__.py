"""Stateful features: per-card aggregates of transaction events, served by a Feast feature store.

The aggregates (count and sum of amounts over 1 h, 24 h and 7 d) are defined once
(:mod:`modelyard.features.store`): training rows come from Feast's point-in-time-correct historical
retrieval, serving gets the same values from Feast's SQLite online store by card id. Feast is the
``features`` extra; this package imports it only where it is used.

Typical use::

    from modelyard.data import make_transaction_events
    from modelyard.features import apply, materialize, online_features, training_frame

    events = make_transaction_events()
    apply("data/features", events)                          # source + registry
    train = training_frame("data/features", events)         # one row per labelled transaction
    materialize("data/features")                            # online store up to now (a schedule repeats it)
    online_features("data/features", [3, 7])                # what serving sees for cards 3 and 7
"""

from modelyard.features.aggregates import (
    AGGREGATE_FEATURES,
    CARD_KEY,
    LABEL,
    MODEL_COLUMNS,
    TIMESTAMP,
    TRANSACTION_COLUMNS,
    WINDOWS,
    card_aggregates,
    expire_windows,
)
from modelyard.features.store import (
    FeatureRepoError,
    MaterializeResult,
    apply,
    historical_features,
    materialize,
    model_table,
    online_features,
    open_store,
    training_frame,
)

__all__ = [
    "AGGREGATE_FEATURES",
    "CARD_KEY",
    "LABEL",
    "MODEL_COLUMNS",
    "TIMESTAMP",
    "TRANSACTION_COLUMNS",
    "WINDOWS",
    "FeatureRepoError",
    "MaterializeResult",
    "apply",
    "card_aggregates",
    "expire_windows",
    "historical_features",
    "materialize",
    "model_table",
    "online_features",
    "open_store",
    "training_frame",
]
