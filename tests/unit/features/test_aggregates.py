"""The event mode of the transactions generator and the per-card aggregates (pandas only, no Feast)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelyard.data import make_transaction_events
from modelyard.features import AGGREGATE_FEATURES, WINDOWS, card_aggregates, expire_windows
from modelyard.features.aggregates import LAST_EVENT


def test_event_mode_is_seeded_ordered_and_checked():
    a, b = make_transaction_events(n_cards=20, days=3, seed=1), make_transaction_events(n_cards=20, days=3, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(make_transaction_events(n_cards=20, days=3, seed=2))
    assert list(a.columns) == ["transaction_id", "card_id", "event_timestamp", "amount", "hour_of_day", "is_fraud"]
    assert a.event_timestamp.is_monotonic_increasing and not a.duplicated(["card_id", "event_timestamp"]).any()
    assert str(a.event_timestamp.dtype) == "datetime64[ns, UTC]" and set(a.is_fraud) <= {0, 1}
    with pytest.raises(ValueError, match=r"n_cards must be an int >= 1, got 0.*start 'soon' is not a timestamp"):
        make_transaction_events(n_cards=0, start="soon")


def test_aggregates_count_the_events_in_each_window_ending_at_each_event():
    events = make_transaction_events(n_cards=15, days=9, seed=4, fraud_card_rate=0.5)
    table = card_aggregates(events)
    assert len(table) == len(events) and list(table.columns) == ["card_id", "event_timestamp", *AGGREGATE_FEATURES,
                                                                 LAST_EVENT]
    for i in np.random.default_rng(0).choice(len(table), size=30, replace=False):
        row = table.iloc[i]
        mine = events[events.card_id == row.card_id]
        for w, length in WINDOWS.items():  # (t - w, t]: the event itself and the earlier ones inside the window
            inside = mine[(mine.event_timestamp <= row.event_timestamp)
                          & (mine.event_timestamp > row.event_timestamp - length)]
            assert row[f"tx_count_{w}"] == len(inside)
            assert row[f"tx_amount_{w}"] == pytest.approx(inside.amount.sum())
    with pytest.raises(ValueError, match=r"missing column\(s\) \['card_id'\].*make_transaction_events"):
        card_aggregates(events.drop(columns="card_id"))
    naive = events.assign(event_timestamp=events.event_timestamp.dt.tz_localize(None))
    with pytest.raises(ValueError, match="expected timezone-aware datetimes"):
        card_aggregates(naive)


def test_windows_wholly_elapsed_since_the_last_event_are_zero():
    last = pd.Timestamp("2026-01-01T00:00:00Z")
    row = {f"tx_count_{w}": 2 for w in WINDOWS} | {f"tx_amount_{w}": 50.0 for w in WINDOWS}
    frame = pd.DataFrame([row, row, {**row, LAST_EVENT: None}])
    frame[LAST_EVENT] = [(last - pd.Timestamp(0, tz="UTC")).total_seconds()] * 2 + [np.nan]
    moments = pd.Series([last + pd.Timedelta(minutes=59), last + pd.Timedelta(hours=2), last])
    out = expire_windows(frame, moments)
    assert out.loc[0, ["tx_count_1h", "tx_count_24h", "tx_count_7d"]].tolist() == [2, 2, 2]
    assert out.loc[1, ["tx_count_1h", "tx_amount_1h", "tx_count_24h"]].tolist() == [0, 0.0, 2]  # 1 h elapsed
    assert out.loc[2, list(AGGREGATE_FEATURES)].tolist() == [0] * 6  # no event yet
