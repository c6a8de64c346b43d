"""Has the live input (or the model's output) moved away from what the model was trained on?

One window of live rows is compared with the run's reference profile (:mod:`modelyard.train.profile`):

* numeric feature: two-sample Kolmogorov-Smirnov test of the profile's training sample against the
  window, and the population stability index (PSI) on the profile's equal-frequency bins;
* categorical feature: chi-squared test of the 2 x K table (training frequencies, window counts), with
  categories never seen in training in one extra column, and PSI on the same categories;
* predictions (when scores are given): KS and PSI of the window's scores against the validation scores;
* embedding (a model whose inputs are not columns, when the profile has an embedding sample and the
  window's embeddings are given): a multivariate two-sample test, MMD and/or a domain classifier
  (:mod:`modelyard.monitor.embedding`).

The p-values of one window form one family and are corrected together, so that a quiet window raises a
false alarm on *any* feature with probability about ``alpha``. A test alone is a poor judge at both ends
of the sample size: with 100k rows KS flags shifts nobody cares about, with 50 rows nothing; PSI gives a
size-free effect measure, ``min_samples`` keeps tiny windows quiet.

The statistics are scipy's (``ks_2samp``, ``chi2_contingency``, ``false_discovery_control``); only PSI,
the merging of sparse table columns, Bonferroni/Holm and the glue are written by hand here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt

from modelyard.config import declared_problems
from modelyard.monitor.embedding import embedding_tests

if TYPE_CHECKING:
    from modelyard.models.spec import DataSpec

__all__ = ["CORRECTIONS", "UNSEEN", "DriftReport", "DriftSettings", "FeatureDrift", "adjust_p_values",
           "contingency_test", "decode_features", "detect_drift", "population_stability_index"]

Correction = Literal["bh", "by", "bonferroni", "holm"]
EmbeddingTest = Literal["mmd", "classifier", "both"]
CORRECTIONS: tuple[str, ...] = ("bh", "by", "bonferroni", "holm")
UNSEEN = "(unseen)"  # a category the model never saw in training (code 0 of encode_features)
# An empty bin makes ln(0) infinite. 1e-4 (0.01 %) keeps PSI finite while a bin holding 10 % on one
# side and nothing on the other still adds 0.1 * ln(1000) = 0.69, far above any threshold.
PSI_EPSILON = 1e-4
MIN_EXPECTED = 5.0  # the textbook validity rule of the chi-squared approximation
MIN_PROFILE_VERSION = 2  # the first profile with reference samples


@dataclass
class DriftSettings:
    """How sure the monitor must be before it calls a feature drifted.

    Attributes:
        alpha: family-wise significance after correction. 0.01: a window without drift raises a false
            alarm on any feature at most ~1 % of the time, i.e. a few times a year at daily checks.
        correction: multiple-testing correction across all tests of a window. ``bh``
            (Benjamini-Hochberg, default) and ``by`` (Benjamini-Yekutieli, valid under any dependence)
            control the false discovery rate and, when nothing drifted, the family-wise error rate;
            ``bonferroni``/``holm`` control the family-wise error rate always, at some loss of power.
        psi_threshold: a feature with PSI >= this is drifted whatever its p-value; 0.2 is the
            industry rule of thumb for a significant shift (0.1-0.2 moderate).
        min_samples: a feature with fewer current values is "insufficient" and never alarms.
        embedding_test: for a profile with an embedding sample (text, images), the multivariate test
            of the window's embeddings: ``mmd`` (kernel two-sample test, permutation p-value),
            ``classifier`` (domain classifier, cross-validated AUC) or ``both`` (two p-values in the
            window's family).
        embedding_pca: principal components (of reference and window pooled, each whitened) the
            embedding tests run on; ``null``: all of them (the embedding sphered, not reduced).
        permutations: permutations of the MMD test; the smallest p-value it can give is
            ``1 / (permutations + 1)``, so keep it well above ``tests / alpha``.
        embedding_max_rows: window rows the embedding tests use at most (a seeded sample of a larger
            window): the kernel matrix grows with the square of the rows.
        seed: seed of the permutations, the classifier's folds and the row samples (one window, one
            verdict).
    """

    alpha: OpenUnitInterval = 0.01
    correction: Correction = "bh"
    psi_threshold: PositiveFloat = 0.2
    min_samples: PositiveInt = 500
    embedding_test: EmbeddingTest = "mmd"
    embedding_pca: PositiveInt | None = 16
    permutations: PositiveInt = 1000
    embedding_max_rows: PositiveInt = 2000
    seed: NonNegativeInt = 0

    def problems(self) -> list[str]:
        """Every value that does not fit its declared type, named (empty when the settings are usable)."""
        return declared_problems(self)


@dataclass
class FeatureDrift:
    """The verdict on one feature (or on the predictions) for one window.

    ``reference``/``current`` hold the histograms behind PSI, ready to plot: ``{"edges", "counts"}``
    for numeric values and scores (outer bins also hold values beyond the reference range),
    ``{"categories", "counts"}`` for categories; both carry ``missing_share`` (missing / all rows).
    ``n_reference`` is the size of the reference sample the test used.

    Embedding tests (``kind="embedding"``, named ``embedding:<test>``) have no bins and no PSI (0);
    ``reference``/``current`` hold the two samples on the reference's first two principal axes
    (``{"points", "mean"}``, see :func:`~modelyard.monitor.embedding.projection`) and ``current`` also
    the test's own figures (``test_figures``: MMD^2 and its permutation null, or the classifier's AUC
    and its out-of-fold scores).
    """

    name: str
    kind: str  # numeric | categorical | prediction | embedding
    test: str  # ks | chi2 | mmd | classifier
    statistic: float
    p_value: float
    p_adjusted: float
    psi: float
    n_reference: int
    n_current: int
    drifted: bool
    reason: str
    reference: dict[str, Any] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriftReport:
    """All features of one window (profile order), the embedding tests, then ``predictions`` when scores
    were tested."""

    features: list[FeatureDrift]
    settings: DriftSettings
    n_current: int
    meta: dict[str, Any] = field(default_factory=dict)  # model, reference run, window: the caller's

    @property
    def drifted(self) -> list[str]:
        """Names of the drifted input features (prediction drift is reported apart)."""
        return [f.name for f in self.features if f.drifted and f.kind != "prediction"]

    @property
    def prediction_drift(self) -> bool:
        return any(f.drifted for f in self.features if f.kind == "prediction")

    @property
    def embedding_drift(self) -> bool:
        """Whether an embedding test drifted (one multivariate verdict on the whole input)."""
        return any(f.drifted for f in self.features if f.kind == "embedding")

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features], "settings": asdict(self.settings),
                "n_current": self.n_current, "meta": self.meta, "drifted": self.drifted,
                "prediction_drift": self.prediction_drift, "embedding_drift": self.embedding_drift}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReport:
        """Inverse of :meth:`to_dict` (the derived ``drifted``/``..._drift`` keys are ignored)."""
        return cls(features=[FeatureDrift(**f) for f in data["features"]],
                   settings=DriftSettings(**data.get("settings", {})),
                   n_current=int(data["n_current"]), meta=dict(data.get("meta", {})))


def population_stability_index(reference_counts: Sequence[float] | np.ndarray,
                               current_counts: Sequence[float] | np.ndarray) -> float:
    """PSI = sum((c - r) * ln(c / r)) over the bins' shares; 0 when either side is empty."""
    r = np.asarray(reference_counts, dtype=np.float64)
    c = np.asarray(current_counts, dtype=np.float64)
    if r.shape != c.shape:
        raise ValueError(f"PSI needs the same bins on both sides, got {r.shape} and {c.shape}")
    if r.sum() <= 0 or c.sum() <= 0:
        return 0.0
    r = np.clip(r / r.sum(), PSI_EPSILON, None)
    c = np.clip(c / c.sum(), PSI_EPSILON, None)
    return float(np.sum((c - r) * np.log(c / r)))


def adjust_p_values(p_values: Sequence[float] | np.ndarray, method: Correction) -> np.ndarray:
    """Multiple-testing adjusted p-values (compare them with ``alpha``), in input order."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p
    if method in ("bh", "by"):
        from scipy.stats import false_discovery_control

        return np.asarray(false_discovery_control(p, method=method), dtype=np.float64)
    if method == "bonferroni":
        return np.minimum(p * p.size, 1.0)
    if method == "holm":
        order = np.argsort(p, kind="stable")
        stepped = np.maximum.accumulate((p.size - np.arange(p.size)) * p[order])  # monotone step-down
        out = np.empty_like(p)
        out[order] = np.minimum(stepped, 1.0)
        return out
    raise ValueError(f"unknown correction {method!r}; expected one of {', '.join(CORRECTIONS)}")


def contingency_test(table: np.ndarray) -> tuple[float, float]:
    """Chi-squared ``(statistic, p_value)`` of a 2 x K count table, sparse columns merged first.

    Columns whose expected count is below 5 in either row are pooled into one column (and that pool
    into the smallest other column if it is still sparse), so the chi-squared approximation holds.
    Fewer than two usable columns: ``(0.0, 1.0)``, nothing to compare.
    """
    from scipy.stats import chi2_contingency

    table = np.asarray(table, dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    sparse = expected.min(axis=0) < MIN_EXPECTED
    if sparse.any():
        pool = table[:, sparse].sum(axis=1, keepdims=True)
        table = np.hstack([table[:, ~sparse], pool])
        pool_expected = np.outer(table.sum(axis=1), pool.sum(axis=0)) / table.sum()
        if pool_expected.min() < MIN_EXPECTED and table.shape[1] > 2:
            smallest = int(np.argmin(table[:, :-1].sum(axis=0)))
            table[:, smallest] += table[:, -1]
            table = table[:, :-1]
    if table.shape[1] < 2:
        return 0.0, 1.0
    result = chi2_contingency(table)
    return float(result.statistic), float(result.pvalue)


def decode_features(matrix: np.ndarray, spec: DataSpec) -> pd.DataFrame:
    """Inverse of :func:`~modelyard.models.spec.encode_features`: the raw-value frame of a model input.

    ``matrix`` ``(N, F)``: numeric columns come back as float64 (``NaN`` kept; float32 inputs carry
    float32 precision), category codes as their strings, code 0 (or any invalid code) as ``"(unseen)"``.

    Raises:
        ValueError: if ``matrix`` is not ``(N, spec.num_features)``.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != spec.num_features:
        raise ValueError(f"decode_features expects a matrix of shape (N, {spec.num_features}) for features "
                         f"{spec.feature_names}, got shape {matrix.shape}")
    columns: dict[str, Any] = {}
    for j, feat in enumerate(spec.features):
        col = matrix[:, j].astype(np.float64)  # (N,)
        if feat.kind == "categorical":
            lookup = np.array([UNSEEN, *feat.categories], dtype=object)
            valid = np.isfinite(col) & (col == np.round(col)) & (col >= 0) & (col < len(lookup))
            columns[feat.name] = lookup[np.where(valid, col, 0).astype(np.int64)]
        else:
            columns[feat.name] = col
    return pd.DataFrame(columns, index=pd.RangeIndex(len(matrix)))


def _missing_share(missing: int, total: int) -> float:
    return missing / total if total else 0.0


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts on ``edges`` with the outer edges taken as -inf/+inf (values outside the range count)."""
    # side="right": interior bins are [e_i, e_i+1) like np.histogram, the last one [e_-2, inf)
    return np.bincount(np.searchsorted(edges[1:-1], values, side="right"), minlength=len(edges) - 1)


def _numeric(name: str, kind: str, sample: Sequence[float], hist: dict[str, Any], values: np.ndarray,
             ref_missing: float) -> dict[str, Any]:
    """KS and PSI of ``values`` (float, NaN = missing) against a reference sample and histogram."""
    from scipy.stats import ks_2samp

    ref = np.asarray(sample, dtype=np.float64)
    missing = np.isnan(values)
    cur = values[~missing]
    statistic, p_value = 0.0, 1.0
    if ref.size and cur.size:
        result = ks_2samp(ref, cur)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    edges = np.asarray(hist["edges"], dtype=np.float64)
    cur_counts = _bin_counts(cur, edges)
    return {
        "name": name, "kind": kind, "test": "ks", "statistic": statistic, "p_value": p_value,
        "psi": population_stability_index(hist["counts"], cur_counts), "n_reference": int(ref.size),
        "n_current": int(cur.size),
        "reference": {"edges": edges.tolist(), "counts": [int(c) for c in hist["counts"]],
                      "missing_share": ref_missing},
        "current": {"edges": edges.tolist(), "counts": cur_counts.tolist(),
                    "missing_share": _missing_share(int(missing.sum()), values.size),
                    "below_range": int((cur < edges[0]).sum()), "above_range": int((cur > edges[-1]).sum())},
    }


def _categorical(name: str, entry: dict[str, Any], values: pd.Series) -> dict[str, Any]:
    """Chi-squared and PSI of the window's categories against the training frequencies."""
    frequencies: dict[str, int] = entry["frequencies"]
    categories = [*frequencies, UNSEEN]
    ref_counts = np.array([*frequencies.values(), 0], dtype=np.int64)
    present = values.dropna().map(str)
    index = {c: i for i, c in enumerate(frequencies)}
    codes = present.map(index).fillna(len(frequencies)).to_numpy(dtype=np.int64)  # unknown -> UNSEEN
    cur_counts = np.bincount(codes, minlength=len(categories))
    statistic, p_value = contingency_test(np.vstack([ref_counts, cur_counts]))
    return {
        "name": name, "kind": "categorical", "test": "chi2", "statistic": statistic, "p_value": p_value,
        "psi": population_stability_index(ref_counts, cur_counts), "n_reference": int(ref_counts.sum()),
        "n_current": int(cur_counts.sum()),
        "reference": {"categories": categories, "counts": ref_counts.tolist(),
                      "missing_share": _missing_share(entry["missing"], entry["missing"] + entry["count"])},
        "current": {"categories": categories, "counts": cur_counts.tolist(),
                    "missing_share": _missing_share(len(values) - len(present), len(values)),
                    "unseen": int(cur_counts[-1])},
    }


def _check_inputs(profile: dict[str, Any], current: pd.DataFrame) -> None:
    version = profile.get("version", 0)
    if not isinstance(version, int) or version < MIN_PROFILE_VERSION:
        raise ValueError(
            f"the reference profile has version {version!r}; drift detection needs version >= "
            f"{MIN_PROFILE_VERSION} (reference samples for the KS tests). The run predates profile v2: "
            "retrain the model, or rebuild its profile with modelyard.train.profile.build_reference_profile"
        )
    missing = [name for name in profile["features"] if name not in current.columns]
    if missing:
        raise ValueError(f"the current window lacks feature(s) {missing} of the reference profile; "
                         f"columns received: {list(current.columns)}")


def _verdict(test: dict[str, Any], p_adjusted: float, settings: DriftSettings) -> FeatureDrift:
    n = test["n_current"]
    if n < settings.min_samples:
        drifted, reason = False, f"insufficient samples ({n} < {settings.min_samples})"
    elif test["kind"] == "embedding":  # no bins, no PSI: the test's p-value alone
        drifted = p_adjusted < settings.alpha
        reason = (f"p_adj={p_adjusted:.2g} < {settings.alpha:g} ({test['test']} {test['statistic']:.3g})" if drifted
                  else f"no drift (p_adj={p_adjusted:.2g}, {test['test']} {test['statistic']:.3g})")
    else:
        reasons = []
        if p_adjusted < settings.alpha:
            reasons.append(f"p_adj={p_adjusted:.2g} < {settings.alpha:g} ({test['test']})")
        if test["psi"] >= settings.psi_threshold:
            reasons.append(f"psi {test['psi']:.3g} >= {settings.psi_threshold:g}")
        drifted = bool(reasons)
        reason = "; ".join(reasons) if reasons else f"no drift (p_adj={p_adjusted:.2g}, psi {test['psi']:.3g})"
    return FeatureDrift(**test, p_adjusted=p_adjusted, drifted=drifted, reason=reason)


def detect_drift(profile: dict[str, Any], current: pd.DataFrame, scores: np.ndarray | None = None,
                 settings: DriftSettings | None = None, embeddings: np.ndarray | None = None) -> DriftReport:
    """Test every profiled feature (the embeddings, the prediction scores) of one window for drift.

    Args:
        profile: a reference profile of version >= 2 (``reference_profile.json`` of a run).
        current: the window's raw feature values, one column per profiled feature (extra columns are
            ignored); :func:`decode_features` builds it from logged model inputs.
        scores: ``(M,)`` the window's prediction scores, the same score the profile describes
            (``profile["predictions"]["score"]``; see ``modelyard.train.profile.prediction_scores``).
            ``None``: predictions are not tested.
        settings: significance, correction, PSI threshold, minimum sample size. Default
            :class:`DriftSettings()`.
        embeddings: ``(M, D)`` the window's embeddings (the output the profile's ``embedding`` entry
            names). Tested when the profile has an embedding sample; ``None``: not tested.

    Raises:
        ValueError: invalid settings; a profile older than version 2; profiled features missing from
            ``current``; ``scores`` that are not one-dimensional; embeddings of another width than the
            profile's.
    """
    settings = settings or DriftSettings()
    if problems := settings.problems():
        raise ValueError("invalid drift settings: " + "; ".join(problems))
    _check_inputs(profile, current)
    tests = []
    for name, entry in profile["features"].items():
        values = current[name]
        if entry["kind"] == "categorical":
            tests.append(_categorical(name, entry, values))
            continue
        ref_missing = _missing_share(entry["missing"], entry["missing"] + entry["count"])
        hist = entry.get("histogram", {"edges": [0.0, 1.0], "counts": [0]})  # absent: no training values
        x = values.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        tests.append(_numeric(name, "numeric", entry.get("sample", []), hist, x, ref_missing))

    if embeddings is not None and (profile.get("embedding") or {}).get("sample"):
        tests += embedding_tests(profile["embedding"], embeddings, settings)

    predictions = profile.get("predictions") or {}
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1:
            raise ValueError(f"scores must be one score per row, shape (M,), got shape {scores.shape}; the "
                             f"profile's score is the {predictions.get('score', 'model output')}")
        classification = predictions.get("kind") == "classification"
        sample = predictions.get("score_sample" if classification else "sample")
        hist = predictions.get("score_histogram" if classification else "histogram")
        if sample is not None and hist is not None:
            tests.append(_numeric("predictions", "prediction", sample, hist, scores, 0.0))

    adjusted = adjust_p_values([t["p_value"] for t in tests], settings.correction)
    features = [_verdict(t, float(p), settings) for t, p in zip(tests, adjusted)]
    return DriftReport(features=features, settings=settings, n_current=len(current))
