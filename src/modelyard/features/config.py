"""Configuration of ``modelyard features``: where the repository and the events are, what to generate."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt

from modelyard.config import ConfigError, SeedInt, declared_problems

__all__ = ["FeaturesConfig"]


@dataclass
class FeaturesConfig:
    """What ``modelyard features`` works on.

    Attributes:
        repo: the feature repository folder (registry, offline source, SQLite online store).
        events: Parquet file of raw transaction events: written by ``events``, read by ``apply`` and
            ``historical`` (columns of :func:`modelyard.data.make_transaction_events`).
        cards, days, seed, start, tx_per_day, fraud_card_rate: the generator of ``events``.
        end: ``materialize`` up to this moment (ISO 8601, UTC when no zone); None: now.
        interval_s: ``materialize`` again every this many seconds until interrupted; 0: once.
        out: ``historical`` writes the training table here (Parquet: the model's columns and the label).
    """

    repo: str = "data/features"
    events: str = "data/features/events.parquet"
    cards: PositiveInt = 500
    days: PositiveFloat = 14.0
    seed: SeedInt = 0
    start: str = "2026-01-01"
    tx_per_day: PositiveFloat = 3.0
    fraud_card_rate: ClosedUnitInterval = 0.05
    end: str | None = None
    interval_s: NonNegativeFloat = 0.0
    out: str = "data/features/training.parquet"

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        for key in ("start", "end"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                pd.Timestamp(value)
            except (TypeError, ValueError):
                problems.append(f"{key} {value!r} is not a moment; expected ISO 8601, e.g. 2026-01-01 or "
                                "2026-01-14T12:00:00Z")
        if problems:
            raise ConfigError(problems, "features configuration")
