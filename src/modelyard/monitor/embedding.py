"""Has the live input moved, judged on the model's embeddings (text, images: inputs that are not columns)?

A model whose inputs are token ids or pixels has no column to test one by one; its ``embedding`` output
(the vector its head reads) summarises each input, and a change of the input's distribution that matters
to the model shows there. One window of logged embeddings is compared with the sample of validation
embeddings in the run's reference profile by a multivariate two-sample test:

* ``mmd``: the maximum mean discrepancy with a Gaussian kernel whose bandwidth is the median pairwise
  distance of the pooled sample (the median heuristic), and a permutation p-value;
* ``classifier``: a domain classifier (logistic regression) learns to tell reference from window rows
  on half of them; its AUC on the other half is the statistic, and the Mann-Whitney U test of those
  held-out scores (U / (n_ref * n_window) is that AUC) the p-value, exact under no drift.

Both run on the principal components of the pooled sample (``DriftSettings.embedding_pca`` of them),
each scaled to unit variance (whitened). Pooled: the pooled sample does not change under a permutation
of the labels, so the permutation test stays exact. Whitened: the kernel is isotropic, and without
whitening its distances are those of the few directions along which the inputs differ most (the text
model's topics); a drift along a direction of little variance (5 % unseen words, texts 30 % longer)
took the MMD p-value below 0.005 in 0-25 % of windows, against 100 % once each component counts alike
(the classifier, whose features are standardised, saw it either way).

Why written here: alibi-detect has both tests but is BSL-licensed and pulls TensorFlow; frouros (BSD)
recomputes the whole MMD for every permutation in a process pool, O(permutations x n^2 x d) plus the
pickling, and torchdrift has had no release since 2021. The permutation test below computes the kernel
matrix once and evaluates blocks of permutations by one matrix product each (``K @ Z``): about 0.4 s of
products for 1,000 permutations of 2,000 + 2,000 rows on two cores. The classifier is scikit-learn's
``LogisticRegression``; the U test is scipy's ``mannwhitneyu``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelyard.monitor.drift import DriftSettings

__all__ = ["EMBEDDING_TESTS", "classifier_test", "embedding_tests", "median_bandwidth", "mmd_test", "projection",
           "whitened_components"]

EMBEDDING_TESTS = ("mmd", "classifier")
PROJECTION_POINTS = 500  # points per side in the report's 2-D picture: enough to see a shift, small JSON
NULL_BINS = 30  # bins of the permutation null distribution kept for the report's picture
_PERMUTATION_CHUNK = 256  # permutations per matrix product: n x 256 float32 indicators at a time
_BANDWIDTH_POINTS = 1000  # points of the pooled sample whose pairwise distances give the median


def _squared_distances(x: np.ndarray) -> np.ndarray:
    """``(n, n)`` float32 squared Euclidean distances between the rows of ``x`` ``(n, d)``."""
    x = x.astype(np.float32, copy=False)
    sq = np.einsum("ij,ij->i", x, x)
    d2 = x @ x.T  # in place from here: one n x n matrix, no temporaries
    d2 *= -2.0
    d2 += sq[:, None]
    d2 += sq[None, :]
    np.maximum(d2, 0.0, out=d2)  # rounding makes some tiny distances negative
    np.fill_diagonal(d2, 0.0)
    return d2


def median_bandwidth(d2: np.ndarray, rng: np.random.Generator) -> float:
    """The median heuristic: median pairwise squared distance of (a seeded subset of) the pooled rows.

    The subset is drawn without looking at which rows are reference and which window, so the
    bandwidth is the same under every permutation of the labels.
    """
    n = d2.shape[0]
    idx = np.sort(rng.choice(n, size=min(n, _BANDWIDTH_POINTS), replace=False))
    sub = d2[np.ix_(idx, idx)]
    values = sub[np.triu_indices(len(idx), k=1)]
    median = float(np.median(values)) if values.size else 0.0
    return median if median > 0 else 1.0  # all rows equal: any bandwidth gives MMD 0


def mmd_test(reference: np.ndarray, current: np.ndarray, permutations: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """Squared MMD (biased V-statistic) of ``reference`` ``(n_r, d)`` against ``current`` ``(n_c, d)``.

    Returns ``{"statistic", "p_value", "bandwidth", "permutations", "null"}``: ``bandwidth`` is the
    median pairwise squared distance (the kernel is ``exp(-|x - y|^2 / bandwidth)``), ``p_value`` is
    ``(1 + #{permuted >= observed}) / (1 + permutations)`` (never 0: its floor is the resolution) and
    ``null`` the permuted statistics ``(permutations,)``.
    """
    reference = np.asarray(reference, dtype=np.float32)
    current = np.asarray(current, dtype=np.float32)
    n_r, n_c = len(reference), len(current)
    if n_r < 2 or n_c < 2:
        return {"statistic": 0.0, "p_value": 1.0, "bandwidth": 0.0, "permutations": 0, "null": np.zeros(0)}
    rng = np.random.default_rng(seed)
    d2 = _squared_distances(np.vstack([reference, current]))
    bandwidth = median_bandwidth(d2, rng)
    d2 *= np.float32(-1.0 / bandwidth)
    kernel = np.exp(d2, out=d2)  # (n, n), in place: one n x n matrix in memory
    n = n_r + n_c
    row_sums = kernel.sum(axis=1, dtype=np.float64)  # (n,)
    total = float(row_sums.sum())

    def mmd2(z: np.ndarray) -> np.ndarray:
        """MMD^2 for label columns ``z`` ``(n, k)`` (1 = window) from three sums over the kernel.

        With ``s_cc = z'Kz`` (window-window) and ``r'z`` (window-all), the reference-reference and
        cross sums follow: ``s_rr = total - 2 r'z + s_cc``, ``s_rc = r'z - s_cc``.
        """
        s_cc = np.einsum("ij,ij->j", z, kernel @ z, dtype=np.float64)
        rz = row_sums @ z
        s_rr = total - 2.0 * rz + s_cc
        s_rc = rz - s_cc
        return s_rr / n_r ** 2 + s_cc / n_c ** 2 - 2.0 * s_rc / (n_r * n_c)

    observed_z = np.zeros((n, 1), np.float32)
    observed_z[n_r:] = 1.0
    observed = float(mmd2(observed_z)[0])
    null = np.empty(permutations, np.float64)
    for start in range(0, permutations, _PERMUTATION_CHUNK):
        k = min(_PERMUTATION_CHUNK, permutations - start)
        z = rng.permuted(np.repeat(observed_z, k, axis=1), axis=0)  # each column shuffled on its own
        null[start:start + k] = mmd2(z)
    # The same statistic computed two ways (observed vs permuted) may differ in the last float32 bits:
    # a permutation that equals the observed split must count as ">=", so compare with a tolerance.
    exceed = int((null >= observed - 1e-9 * max(abs(observed), 1e-12)).sum())
    return {"statistic": observed, "p_value": (1 + exceed) / (1 + permutations), "bandwidth": bandwidth,
            "permutations": permutations, "null": null}


def classifier_test(reference: np.ndarray, current: np.ndarray, seed: int = 0,
                    holdout: float = 0.5) -> dict[str, Any]:
    """Held-out AUC of a logistic regression telling ``current`` rows from ``reference`` rows.

    The classifier learns on a stratified random ``1 - holdout`` of both samples and scores the rest;
    the one-sided Mann-Whitney U test of "the window's held-out scores are higher" gives the p-value,
    and ``U / (n_ref * n_window)`` of the held-out rows is the AUC. Classes are weighted to balance,
    features standardised.

    Why a hold-out and not cross-validation: the held-out scores come from one model that never saw
    them, so under no drift they are exchangeable and the U test is exact. Pooled out-of-fold scores
    of k-fold cross-validation are not: fold models share training rows, so their fold AUCs are
    positively correlated, and the U test on them raised 10 % false alarms at a 5 % level in a
    simulation of Gaussian samples (a permutation test would fix it at k x permutations fits).

    Returns ``{"statistic": auc, "p_value", "n_test", "scores_reference", "scores_current"}`` (the
    held-out decision scores of both groups).
    """
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    n_r, n_c = len(reference), len(current)
    if min(n_r, n_c) < 4:
        return {"statistic": 0.5, "p_value": 1.0, "n_test": 0, "scores_reference": np.zeros(0),
                "scores_current": np.zeros(0)}
    x = np.vstack([reference, current])
    y = np.r_[np.zeros(n_r, np.int64), np.ones(n_c, np.int64)]
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=holdout, stratify=y, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
    scores = model.fit(x_fit, y_fit).decision_function(x_test)
    ref_scores, cur_scores = scores[y_test == 0], scores[y_test == 1]
    result = mannwhitneyu(cur_scores, ref_scores, alternative="greater")
    return {"statistic": float(result.statistic) / (len(ref_scores) * len(cur_scores)),
            "p_value": float(result.pvalue), "n_test": int(len(y_test)), "scores_reference": ref_scores,
            "scores_current": cur_scores}


def _pca(x: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, axes (components, d), explained variance ratio)`` of the rows of ``x``.

    From the eigenvectors of the ``d x d`` covariance (``numpy.linalg.eigh``): for the few thousand rows
    and tens of dimensions here that is a 64 x 64 problem, where an SVD of the rows (scikit-learn's
    PCA) factors the ``n x d`` matrix. Each axis's sign is fixed (largest loading positive), so the
    same reference gives the same picture.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))
    order = np.argsort(values)[::-1][:min(components, x.shape[1])]
    axes = vectors[:, order].T  # (k, d)
    axes *= np.where(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    total = float(values.clip(min=0).sum())
    ratio = values[order].clip(min=0) / total if total > 0 else np.zeros(len(order))
    return mean, axes, ratio


def whitened_components(x: np.ndarray, components: int | None) -> np.ndarray:
    """``(n, k)`` float32: the rows of ``x`` on its first ``k = components`` principal axes (all of them
    for None), each scaled to unit variance; axes without variance are left out."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return x.astype(np.float32)
    k = x.shape[1] if components is None else min(components, x.shape[1])
    mean, axes, ratio = _pca(x, k)
    projected = (x - mean) @ axes.T  # (n, k)
    scale = projected.std(axis=0)
    keep = scale > 1e-9 * max(float(scale.max()), 1e-300)
    return (projected[:, keep] / scale[keep]).astype(np.float32)


def projection(reference: np.ndarray, current: np.ndarray, seed: int = 0,
               points: int = PROJECTION_POINTS) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report's picture: both samples on the first two principal axes of the two pooled.

    Pooled, not the reference's own axes: a drift that moves the window away from the reference adds
    variance along the move, so the pooled axes turn towards it and the picture shows it; the
    reference's own axes may be orthogonal to it. Returns ``(reference_side, current_side)``, each
    ``{"points": [[x, y], ...], "mean": [x, y]}`` with up to ``points`` seeded rows; the reference side
    also has ``explained_variance`` (share of the pooled variance along each axis).
    """
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if len(reference) < 2 or reference.shape[1] < 2:
        return {"points": [], "mean": [], "explained_variance": []}, {"points": [], "mean": []}
    mean, axes, ratio = _pca(np.vstack([reference, current]), 2)
    rng = np.random.default_rng(seed)

    def side(x: np.ndarray) -> dict[str, Any]:
        projected = (x - mean) @ axes.T  # (n, 2)
        shown = projected[np.sort(rng.choice(len(x), size=min(points, len(x)), replace=False))] if len(x) else projected
        return {"points": [[float(f"{a:.4g}"), float(f"{b:.4g}")] for a, b in shown],
                "mean": [float(v) for v in projected.mean(axis=0)] if len(x) else []}

    return side(reference) | {"explained_variance": [float(v) for v in ratio]}, side(current)


def _histograms(*samples: np.ndarray, bins: int = NULL_BINS) -> list[dict[str, list[float]]]:
    """``{"edges", "counts"}`` of each sample, on edges shared by all of them (one picture, one axis)."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples])
    if values.size == 0:
        return [{"edges": [], "counts": []} for _ in samples]
    edges = np.histogram_bin_edges(values, bins=bins)
    return [{"edges": [float(e) for e in edges], "counts": [int(c) for c in np.histogram(s, bins=edges)[0]]}
            for s in samples]


def embedding_tests(entry: dict[str, Any], current: np.ndarray, settings: DriftSettings) -> list[dict[str, Any]]:
    """The embedding tests ``settings.embedding_test`` names, as test records of :mod:`~modelyard.monitor.drift`.

    Args:
        entry: the profile's ``embedding`` entry (``{"output", "dim", "sample": [[...], ...]}``).
        current: ``(M, D)`` the window's logged embeddings (rows with a non-finite value are left out
            and counted).
        settings: which tests, permutations, PCA components, row cap and seed.

    Raises:
        ValueError: the window's embeddings are not ``(M, D)`` with the profile's ``D``.
    """
    reference = np.asarray(entry["sample"], dtype=np.float32)
    width = int(entry.get("dim", reference.shape[1] if reference.ndim == 2 else 0))
    current = np.asarray(current, dtype=np.float32)
    if current.ndim != 2 or (len(current) and current.shape[1] != width):
        raise ValueError(f"the window's embeddings have shape {current.shape}; the reference profile's "
                         f"{entry.get('output', 'embedding')!r} output has {width} values per row (M, {width})")
    finite = np.isfinite(current).all(axis=1)
    dropped = int((~finite).sum())
    current = current[finite]
    rng = np.random.default_rng(settings.seed)
    if len(current) > settings.embedding_max_rows:  # a seeded sample keeps a huge window's check cheap
        current = current[np.sort(rng.choice(len(current), size=settings.embedding_max_rows, replace=False))]
    ref_view, cur_view = projection(reference, current, settings.seed)
    pooled = whitened_components(np.vstack([reference, current]), settings.embedding_pca)
    ref_x, cur_x = pooled[:len(reference)], pooled[len(reference):]
    names = EMBEDDING_TESTS if settings.embedding_test == "both" else (settings.embedding_test,)
    common = {"kind": "embedding", "psi": 0.0, "n_reference": int(len(reference)),
              "n_current": int(len(current))}
    details = {"output": entry.get("output", "embedding"), "dim": width, "pca": int(pooled.shape[1]),
               "dropped_non_finite": dropped}
    tests = []
    for name in names:
        if name == "mmd":
            result = mmd_test(ref_x, cur_x, settings.permutations, settings.seed)
            figures = {"test_figures": {"mmd2": result["statistic"], "bandwidth": result["bandwidth"],
                                        "permutations": result["permutations"],
                                        "null_histogram": _histograms(result["null"])[0]}}
        else:
            result = classifier_test(ref_x, cur_x, seed=settings.seed)
            ref_scores, cur_scores = _histograms(result["scores_reference"], result["scores_current"])
            figures = {"test_figures": {"auc": result["statistic"], "held_out_rows": result["n_test"],
                                        "scores_reference": ref_scores, "scores_current": cur_scores}}
        tests.append({"name": f"embedding:{name}", "test": name, "statistic": float(result["statistic"]),
                      "p_value": float(result["p_value"]), **common, "reference": ref_view,
                      "current": cur_view | details | figures})
    return tests
