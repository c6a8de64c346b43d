"""Built-in datasets: a synthetic fraud table with drift knobs, its event mode, and sklearn's digits.

``make_transactions`` draws features from fixed distributions and labels them with a logistic
rule, so every kind of drift can be dialled in on purpose and its effect measured:

* covariate shift (``shift``): a numeric feature's distribution moves, the rule stays;
* prior shift (``positive_rate``): the rule's intercept is re-solved for a new positive rate;
* concept drift (``concept_drift``): the rule's coefficients move toward a different rule.

The random draws do not depend on the knobs, so two calls with the same seed differ only by
the drift applied (a clean before/after pair).

``make_transaction_events`` is the event mode of the same world: raw card transactions with a card
id and a timestamp, from which per-card aggregates over time windows are features
(:mod:`modelyard.features`). Fraud there comes in bursts (a stolen card is drained fast), so a card's
recent activity is what tells fraud apart.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from modelyard.data.schema import ColumnSpec, Schema

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_POSITIVE_RATE",
    "TRANSACTIONS_NUMERIC_FEATURES",
    "BuiltinDataset",
    "digits_schema",
    "load_digits_frame",
    "make_transaction_events",
    "make_transactions",
    "transactions_schema",
]

logger = logging.getLogger(__name__)

DEFAULT_POSITIVE_RATE = 0.025
_REFERENCE_ROWS = 50_000
_REFERENCE_SEED = 20_240_601

# name -> (probabilities); order fixes the draw, so do not reorder without expecting new data
_MERCHANTS = {"grocery": 0.30, "restaurants": 0.18, "fuel": 0.12, "online_services": 0.12,
              "fashion": 0.10, "electronics": 0.10, "travel": 0.08}
_COUNTRIES = {"US": 0.45, "GB": 0.15, "DE": 0.12, "FR": 0.10, "IN": 0.08, "BR": 0.06, "NG": 0.04}
_CHANNELS = {"pos": 0.55, "online": 0.35, "atm": 0.10}
# more card activity in the day than at night
_HOUR_WEIGHTS = np.array([1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 8, 9, 9, 8, 8, 8, 9, 9, 8, 6, 4, 3, 2], float)

# (dtype, min, max) of each numeric feature; generated values are clipped into these ranges
_NUMERIC = {
    "amount": ("float", 0.0, 50_000.0),
    "hour_of_day": ("int", 0, 23),
    "account_age_days": ("int", 0, 10_000),
    "num_tx_24h": ("int", 0, 200),
    "distance_from_home_km": ("float", 0.0, 20_000.0),
}
TRANSACTIONS_NUMERIC_FEATURES: tuple[str, ...] = tuple(_NUMERIC)

# Two label rules over standardised transforms and category indicators. RULE_A is the
# undrifted world (big, far, night-time, online purchases on new accounts); RULE_B weights
# other features (small card-testing amounts at ATMs, bursts of transactions), so a model that
# learned RULE_A ranks RULE_B fraud badly.
_RULE_A = {"log_amount": 1.1, "log_distance": 0.9, "is_night": 1.3, "log_account_age": -0.9,
           "num_tx_z": 0.5, "merchant=electronics": 1.0, "merchant=online_services": 0.7,
           "merchant=travel": 0.3, "channel=online": 0.9, "country=NG": 0.6, "country=BR": 0.3}
_RULE_B = {"log_amount": -1.3, "num_tx_z": 1.4, "log_account_age": 0.4, "merchant=fuel": 1.0,
           "merchant=grocery": 0.6, "merchant=electronics": -0.6, "channel=atm": 1.5,
           "channel=online": -0.7, "country=IN": 0.9, "country=DE": 0.5}
_TERMS = tuple(dict.fromkeys([*_RULE_A, *_RULE_B]))


def _draw_features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Undrifted raw features, each ``(n,)``; numeric ones unclipped floats."""
    return {
        "amount": rng.lognormal(mean=3.6, sigma=0.9, size=n),
        "hour_of_day": rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()).astype(float),
        "account_age_days": np.floor(rng.exponential(scale=900.0, size=n)),
        "num_tx_24h": rng.poisson(lam=3.0, size=n).astype(float),
        "distance_from_home_km": rng.lognormal(mean=2.0, sigma=1.2, size=n),
        "merchant_category": rng.choice(list(_MERCHANTS), size=n, p=list(_MERCHANTS.values())),
        "country": rng.choice(list(_COUNTRIES), size=n, p=list(_COUNTRIES.values())),
        "channel": rng.choice(list(_CHANNELS), size=n, p=list(_CHANNELS.values())),
    }


def _clip(features: dict[str, np.ndarray]) -> None:
    """Round int features and clip numeric features into the schema ranges, in place."""
    for name, (dtype, low, high) in _NUMERIC.items():
        values = np.round(features[name]) if dtype == "int" else features[name]
        features[name] = np.clip(values, low, high)


def _transforms(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "log_amount": np.log1p(f["amount"]),
        "log_distance": np.log1p(f["distance_from_home_km"]),
        "log_account_age": np.log1p(f["account_age_days"]),
        "num_tx": f["num_tx_24h"],
    }


class _Reference(NamedTuple):
    sd: dict[str, float]  # raw numeric feature sds, the unit of `shift`
    center: dict[str, tuple[float, float]]  # transform -> (mean, sd) for standardising
    design: np.ndarray  # (_REFERENCE_ROWS, len(_TERMS)) undrifted design matrix


def _design(f: dict[str, np.ndarray], center: dict[str, tuple[float, float]]) -> np.ndarray:
    """``(n, len(_TERMS))`` matrix of the rule terms."""
    t = _transforms(f)
    cols = []
    for term in _TERMS:
        if "=" in term:
            feature, level = term.split("=")
            column = {"merchant": "merchant_category"}.get(feature, feature)
            cols.append((f[column] == level).astype(float))
        elif term == "is_night":
            cols.append((f["hour_of_day"] <= 5).astype(float))
        else:
            key = term.removesuffix("_z")
            mean, sd = center[key]
            cols.append((t[key] - mean) / sd)
    return np.stack(cols, axis=1)


@functools.lru_cache(maxsize=1)
def _reference() -> _Reference:
    """Statistics of a large fixed undrifted sample; the yardstick for shifts and standardising."""
    f = _draw_features(np.random.default_rng(_REFERENCE_SEED), _REFERENCE_ROWS)
    _clip(f)
    sd = {name: float(np.std(f[name])) for name in _NUMERIC}
    center = {k: (float(v.mean()), float(v.std())) for k, v in _transforms(f).items()}
    return _Reference(sd, center, _design(f, center))


def _solve_intercept(design: np.ndarray, weights: np.ndarray, rate: float) -> float:
    """Intercept ``b`` with ``mean(sigmoid(b + design @ weights)) == rate``."""
    from scipy.optimize import brentq
    from scipy.special import expit

    score = design @ weights
    return float(brentq(lambda b: expit(b + score).mean() - rate, -50.0, 50.0, xtol=1e-10))


def make_transactions(
    n_rows: int = 20_000,
    seed: int = 0,
    *,
    shift: dict[str, float] | None = None,
    positive_rate: float | None = None,
    concept_drift: float = 0.0,
) -> pd.DataFrame:
    """Synthetic card transactions with a rare fraud label; deterministic given the arguments.

    Args:
        n_rows: rows to generate (>= 1). Default 20000.
        seed: random seed. Default 0.
        shift: feature -> move of its mean in standard deviations of the undrifted distribution
            (covariate shift), e.g. ``{"amount": 0.5}``. Values are clipped into the schema
            range afterwards, so near a bound the realised move is smaller.
        positive_rate: expected share of ``is_fraud == 1`` in (0, 1); the rule's intercept is
            solved so the mean fraud probability of these rows equals it. Default ``None``:
            the intercept giving 2.5% on undrifted data (so ``shift`` changes the rate too).
        concept_drift: 0..1, how far the label rule moves toward a different rule. Default 0.

    Returns:
        ``(n_rows, 9)`` frame in :func:`transactions_schema` column order and canonical dtypes.

    Raises:
        ValueError: on an unknown ``shift`` feature (the numeric features are listed), or a
            knob out of range.
    """
    from scipy.special import expit

    problems = []
    if not isinstance(n_rows, int) or n_rows < 1:
        problems.append(f"n_rows must be an int >= 1, got {n_rows!r}")
    shift = dict(shift or {})
    unknown = [k for k in shift if k not in _NUMERIC]
    if unknown:
        problems.append(
            f"shift names unknown feature(s) {unknown}; shiftable numeric features: "
            f"{', '.join(_NUMERIC)}"
        )
    if positive_rate is not None and not 0.0 < positive_rate < 1.0:
        problems.append(f"positive_rate must be in (0, 1) exclusive, got {positive_rate!r}")
    if not 0.0 <= concept_drift <= 1.0:
        problems.append(f"concept_drift must be in [0, 1], got {concept_drift!r}")
    if problems:
        raise ValueError("make_transactions: " + "; ".join(problems))

    ref = _reference()
    rng = np.random.default_rng(seed)
    features = _draw_features(rng, n_rows)
    for name, sds in shift.items():
        moved = features[name] + float(sds) * ref.sd[name]
        if _NUMERIC[name][0] == "int" and sds:
            # Dithered rounding: plain rounding would erase any move under half a unit (a quarter sd of
            # num_tx_24h is 0.43 counts), so an int feature moves up one with the fractional part's
            # probability and its mean moves by exactly `sds` sd. Its own generator keeps the main stream.
            moved = np.floor(moved + np.random.default_rng([seed, 1]).random(n_rows))
        features[name] = moved
    _clip(features)

    rule = {t: (1 - concept_drift) * _RULE_A.get(t, 0.0) + concept_drift * _RULE_B.get(t, 0.0) for t in _TERMS}
    weights = np.array([rule[t] for t in _TERMS])
    design = _design(features, ref.center)
    if positive_rate is None:
        intercept = _solve_intercept(ref.design, weights, DEFAULT_POSITIVE_RATE)
    else:
        intercept = _solve_intercept(design, weights, positive_rate)
    # drawn last and always, so the knobs never change the features' random stream
    uniform = rng.random(n_rows)
    label = (uniform < expit(intercept + design @ weights)).astype(np.int64)

    frame = pd.DataFrame(index=pd.RangeIndex(n_rows))
    for name, (dtype, _, _) in _NUMERIC.items():
        frame[name] = features[name].astype(np.int64 if dtype == "int" else np.float64)
    for name in ("merchant_category", "country", "channel"):
        frame[name] = pd.Series(features[name].tolist(), dtype=object)
    frame["is_fraud"] = label
    logger.debug("make_transactions(n_rows=%d, seed=%d): positive rate %.4f", n_rows, seed, label.mean())
    return frame


def make_transaction_events(
    n_cards: int = 500,
    days: float = 14.0,
    seed: int = 0,
    *,
    start: str | pd.Timestamp = "2026-01-01",
    tx_per_day: float = 3.0,
    fraud_card_rate: float = 0.05,
) -> pd.DataFrame:
    """Raw card transactions in time order (the event mode of :func:`make_transactions`); deterministic.

    Every card spends at its own rate (``tx_per_day`` on average) at uniformly random times; a share
    ``fraud_card_rate`` of the cards is stolen once, at a random moment, and then drained by a burst of
    3..8 larger transactions within an hour, each labelled ``is_fraud == 1``. A transaction's label is
    known at its own ``event_timestamp`` (the time of the prediction the label judges).

    Args:
        n_cards: cards (>= 1). Default 500.
        days: length of the period in days (> 0). Default 14.
        seed: random seed. Default 0.
        start: first moment of the period (UTC). Default 2026-01-01.
        tx_per_day: mean transactions per card and day (> 0). Default 3.
        fraud_card_rate: share of cards with a fraud burst, in [0, 1]. Default 0.05.

    Returns:
        One row per transaction, sorted by ``event_timestamp``: ``transaction_id`` (int64, its row
        number), ``card_id`` (int64), ``event_timestamp`` (datetime64[ns, UTC], millisecond
        resolution, unique per card), ``amount`` (float64), ``hour_of_day`` (int64), ``is_fraud``
        (int64 0/1).

    Raises:
        ValueError: naming every argument out of range.
    """
    problems = []
    if isinstance(n_cards, bool) or not isinstance(n_cards, int) or n_cards < 1:
        problems.append(f"n_cards must be an int >= 1, got {n_cards!r}")
    if not days > 0:
        problems.append(f"days must be > 0, got {days!r}")
    if not tx_per_day > 0:
        problems.append(f"tx_per_day must be > 0, got {tx_per_day!r}")
    if not 0.0 <= fraud_card_rate <= 1.0:
        problems.append(f"fraud_card_rate must be in [0, 1], got {fraud_card_rate!r}")
    try:
        origin = pd.Timestamp(start)
        origin = origin.tz_localize("UTC") if origin.tzinfo is None else origin.tz_convert("UTC")
    except (TypeError, ValueError) as err:
        problems.append(f"start {start!r} is not a timestamp ({err}); expected e.g. '2026-01-01' or "
                        "'2026-01-01T00:00:00Z'")
    if problems:
        raise ValueError("make_transaction_events: " + "; ".join(problems))

    rng = np.random.default_rng(seed)
    period_ms = int(days * 86_400_000)
    rates = rng.lognormal(mean=np.log(tx_per_day) - 0.125, sigma=0.5, size=n_cards)  # per card, mean tx_per_day
    counts = rng.poisson(rates * days)
    card = np.repeat(np.arange(n_cards, dtype=np.int64), counts)
    offset_ms = rng.integers(0, period_ms, size=card.size)
    scale = rng.lognormal(mean=3.6, sigma=0.4, size=n_cards)  # each card's usual spend
    amount = scale[card] * rng.lognormal(mean=0.0, sigma=0.7, size=card.size)
    label = np.zeros(card.size, dtype=np.int64)

    stolen = np.flatnonzero(rng.random(n_cards) < fraud_card_rate)
    burst = rng.integers(3, 9, size=stolen.size)
    burst_card = np.repeat(stolen, burst)
    burst_start = np.repeat(rng.integers(0, max(period_ms - 3_600_000, 1), size=stolen.size), burst)
    burst_offset = burst_start + rng.integers(0, 3_600_000, size=burst_card.size)  # within an hour
    burst_amount = rng.lognormal(mean=5.0, sigma=0.8, size=burst_card.size)

    frame = pd.DataFrame({
        "card_id": np.concatenate([card, burst_card]),
        "offset_ms": np.concatenate([offset_ms, burst_offset]),
        "amount": np.round(np.concatenate([amount, burst_amount]), 2),
        "is_fraud": np.concatenate([label, np.ones(burst_card.size, dtype=np.int64)]),
    })
    # one event per card and millisecond: the point-in-time join relies on a card's events being ordered
    frame = frame.drop_duplicates(["card_id", "offset_ms"]).sort_values(["offset_ms", "card_id"], kind="stable")
    frame = frame[frame["offset_ms"] < period_ms].reset_index(drop=True)
    timestamps = origin + pd.to_timedelta(frame["offset_ms"].to_numpy(), unit="ms")
    out = pd.DataFrame({
        "transaction_id": np.arange(len(frame), dtype=np.int64),
        "card_id": frame["card_id"].to_numpy(np.int64),
        "event_timestamp": pd.Series(timestamps, dtype="datetime64[ns, UTC]"),
        "amount": frame["amount"].to_numpy(np.float64),
        "hour_of_day": pd.Series(timestamps).dt.hour.to_numpy(np.int64),
        "is_fraud": frame["is_fraud"].to_numpy(np.int64),
    })
    logger.debug("make_transaction_events(n_cards=%d, days=%g, seed=%d): %d events, %d fraud", n_cards, days,
                 seed, len(out), int(out["is_fraud"].sum()))
    return out


def transactions_schema() -> Schema:
    """Schema of :func:`make_transactions`; identical to ``configs/data/schemas/transactions.yaml``."""
    numeric = [
        ColumnSpec(name, dtype, min=low, max=high)  # type: ignore[arg-type]
        for name, (dtype, low, high) in _NUMERIC.items()
    ]
    categorical = [
        ColumnSpec("merchant_category", "category", allowed=tuple(_MERCHANTS)),
        ColumnSpec("country", "category", allowed=tuple(_COUNTRIES)),
        ColumnSpec("channel", "category", allowed=tuple(_CHANNELS)),
    ]
    label = ColumnSpec("is_fraud", "int", min=0, max=1)
    return Schema(name="transactions", label="is_fraud", columns=(*numeric, *categorical, label))


def load_digits_frame() -> pd.DataFrame:
    """sklearn's 8x8 digits: ``(1797, 65)``, float ``px_0``..``px_63`` in 0..16, int ``digit`` 0..9."""
    from sklearn.datasets import load_digits

    pixels, target = load_digits(return_X_y=True)
    frame = pd.DataFrame(pixels.astype(np.float64), columns=[f"px_{i}" for i in range(64)])
    frame["digit"] = target.astype(np.int64)
    return frame


def digits_schema() -> Schema:
    """Schema of :func:`load_digits_frame`."""
    pixels = [ColumnSpec(f"px_{i}", "float", min=0.0, max=16.0) for i in range(64)]
    return Schema(name="digits", label="digit", columns=(*pixels, ColumnSpec("digit", "int", min=0, max=9)),
                  image_shape=(8, 8))


class BuiltinDataset(NamedTuple):
    """A built-in dataset: ``generator(...)`` returns the frame, ``schema()`` its schema."""

    generator: Callable[..., pd.DataFrame]
    schema: Callable[[], Schema]


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "transactions": BuiltinDataset(make_transactions, transactions_schema),
    "digits": BuiltinDataset(load_digits_frame, digits_schema),
}
