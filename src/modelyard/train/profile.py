"""The reference profile saved with every run: what "normal" input and output look like.

The drift monitor compares live traffic with it, so it holds what the tests need: per numeric
feature quantiles and an equal-frequency histogram (its edges double as PSI bins), per categorical
feature the category frequencies, and the distribution of the model's predictions on validation data.

Version 2 adds what two-sample tests need: a seeded random sample of every numeric feature and of the
validation scores (the KS test compares raw values, not bins), the training label frequencies and the
model's validation accuracy (the yardsticks for label shift and live accuracy).

A model whose inputs are not table columns (text, images) has no features to profile; when it has an
embedding output (named by the training config's ``profile.embedding``), its profile keeps a seeded
sample of the validation embeddings instead, the reference of the monitor's multivariate embedding
tests (:mod:`modelyard.monitor.embedding`).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard._io import atomic_write_bytes
from modelyard.metrics import LABEL_METRICS, label_metric

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from modelyard.models.spec import DataSpec

__all__ = ["EMBEDDING_SAMPLE", "PROFILE_VERSION", "build_output_profile", "build_reference_profile",
           "embedding_profile", "feature_profile", "label_frequencies", "plot_reference_profile",
           "prediction_profile", "prediction_scores"]

PROFILE_VERSION = 2
QUANTILES = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0]
HISTOGRAM_BINS = 10
# The KS test compares a window with this sample, so the sample's own noise moves every window's p-value
# the same way: with 5,000 values one unlucky draw made 11 % of quiet 2,000-row windows fail at p < 0.01 on
# a feature (1 % expected); 20,000 (the whole training split of the demo) brought it back to ~1 %.
# Values keep 7 significant digits, the float32 precision the model sees, to keep the JSON small;
# the fixed seed makes the same data give the same profile.
SAMPLE_SIZE = 20_000
SAMPLE_SEED = 0
# Validation embeddings kept: the MMD kernel matrix of a check is (sample + window)^2, and 2,000 rows
# against a 2,000-row window take about a second on two cores. Values keep 4 significant digits
# (the inference log stores float16, 3.3 digits), so 2,000 x 64 values are ~1 MB of JSON.
EMBEDDING_SAMPLE = 2_000


def _sample(x: np.ndarray) -> list[float]:
    """Up to ``SAMPLE_SIZE`` values of ``x`` drawn without replacement, in their original order."""
    if x.size > SAMPLE_SIZE:
        x = x[np.sort(np.random.default_rng(SAMPLE_SEED).choice(x.size, size=SAMPLE_SIZE, replace=False))]
    return [float(f"{v:.7g}") for v in x.tolist()]


def feature_profile(frame: pd.DataFrame, spec: DataSpec) -> dict[str, Any]:
    """Per-feature summary of ``frame`` (raw values, as they arrive at the model)."""
    out: dict[str, Any] = {}
    for feat in spec.features:
        values = frame[feat.name]
        missing = int(values.isna().sum())
        if feat.kind == "categorical":
            counts = values.dropna().map(str).value_counts()
            out[feat.name] = {"kind": "categorical", "missing": missing, "count": int(counts.sum()),
                              "frequencies": {str(k): int(v) for k, v in counts.sort_index().items()}}
            continue
        x = values.dropna().to_numpy(dtype=np.float64)
        entry: dict[str, Any] = {"kind": "numeric", "missing": missing, "count": int(x.size)}
        if x.size:
            edges = np.unique(np.quantile(x, np.linspace(0, 1, HISTOGRAM_BINS + 1)))
            if edges.size < 2:
                edges = np.array([x.min() - 0.5, x.max() + 0.5])
            counts, _ = np.histogram(x, bins=edges)
            entry |= {
                "mean": float(x.mean()), "std": float(x.std()),
                "quantiles": {f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(x, QUANTILES))},
                "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
                "sample": _sample(x),
            }
        out[feat.name] = entry
    return out


def prediction_scores(probs: np.ndarray) -> np.ndarray:
    """The one score per row that the profile and the monitor compare: ``(N, C)`` probabilities -> ``(N,)``.

    Binary models: the probability of class 1 (the positive class); multi-class: the top probability.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"prediction_scores expects probabilities of shape (N, C>=2), got {probs.shape}")
    return probs[:, 1] if probs.shape[1] == 2 else probs.max(axis=1)


def prediction_profile(logits: torch.Tensor, classes: tuple[str, ...],
                       labels: torch.Tensor | np.ndarray | None = None) -> dict[str, Any]:
    """Distribution of predictions from logits ``(N, C)`` (or regression outputs ``(N,)``/``(N, 1)``).

    ``labels`` ``(N,)`` (class indices of the same rows) adds ``reference_accuracy`` and
    ``reference_metrics`` (every :data:`~modelyard.metrics.LABEL_METRICS`) for classifiers.
    """
    import torch

    out = logits.detach().float()
    if out.ndim == 2 and out.shape[1] > 1:
        probs = torch.softmax(out, dim=1).numpy()  # (N, C)
        predicted = probs.argmax(axis=1)
        score = prediction_scores(probs)  # (N,)
        counts, edges = np.histogram(score, bins=np.linspace(0.0, 1.0, 21))
        names = list(classes) if len(classes) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
        entry = {
            "kind": "classification", "count": len(probs),
            "class_frequencies": {names[k]: int((predicted == k).sum()) for k in range(probs.shape[1])},
            "mean_probabilities": {names[k]: float(probs[:, k].mean()) for k in range(probs.shape[1])},
            "score": "probability of class " + (names[1] if probs.shape[1] == 2 else "predicted (max)"),
            "score_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            "score_sample": _sample(score),
        }
        if labels is not None:
            y = np.asarray(labels).reshape(-1)
            if y.shape[0] != len(probs):
                raise ValueError(f"val_labels has {y.shape[0]} rows but the logits have {len(probs)}")
            entry["reference_accuracy"] = float((predicted == y).mean()) if y.size else None
            entry["reference_metrics"] = {m: label_metric(y, predicted, m) for m in LABEL_METRICS}
        return entry
    values = out.reshape(len(out), -1)[:, 0].numpy().astype(np.float64)
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    return {"kind": "regression", "count": int(values.size), "mean": float(values.mean()),
            "std": float(values.std()), "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            "sample": _sample(values)}


def label_frequencies(frame: pd.DataFrame, spec: DataSpec) -> dict[str, int]:
    """``{class: count}`` of ``spec.label`` in ``frame``, every class of ``spec.classes`` in order."""
    if spec.label not in frame.columns:
        return {}
    observed = frame[spec.label].dropna().map(str).value_counts()
    return {c: int(observed.get(c, 0)) for c in spec.classes}


def build_reference_profile(train_frame: pd.DataFrame, val_logits: torch.Tensor, spec: DataSpec, *,
                            val_labels: torch.Tensor | np.ndarray | None = None, **meta: Any) -> dict[str, Any]:
    """The profile document (JSON-serialisable).

    ``labels`` holds the training label frequencies (``{}`` when ``train_frame`` lacks the label
    column); ``predictions.reference_accuracy`` is there only when ``val_labels`` ``(N,)`` is given.
    """
    return {
        "version": PROFILE_VERSION,
        "data_digest": spec.digest,
        "features_from": {"split": "train", "rows": len(train_frame)},
        "features": feature_profile(train_frame, spec),
        "labels": label_frequencies(train_frame, spec),
        "predictions_from": {"split": "val", "rows": len(val_logits)},
        "predictions": prediction_profile(val_logits, spec.classes, val_labels),
        **meta,
    }


def embedding_profile(values: torch.Tensor | np.ndarray, output: str,
                      sample: int = EMBEDDING_SAMPLE) -> dict[str, Any]:
    """``{"output", "dim", "count", "sample"}``: up to ``sample`` rows of ``values`` ``(N, D)`` drawn
    without replacement (seeded, original order kept), 4 significant digits per value.

    Raises:
        ValueError: ``values`` is not ``(N, D)``, or holds a non-finite value.
    """
    x = np.asarray(values.detach().float().cpu().numpy() if hasattr(values, "detach") else values, np.float64)
    if x.ndim != 2:
        raise ValueError(f"the embedding output {output!r} must be (N, D) per row, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"the embedding output {output!r} has non-finite values on the validation split")
    if len(x) > sample:
        x = x[np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(x), size=sample, replace=False))]
    return {"output": output, "dim": int(x.shape[1]), "count": int(len(values)),
            "sample": [[float(f"{v:.4g}") for v in row] for row in x.tolist()]}


def build_output_profile(outputs: dict[str, torch.Tensor], classes: tuple[str, ...] | None, *,
                         val_labels: torch.Tensor | np.ndarray | None = None, data_digest: str = "",
                         embedding: str | None = "embedding", embedding_sample: int = EMBEDDING_SAMPLE,
                         **meta: Any) -> dict[str, Any]:
    """The profile of a model whose inputs are not table columns (a user's datamodule, text, images):
    no per-feature entries, the predictions of its ``logits`` output (else its first output) on the
    validation split, and, when the model has the output named ``embedding``, a sample of it
    (:func:`embedding_profile`); ``None`` or an output the model lacks: no ``embedding`` entry."""
    name = "logits" if "logits" in outputs else next(iter(outputs))
    main = outputs[name]
    profile = {
        "version": PROFILE_VERSION,
        "data_digest": data_digest,
        "features_from": None,
        "features": {},
        "labels": {},
        "predictions_from": {"split": "val", "rows": len(main), "output": name},
        "predictions": prediction_profile(main, tuple(classes or ()), val_labels),
    }
    if embedding is not None and embedding in outputs and embedding != name and len(outputs[embedding]):
        profile["embedding_from"] = {"split": "val", "rows": len(outputs[embedding]), "output": embedding}
        profile["embedding"] = embedding_profile(outputs[embedding], embedding, embedding_sample)
    return profile | meta


def plot_reference_profile(profile: dict[str, Any], path: str) -> None:
    """One PNG with a panel per feature (histogram or category bars) and the prediction scores."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training machines
    import matplotlib.pyplot as plt

    panels = [*profile["features"].items(), ("predictions", profile["predictions"])]
    panels = panels[:35] + panels[-1:] if len(panels) > 36 else panels  # keep the figure readable
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, entry) in zip(axes.flat, panels):
        if entry.get("kind") == "categorical":
            labels, counts = zip(*entry["frequencies"].items()) if entry["frequencies"] else ((), ())
            ax.bar(range(len(counts)), counts, color="#4c72b0")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        elif "histogram" in entry or "score_histogram" in entry:
            hist = entry.get("score_histogram") or entry["histogram"]
            edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], dtype=float)
            # equal-frequency bins have unequal widths: draw densities, or every bar looks alike
            heights = counts / max(counts.sum(), 1.0) / np.maximum(np.diff(edges), 1e-12)
            ax.bar(edges[:-1], heights, width=np.diff(edges), align="edge",
                   color="#dd8452" if name == "predictions" else "#4c72b0", edgecolor="white")
        title = f"{name} ({entry.get('score', 'train split')})" if name == "predictions" else name
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"reference profile of data {profile.get('data_digest', '')[:12]}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()  # rendered in memory, then written atomically like every other job file
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
