"""Per-card aggregates of transaction events: count and sum of amounts over 1 h, 24 h and 7 d windows.

Plain pandas, no Feast: the feature store (:mod:`modelyard.features.store`) serves what these
functions compute, and the same :func:`expire_windows` runs on the offline and the online path.

Why the aggregates are computed here and not by Feast: Feast 0.47 computes windowed aggregations
(``Aggregation``) only for stream feature views, fed by a stream processor. For batch data the Feast
pattern is a source that already holds each entity's aggregates *as of each event*; the point-in-time
join (historical retrieval) and materialisation (online store) then both pick the latest row at or
before the time asked for. So one row per event, ``(card_id, event_timestamp)``, carries the card's
aggregates over the windows ``(t - w, t]`` ending at that event, the event itself included.

Between a card's last event ``t`` and a later moment ``T`` the stored windows go stale: an event can
leave a window without a new row. :func:`expire_windows` corrects what is exactly known: a window that
has wholly elapsed since the last event (``T - t >= w``) holds no event at ``T``, so its count and sum
are 0. Windows not wholly elapsed keep the value as of the last event (an upper bound).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["AGGREGATE_FEATURES", "CARD_KEY", "EVENT_COLUMNS", "LABEL", "LAST_EVENT", "MODEL_COLUMNS",
           "TIMESTAMP", "TRANSACTION_COLUMNS", "WINDOWS", "card_aggregates", "check_events", "expire_windows"]

CARD_KEY = "card_id"
TIMESTAMP = "event_timestamp"
LABEL = "is_fraud"
# window name -> length; the names appear in the feature names (tx_count_1h, tx_amount_24h, ...)
WINDOWS: Mapping[str, pd.Timedelta] = {"1h": pd.Timedelta(hours=1), "24h": pd.Timedelta(hours=24),
                                       "7d": pd.Timedelta(days=7)}
AGGREGATE_FEATURES: tuple[str, ...] = tuple(
    name for w in WINDOWS for name in (f"tx_count_{w}", f"tx_amount_{w}"))
# the time of the card's latest event, as Unix seconds: what expire_windows measures staleness from
LAST_EVENT = "last_event_unix_s"
# the current transaction's own columns: in the training rows, and in a request to the serving ingress
TRANSACTION_COLUMNS: tuple[str, ...] = ("amount", "hour_of_day")
# a model's feature columns, in order: the current transaction, then its card's history
MODEL_COLUMNS: tuple[str, ...] = (*TRANSACTION_COLUMNS, *AGGREGATE_FEATURES)
EVENT_COLUMNS: tuple[str, ...] = (CARD_KEY, TIMESTAMP, *TRANSACTION_COLUMNS)


def check_events(events: pd.DataFrame, what: str = "events") -> None:
    """Raise ``ValueError`` naming what is wrong with an events table: missing columns, a timestamp
    column that is not timezone-aware datetimes, null or negative amounts, null card ids."""
    problems = []
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        problems.append(f"missing column(s) {missing} (it has {list(events.columns)})")
    else:
        ts = events[TIMESTAMP]
        if not isinstance(ts.dtype, pd.DatetimeTZDtype):
            problems.append(f"{TIMESTAMP!r} has dtype {ts.dtype}; expected timezone-aware datetimes "
                            "(datetime64[ns, UTC])")
        elif ts.isna().any():
            problems.append(f"{TIMESTAMP!r} has {int(ts.isna().sum())} null(s)")
        if events[CARD_KEY].isna().any() or not pd.api.types.is_integer_dtype(events[CARD_KEY]):
            problems.append(f"{CARD_KEY!r} must be integers without nulls, got dtype {events[CARD_KEY].dtype}")
        amount = pd.to_numeric(events["amount"], errors="coerce")
        if amount.isna().any() or (amount < 0).any():
            problems.append("'amount' must be numbers >= 0 without nulls")
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems) + f". Expected columns {list(EVENT_COLUMNS)}, as "
                         "modelyard.data.make_transaction_events writes them.")


def card_aggregates(events: pd.DataFrame) -> pd.DataFrame:
    """One row per event: the card's aggregates over the windows ending at that event, itself included.

    Args:
        events: at least ``card_id``, ``event_timestamp`` (UTC) and ``amount`` (see :func:`check_events`).

    Returns:
        ``card_id``, ``event_timestamp``, every name of :data:`AGGREGATE_FEATURES` (counts int64, sums
        float64) and :data:`LAST_EVENT` (float64), sorted by ``(event_timestamp, card_id)``.

    Raises:
        ValueError: on a malformed events table (:func:`check_events`).
    """
    check_events(events)
    frame = events[[CARD_KEY, TIMESTAMP, "amount"]].sort_values([CARD_KEY, TIMESTAMP], kind="stable")
    frame = frame.reset_index(drop=True)
    out = frame[[CARD_KEY, TIMESTAMP]].copy()
    by_card = frame.set_index(TIMESTAMP).groupby(CARD_KEY, sort=False)["amount"]
    for w, length in WINDOWS.items():
        rolling = by_card.rolling(length, closed="right")  # (t - w, t]: this event and the earlier ones
        # groupby().rolling() keeps the groups in order of first appearance, and frame is sorted by card
        out[f"tx_count_{w}"] = rolling.count().to_numpy().astype(np.int64)
        out[f"tx_amount_{w}"] = rolling.sum().to_numpy().astype(np.float64)
    out[LAST_EVENT] = _unix_seconds(out[TIMESTAMP])
    return out.sort_values([TIMESTAMP, CARD_KEY], kind="stable").reset_index(drop=True)


def expire_windows(features: pd.DataFrame, as_of: pd.Series | pd.Timestamp) -> pd.DataFrame:
    """``features`` as they stand at ``as_of``: nulls (a card without an event yet) become 0, and the
    count and sum of every window that has wholly elapsed since the card's last event become 0.

    Args:
        features: the :data:`AGGREGATE_FEATURES` and :data:`LAST_EVENT` columns (others pass through).
        as_of: the moment of each row (a Series aligned with ``features``) or of all rows, tz-aware.

    Returns:
        A copy, counts int64 and sums float64.
    """
    out = features.copy()
    moment = _unix_seconds(as_of if isinstance(as_of, pd.Series) else pd.Series(as_of, index=out.index))
    elapsed = moment.to_numpy() - out[LAST_EVENT].to_numpy(np.float64)  # NaN: no event yet
    for w, length in WINDOWS.items():
        stale = ~(elapsed < length.total_seconds())  # also True where elapsed is NaN
        for name, dtype in ((f"tx_count_{w}", np.int64), (f"tx_amount_{w}", np.float64)):
            values = pd.to_numeric(out[name]).to_numpy(np.float64)
            out[name] = np.where(stale | np.isnan(values), 0.0, values).astype(dtype)
    return out


def _unix_seconds(ts: pd.Series) -> pd.Series:
    """Tz-aware timestamps as float Unix seconds (millisecond events are exact in a float64)."""
    utc = pd.to_datetime(ts, utc=True)
    return (utc - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
