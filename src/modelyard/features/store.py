"""The card feature repository, defined once in code, and what is done with it through Feast.

A repository is a folder holding everything Feast needs, all embedded: the registry (``registry.db``),
the offline source (``card_activity.parquet``, read by Feast's local ``file`` offline store) and the
SQLite online store (``online.db``). :func:`apply` writes the source from raw events and registers the
definitions; :func:`materialize` copies the latest rows into the online store (incrementally: from
where the last run stopped); :func:`historical_features` is Feast's point-in-time-correct retrieval
(training data) and :func:`online_features` its online lookup (serving). Both return the aggregates
through :func:`~modelyard.features.aggregates.expire_windows`, one function on both paths.

Feast is an optional dependency (the ``features`` extra); it is imported here, inside the functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from modelyard._io import atomic_write_bytes
from modelyard.errors import ModelyardError
from modelyard.features.aggregates import (
    AGGREGATE_FEATURES,
    CARD_KEY,
    LABEL,
    LAST_EVENT,
    MODEL_COLUMNS,
    TIMESTAMP,
    card_aggregates,
    check_events,
    expire_windows,
)

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["FEATURE_VIEW", "PROJECT", "FeatureRepoError", "MaterializeResult", "apply", "definitions",
           "historical_features", "materialize", "model_table", "online_features", "open_store", "training_frame"]

logger = logging.getLogger(__name__)

PROJECT = "modelyard"
FEATURE_VIEW = "card_activity"
SOURCE_FILE = "card_activity.parquet"
# What a training row is joined as of: just before its transaction. The row of the transaction itself
# (its own event is in its windows) is left out, as it is at serving time, when the online store holds
# only the events before the request. Events are at millisecond resolution, so 1 us loses none.
BEFORE_EVENT = pd.Timedelta(microseconds=1)
FEAST_EXTRA = "pip install 'modelyard[features]'"


class FeatureRepoError(ModelyardError):
    """A feature repository that is missing, not applied, or asked for something it cannot give."""


def _feast() -> Any:
    try:
        import feast
    except ImportError as err:
        raise FeatureRepoError(f"the feature store needs Feast, which is not installed ({err}); install the "
                               f"features extra: {FEAST_EXTRA}") from None
    return feast


def definitions(repo: str | Path) -> list[Any]:
    """The Feast objects of the repository: the ``card`` entity, the Parquet source and the
    ``card_activity`` feature view (every aggregate and the time of the card's latest event)."""
    feast = _feast()
    from feast.types import Float64, Int64

    card = feast.Entity(name="card", join_keys=[CARD_KEY], value_type=feast.ValueType.INT64,
                        description="a payment card")
    source = feast.FileSource(name="card_activity_source", path=str(Path(repo).resolve() / SOURCE_FILE),
                              timestamp_field=TIMESTAMP,
                              description="per-card aggregates as of each transaction (modelyard.features)")
    schema = [feast.Field(name=n, dtype=Int64 if n.startswith("tx_count") else Float64) for n in AGGREGATE_FEATURES]
    view = feast.FeatureView(
        name=FEATURE_VIEW, entities=[card], source=source, online=True,
        schema=[*schema, feast.Field(name=LAST_EVENT, dtype=Float64)],
        # 0: no time-to-live. A window's own length decides what has expired (expire_windows), the same
        # way offline and online; Feast's SQLite online store would not apply a TTL anyway.
        ttl=timedelta(0),
        description="count and sum of a card's transaction amounts over 1 h, 24 h and 7 d",
    )
    return [card, source, view]


def open_store(repo: str | Path) -> FeatureStore:
    """The Feast ``FeatureStore`` of ``repo`` (local provider, file offline store, SQLite online store),
    configured in code: the folder needs no ``feature_store.yaml``."""
    feast = _feast()
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.repo_config import RegistryConfig, RepoConfig

    root = Path(repo).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project=PROJECT, provider="local", repo_path=root,
        # the definitions change only with `apply`: a serving process re-reads them at most once a minute
        # (0 would re-read the registry file on every online lookup)
        registry=RegistryConfig(path=str(root / "registry.db"), cache_ttl_seconds=60),
        offline_store={"type": "file"},
        online_store=SqliteOnlineStoreConfig(path=str(root / "online.db")),
        entity_key_serialization_version=2,
    )
    return feast.FeatureStore(config=config)


def _applied_store(repo: str | Path) -> FeatureStore:
    """The store of a repository that :func:`apply` has written, else :class:`FeatureRepoError`."""
    root = Path(repo)
    if not (root / "registry.db").is_file() or not (root / SOURCE_FILE).is_file():
        raise FeatureRepoError(f"feature repository {str(repo)!r} has not been applied (no registry.db and "
                               f"{SOURCE_FILE} there); run `modelyard features apply --repo {repo} --events EVENTS` "
                               "first")
    return open_store(root)


def apply(repo: str | Path, events: pd.DataFrame) -> int:
    """Write the per-card aggregates of ``events`` as the offline source and register the definitions.

    Running it again with more events replaces the source (the definitions are unchanged).

    Returns:
        Rows of the source (one per event).

    Raises:
        ValueError: on a malformed events table (names what is missing or wrong).
    """
    _feast()  # before any write: without Feast, nothing is half done
    aggregates = card_aggregates(events)
    root = Path(repo)
    # atomic: Feast reads the whole new file or the previous one, never half of one
    atomic_write_bytes(root / SOURCE_FILE, aggregates.to_parquet(index=False))
    store = open_store(root)
    store.apply(definitions(root))
    logger.info("feature repository %s: %d source rows from %d cards", root, len(aggregates),
                aggregates[CARD_KEY].nunique())
    return len(aggregates)


@dataclass(frozen=True)
class MaterializeResult:
    """What :func:`materialize` copied: events in ``[start, end)``; ``start`` None: from where the
    previous materialisation stopped (incremental); the first run starts at the source's first event."""

    start: datetime | None
    end: datetime


def materialize(repo: str | Path, end: datetime | None = None, start: datetime | None = None) -> MaterializeResult:
    """Bring the online store up to ``end`` (default now): the latest row of each card before it.

    Without ``start`` this is Feast's ``materialize_incremental``: from where the previous run stopped
    (the first run reads the whole source), so a scheduler calls it again and again.
    """
    store = _applied_store(repo)
    end = _utc(end) if end is not None else pd.Timestamp.now(tz="UTC").to_pydatetime()
    if start is None and store.get_feature_view(FEATURE_VIEW).most_recent_end_time is None:
        # A first incremental run without a TTL would start a year before now and miss older events:
        # start at the source's first event instead.
        first = pd.read_parquet(Path(repo) / SOURCE_FILE, columns=[TIMESTAMP])[TIMESTAMP].min()
        start = _utc(first) if pd.notna(first) else end
    if start is None:
        store.materialize_incremental(end_date=end)
    else:
        store.materialize(start_date=_utc(start), end_date=end)
    logger.info("online store of %s materialised up to %s", repo, end.isoformat())
    return MaterializeResult(start=start, end=end)


def historical_features(repo: str | Path, entities: pd.DataFrame) -> pd.DataFrame:
    """Feast's point-in-time-correct retrieval: each row's aggregates as of its ``event_timestamp``.

    Args:
        entities: ``card_id`` and ``event_timestamp`` (tz-aware, the moment asked about); other
            columns pass through.

    Returns:
        ``entities`` in their order with every :data:`AGGREGATE_FEATURES` column added, as each card's
        latest source row at or before the row's moment holds them, then :func:`expire_windows`.
    """
    _check_entities(entities)
    store = _applied_store(repo)
    rows = entities.reset_index(drop=True).assign(_row=np.arange(len(entities)))
    found = store.get_historical_features(entity_df=rows, features=_feature_refs()).to_df()
    # Feast's file offline store returns the rows in its own order and leaves out those that match no
    # source row (a card's first transaction): put them back, in order, with nulls (expire_windows: 0)
    found = found.set_index("_row")[[*AGGREGATE_FEATURES, LAST_EVENT]]
    joined = rows.drop(columns="_row").join(found.reindex(np.arange(len(rows))))
    out = expire_windows(joined, joined[TIMESTAMP]).drop(columns=[LAST_EVENT])
    return out[[*entities.columns, *AGGREGATE_FEATURES]]


def online_features(repo: str | Path, card_ids: Any, as_of: pd.Timestamp | None = None,
                    store: FeatureStore | None = None) -> pd.DataFrame:
    """The aggregates of ``card_ids`` from the online store, as they stand at ``as_of`` (default now).

    Returns:
        One row per card id, in order: ``card_id`` and every :data:`AGGREGATE_FEATURES` column; a card
        the online store does not know has zeros (no event before).
    """
    store = store if store is not None else _applied_store(repo)
    ids = [int(i) for i in np.asarray(card_ids).reshape(-1)]
    response = store.get_online_features(features=_feature_refs(), entity_rows=[{CARD_KEY: i} for i in ids])
    frame = response.to_df()
    moment = pd.Timestamp.now(tz="UTC") if as_of is None else _utc_timestamp(as_of)
    frame = expire_windows(frame, moment)
    return frame[[CARD_KEY, *AGGREGATE_FEATURES]]


def training_frame(repo: str | Path, transactions: pd.DataFrame) -> pd.DataFrame:
    """Training rows for ``transactions``: each with its card's aggregates as they stood just before it.

    Args:
        transactions: labelled events: ``card_id``, ``event_timestamp`` (the label's moment), the
            transaction's own columns and ``is_fraud``.

    Returns:
        ``transactions`` in their order with the aggregates added; no aggregate uses an event at or after
        a row's ``event_timestamp``.
    """
    check_events(transactions, "transactions")
    asked = transactions.assign(**{TIMESTAMP: transactions[TIMESTAMP] - BEFORE_EVENT})
    out = historical_features(repo, asked)
    out[TIMESTAMP] = transactions[TIMESTAMP].to_numpy()
    return out


def model_table(training: pd.DataFrame) -> pd.DataFrame:
    """The model's columns (:data:`MODEL_COLUMNS`) and the label, for ``modelyard data --dataset file``."""
    missing = [c for c in (*MODEL_COLUMNS, LABEL) if c not in training.columns]
    if missing:
        raise ValueError(f"training frame lacks {missing}; expected the output of training_frame()")
    return training[[*MODEL_COLUMNS, LABEL]].reset_index(drop=True)


def _feature_refs() -> list[str]:
    return [f"{FEATURE_VIEW}:{name}" for name in (*AGGREGATE_FEATURES, LAST_EVENT)]


def _check_entities(entities: pd.DataFrame) -> None:
    missing = [c for c in (CARD_KEY, TIMESTAMP) if c not in entities.columns]
    if missing:
        raise ValueError(f"entity rows lack column(s) {missing}; expected {CARD_KEY!r} and {TIMESTAMP!r} "
                         f"(tz-aware), got {list(entities.columns)}")
    if not isinstance(entities[TIMESTAMP].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"entity rows: {TIMESTAMP!r} has dtype {entities[TIMESTAMP].dtype}; expected "
                         "timezone-aware datetimes (datetime64[ns, UTC])")


def _utc_timestamp(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _utc(value: Any) -> datetime:
    return _utc_timestamp(value).to_pydatetime()
