"""Card-feature enrichment: a request that carries only ``card_id`` and the current transaction gets its
card's aggregates from the feature store's online store, and the model its full row of features.

Pure of Ray: the ingress (:mod:`modelyard.serve.ray.ingress`) builds one :class:`CardFeatureEnricher`
when the serve config names a feature repository (``features_repo``), offers its inputs beside the
signature's, and calls it for a request that gives ``card_id``. The row is assembled in the order of
the model's columns (:data:`modelyard.features.MODEL_COLUMNS` unless configured), the same order the
training table of ``modelyard features historical`` has, and the aggregates go through the same
function (Feast's online lookup, then ``expire_windows``) as at training time: no training/serving skew.

A request::

    {"inputs": [{"name": "card_id", "datatype": "INT64", "shape": [2], "data": [17, 42]},
                {"name": "amount", "datatype": "FP32", "shape": [2], "data": [12.5, 980.0]},
                {"name": "hour_of_day", "datatype": "FP32", "shape": [2], "data": [14, 3]}]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from modelyard.features.aggregates import AGGREGATE_FEATURES, CARD_KEY, MODEL_COLUMNS
from modelyard.features.store import online_features, open_store
from modelyard.serve.ray.codec import KServeError
from modelyard.signature import Signature, SignatureError, TensorSig

__all__ = ["CARD_INPUT", "CardFeatureEnricher"]

CARD_INPUT = TensorSig(CARD_KEY, "INT64", ("batch",))


class CardFeatureEnricher:
    """Turns ``card_id`` + the transaction's own columns into the model's one feature matrix.

    Args:
        repo: the feature repository (``modelyard features apply`` wrote it; ``materialize`` keeps its
            online store current).
        signature: the served model's; it must have one FP32 input ``(batch, F)`` with ``F == len(columns)``.
        columns: the model's feature columns in order; the names of :data:`AGGREGATE_FEATURES` among them
            come from the online store, every other one from the request (one FP32 ``[batch]`` input each).

    Raises:
        SignatureError: when the model's inputs cannot take such a row (names what it has and needs).
    """

    def __init__(self, repo: str, signature: Signature, columns: Sequence[str] = MODEL_COLUMNS) -> None:
        self.repo, self.columns = repo, tuple(columns)
        own = [c for c in self.columns if c not in AGGREGATE_FEATURES]
        if len(set(self.columns)) != len(self.columns) or CARD_KEY in own:
            raise SignatureError(f"features_columns {list(self.columns)} must be distinct names, without {CARD_KEY!r}")
        target = signature.inputs[0] if len(signature.inputs) == 1 else None
        if (target is None or target.dtype != "FP32" or len(target.shape) != 2
                or target.shape[1] != len(self.columns)):
            got = ", ".join(f"{t.name} {t.dtype} {t.kserve_shape()}" for t in signature.inputs)
            raise SignatureError(f"card-feature enrichment fills one FP32 input [batch, {len(self.columns)}] (the "
                                 f"columns {list(self.columns)}); the model's inputs are {got}. Serve a model trained "
                                 "on `modelyard features historical` data, or set features_columns to its columns")
        self.target = target.name
        self.inputs: tuple[TensorSig, ...] = (CARD_INPUT, *(TensorSig(c, "FP32", ("batch",)) for c in own))
        self._store: Any = None  # the Feast store, opened on first use

    def handles(self, inputs: Mapping[str, np.ndarray]) -> bool:
        """Whether a request asks for enrichment: it gives ``card_id``."""
        return CARD_KEY in inputs

    def __call__(self, inputs: Mapping[str, np.ndarray], as_of: pd.Timestamp | None = None) -> dict[str, np.ndarray]:
        """``{target: (B, F) float32}`` for the request's ``inputs``, the aggregates as of ``as_of`` (now).

        Raises:
            KServeError: (400) when an input is missing or one of the model's own inputs is given too.
        """
        expected = sorted(t.name for t in self.inputs)
        if sorted(inputs) != expected:
            missing = sorted(set(expected) - set(inputs))
            extra = sorted(set(inputs) - set(expected))
            raise KServeError(f"a request with {CARD_KEY!r} is enriched from the feature store and needs exactly the "
                              f"inputs {expected} ({CARD_KEY} INT64 [batch], the others FP32 [batch]); "
                              + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                       f"not expected {extra}" if extra else "") if p))
        if self._store is None:
            self._store = open_store(self.repo)
        cards = inputs[CARD_KEY].reshape(-1)
        found = online_features(self.repo, cards, as_of=as_of, store=self._store)  # one row per card, in order
        columns = [found[c].to_numpy(np.float32) if c in AGGREGATE_FEATURES else inputs[c].reshape(-1)
                   for c in self.columns]
        return {self.target: np.stack(columns, axis=1).astype(np.float32)}  # (B, F)
