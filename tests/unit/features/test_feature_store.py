"""The card feature store with Feast's real file offline store and SQLite online store (no server).

No leakage: a training row's aggregates never use an event at or after its label's timestamp. No skew:
for the same card and moment, the online store (after materialisation) and Feast's historical retrieval
give the same values. Enrichment: the serving ingress's row equals the training row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelyard.data import make_transaction_events
from modelyard.features import (
    AGGREGATE_FEATURES,
    MODEL_COLUMNS,
    WINDOWS,
    FeatureRepoError,
    apply,
    historical_features,
    materialize,
    online_features,
    training_frame,
)
from modelyard.serve.ray.codec import KServeError  # noqa: E402
from modelyard.serve.ray.enrich import CardFeatureEnricher  # noqa: E402
from modelyard.signature import Signature, SignatureError, TensorSig  # noqa: E402

MS = pd.Timedelta(milliseconds=1)
LABEL_AT = pd.Timestamp("2026-01-05T12:00:00Z")
LEAK_CARD = 10_000  # a card of its own: events around one label's timestamp


def brute_force(events: pd.DataFrame, card: int, before: pd.Timestamp) -> dict[str, float]:
    """The aggregates of ``card`` from its events strictly before ``before``, windows ending at its last
    such event (zero for a window wholly elapsed by ``before``): what the store must return."""
    seen = events[(events.card_id == card) & (events.event_timestamp < before)]
    out = {name: 0.0 for name in AGGREGATE_FEATURES}
    if seen.empty:
        return out
    last = seen.event_timestamp.max()
    for w, length in WINDOWS.items():
        if before - last >= length:
            continue
        inside = seen[seen.event_timestamp > last - length]
        out[f"tx_count_{w}"], out[f"tx_amount_{w}"] = float(len(inside)), float(inside.amount.sum())
    return out


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    generated = make_transaction_events(n_cards=30, days=9, seed=3)
    # the leakage card: history before the label, then large events right at and just after its timestamp
    at = [LABEL_AT - pd.Timedelta(hours=30), LABEL_AT - pd.Timedelta(minutes=20), LABEL_AT - MS,
          LABEL_AT, LABEL_AT + MS, LABEL_AT + pd.Timedelta(seconds=1), LABEL_AT + pd.Timedelta(minutes=5)]
    leak = pd.DataFrame({"card_id": LEAK_CARD, "event_timestamp": pd.Series(at, dtype="datetime64[ns, UTC]"),
                         "amount": [10.0, 20.0, 40.0, 5000.0, 7000.0, 9000.0, 11000.0], "hour_of_day": 12,
                         "is_fraud": [0, 0, 0, 1, 1, 1, 1]})
    frame = pd.concat([generated.drop(columns="transaction_id"), leak], ignore_index=True)
    frame = frame.sort_values(["event_timestamp", "card_id"], kind="stable").reset_index(drop=True)
    return frame.assign(transaction_id=np.arange(len(frame)))


@pytest.fixture(scope="module")
def repo(events, tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "repo"
    apply(path, events)
    return path


def test_no_leakage_no_event_at_or_after_the_label_is_used(events, repo):
    training = training_frame(repo, events)
    assert len(training) == len(events) and list(training.transaction_id) == list(events.transaction_id)
    label = training[(training.card_id == LEAK_CARD) & (training.event_timestamp == LABEL_AT)].iloc[0]
    # before it: 10 (30 h ago, outside 24 h), 20 (20 min ago), 40 (1 ms ago); the 5000 at the label's own
    # timestamp and everything after it are excluded
    assert (label.tx_count_1h, label.tx_amount_1h) == (2, 60.0)
    assert (label.tx_count_24h, label.tx_amount_24h) == (2, 60.0)
    assert (label.tx_count_7d, label.tx_amount_7d) == (3, 70.0)
    # every training row of every card against a count over the events strictly before it
    for _, row in training.sample(40, random_state=1).iterrows():
        want = brute_force(events, row.card_id, row.event_timestamp)
        assert {k: float(row[k]) for k in AGGREGATE_FEATURES} == pytest.approx(want), row.transaction_id
    # historical retrieval as of a moment takes events at or before it, never one after
    asked = pd.DataFrame({"card_id": [LEAK_CARD] * 2,
                          "event_timestamp": pd.Series([LABEL_AT, LABEL_AT + MS / 2], dtype="datetime64[ns, UTC]")})
    got = historical_features(repo, asked)
    assert list(got.tx_amount_1h) == [5060.0, 5060.0] and list(got.tx_count_1h) == [3, 3]


def test_no_skew_online_equals_historical_for_the_same_card_and_moment(events, repo):
    training = training_frame(repo, events)
    label_row = training[(training.card_id == LEAK_CARD) & (training.event_timestamp == LABEL_AT)].iloc[0]
    cards = sorted(events.card_id.unique())
    # moments in time order: materialisation is incremental, as a schedule runs it
    moments = [LABEL_AT - pd.Timedelta(days=2), LABEL_AT, LABEL_AT + pd.Timedelta(hours=1, milliseconds=1)]
    for moment in moments:
        materialize(repo, end=moment)
        online = online_features(repo, cards, as_of=moment)
        asked = pd.DataFrame({"card_id": cards, "event_timestamp": moment - pd.Timedelta(microseconds=1)})
        offline = historical_features(repo, asked)
        pd.testing.assert_frame_equal(online.reset_index(drop=True), offline[["card_id", *AGGREGATE_FEATURES]])
        if moment == LABEL_AT:  # the serving moment of a labelled transaction: online == its training row
            served = online[online.card_id == LEAK_CARD].iloc[0]
            assert served[list(AGGREGATE_FEATURES)].tolist() == label_row[list(AGGREGATE_FEATURES)].tolist()


def test_enrichment_builds_the_training_row_from_card_id_and_the_transaction(events, repo):
    signature = Signature((TensorSig("features", "FP32", ("batch", len(MODEL_COLUMNS))),),
                          (TensorSig("logits", "FP32", ("batch", 2)),))
    enricher = CardFeatureEnricher(str(repo), signature)
    assert [t.name for t in enricher.inputs] == ["card_id", "amount", "hour_of_day"]
    materialize(repo, start=LABEL_AT - pd.Timedelta(days=30), end=LABEL_AT)  # a full run to that moment
    request = {"card_id": np.array([LEAK_CARD, 123_456], np.int64), "amount": np.array([5000.0, 7.5], np.float32),
               "hour_of_day": np.array([12.0, 3.0], np.float32)}
    row = enricher(request, as_of=LABEL_AT)["features"]  # (2, 8)
    training = training_frame(repo, events)
    want = training[(training.card_id == LEAK_CARD) & (training.event_timestamp == LABEL_AT)][list(MODEL_COLUMNS)]
    np.testing.assert_array_equal(row[0], want.to_numpy(np.float32)[0])
    np.testing.assert_array_equal(row[1], [7.5, 3.0, 0, 0, 0, 0, 0, 0])  # a card without history: zeros
    with pytest.raises(KServeError, match=r"needs exactly the inputs \['amount', 'card_id', 'hour_of_day'\].*"
                                          r"missing \['hour_of_day'\]"):
        enricher({"card_id": request["card_id"], "amount": request["amount"]})
    narrow = Signature((TensorSig("features", "FP32", ("batch", 5)),), signature.outputs)
    with pytest.raises(SignatureError, match=r"fills one FP32 input \[batch, 8\].*features FP32 \[-1, 5\]"):
        CardFeatureEnricher(str(repo), narrow)


def test_a_repository_that_was_not_applied_is_named(tmp_path):
    with pytest.raises(FeatureRepoError, match="has not been applied.*modelyard features apply"):
        materialize(tmp_path / "nothing")


def test_features_command_help_and_events(tmp_path, capsys):
    from modelyard.features.cli import main

    assert main(["--help"]) == 0 and "materialize" in capsys.readouterr().out
    assert main(["apply", "--help"]) == 0 and "--events" in capsys.readouterr().out
    out = tmp_path / "events.parquet"
    assert main(["events", "--events", str(out), "--cards", "5", "--days", "2"]) == 0
    assert len(pd.read_parquet(out)) > 0
