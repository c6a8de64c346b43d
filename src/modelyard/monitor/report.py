"""A drift report people can read (HTML with plots, JSON) and gauges Prometheus can scrape.

The HTML file is self-contained (the PNGs are embedded as base64), so it can be attached to an
incident, logged to MLflow or opened from a laptop without the files beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from modelyard._io import atomic_write_bytes, atomic_write_text
from modelyard.monitor.drift import DriftReport, FeatureDrift
from modelyard.monitor.performance import PerformanceReport

__all__ = ["DriftGauges", "plot_embedding_drift", "plot_feature_drift", "write_report"]

_REFERENCE_COLOR, _CURRENT_COLOR = "#4c72b0", "#dd8452"


def plot_embedding_drift(feature: FeatureDrift) -> bytes:
    """PNG of one embedding test: reference and window on the reference's first two principal axes
    (each cloud's mean marked), beside the test's own figure (the MMD permutation null with the
    observed value, or the classifier's held-out scores of both groups); the figures in the titles."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1.0]})
    ref, cur = feature.reference, feature.current
    for side, label, color, marker in ((ref, "reference (validation)", _REFERENCE_COLOR, "o"),
                                       (cur, "window", _CURRENT_COLOR, "o")):
        points = np.asarray(side.get("points") or np.zeros((0, 2)), dtype=np.float64).reshape(-1, 2)
        left.scatter(points[:, 0], points[:, 1], s=6, alpha=0.35, color=color, marker=marker, label=label,
                     linewidths=0)
        if side.get("mean"):
            left.scatter(*side["mean"], s=160, color=color, marker="X", edgecolors="black", linewidths=1.0)
    ratio = ref.get("explained_variance") or []
    axes = [f"PC{i + 1} of both" + (f" ({ratio[i]:.0%} of variance)" if i < len(ratio) else "") for i in range(2)]
    left.set_xlabel(axes[0], fontsize=8)
    left.set_ylabel(axes[1], fontsize=8)
    left.legend(fontsize=8, markerscale=3)
    left.set_title(f"{cur.get('output', 'embedding')}: {feature.n_reference} reference vs {feature.n_current} "
                   "window rows (X: means)", fontsize=9)
    figures = cur.get("test_figures") or {}
    if feature.test == "mmd":
        null = figures.get("null_histogram") or {}
        if null.get("edges"):
            right.stairs(null["counts"], null["edges"], fill=True, color="#999999", alpha=0.7,
                         label=f"{figures.get('permutations', 0)} permutations (no drift)")
        right.axvline(feature.statistic, color=_CURRENT_COLOR, linewidth=2.5, label="this window")
        right.set_xlabel("MMD² (Gaussian kernel, median bandwidth)", fontsize=8)
        right.set_title(f"MMD² {feature.statistic:.3g}, p {feature.p_value:.2g}, p_adj {feature.p_adjusted:.2g}",
                        fontsize=9)
    else:
        for key, label, color in (("scores_reference", "reference rows", _REFERENCE_COLOR),
                                  ("scores_current", "window rows", _CURRENT_COLOR)):
            hist = figures.get(key) or {}
            if hist.get("edges"):
                right.stairs(hist["counts"], hist["edges"], label=label, color=color, linewidth=2,
                             fill=key == "scores_reference", alpha=0.6 if key == "scores_reference" else 1.0)
        right.set_xlabel("domain classifier score on held-out rows (higher: looks like the window)", fontsize=8)
        right.set_title(f"AUC {feature.statistic:.3f} (0.5: indistinguishable), p {feature.p_value:.2g}, "
                        f"p_adj {feature.p_adjusted:.2g}", fontsize=9)
    right.set_ylabel("count", fontsize=8)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{feature.name}: {'DRIFTED' if feature.drifted else 'no drift'} ({feature.reason})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def plot_feature_drift(feature: FeatureDrift) -> bytes:
    """PNG of the reference vs current histogram of one feature, the test figures in the title
    (an embedding test: :func:`plot_embedding_drift`)."""
    if feature.kind == "embedding":
        return plot_embedding_drift(feature)
    # no pyplot: no global backend switch, no display needed
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    ref, cur = feature.reference, feature.current
    if "categories" in ref:
        x = np.arange(len(ref["categories"]))
        for offset, side, label, color in ((-0.2, ref, "reference", _REFERENCE_COLOR),
                                           (0.2, cur, "current", _CURRENT_COLOR)):
            counts = np.asarray(side["counts"], dtype=np.float64)
            ax.bar(x + offset, counts / max(counts.sum(), 1.0), width=0.4, label=label, color=color)
        ax.set_xticks(x, ref["categories"], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share")
    else:
        edges = np.asarray(ref["edges"], dtype=np.float64)
        widths = np.maximum(np.diff(edges), 1e-12)
        for side, label, color in ((ref, "reference", _REFERENCE_COLOR), (cur, "current", _CURRENT_COLOR)):
            counts = np.asarray(side["counts"], dtype=np.float64)
            # equal-frequency bins have unequal widths: densities, or every reference bar looks alike
            ax.stairs(counts / max(counts.sum(), 1.0) / widths, edges, label=label, color=color,
                      fill=label == "reference", alpha=0.6 if label == "reference" else 1.0, linewidth=2)
        ax.set_ylabel("density")
        if len(edges) > 3:  # a long-tailed outer bin would squeeze the rest into a corner: cut it short
            right = min(edges[-1], edges[-2] + 0.5 * (edges[-2] - edges[0]))
            ax.set_xlim(edges[0], right)
            if right < edges[-1]:
                ax.set_xlabel(f"last bin runs to {edges[-1]:.4g}; values beyond the reference range count "
                              "in the outer bins", fontsize=7)
    ax.legend(fontsize=8)
    ax.set_title(f"{feature.name}: {feature.test} {feature.statistic:.3g}, p_adj {feature.p_adjusted:.2g}, "
                 f"PSI {feature.psi:.3g}", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "feature"


_CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.drifted{background:#fde2e1;font-weight:bold}img{max-width:100%;margin:.5em 0}.muted{color:#777}"""


def _html(report: DriftReport, performance: PerformanceReport | None, title: str,
          images: dict[str, bytes]) -> str:
    e = html.escape
    head = ["feature", "kind", "test", "statistic", "p", "p_adj", "PSI", "n ref", "n", "missing", "drifted",
            "reason"]
    rows = []
    for f in report.features:
        embedding = f.kind == "embedding"  # no bins: no PSI, no missing share
        cells = [f.name, f.kind, f.test, f"{f.statistic:.4g}", f"{f.p_value:.3g}", f"{f.p_adjusted:.3g}",
                 "-" if embedding else f"{f.psi:.4f}", str(f.n_reference), str(f.n_current),
                 "-" if embedding else f"{f.current.get('missing_share', 0.0):.1%}", "yes" if f.drifted else "no",
                 f.reason]
        rows.append(f"<tr class=\"{'drifted' if f.drifted else ''}\">" + "".join(f"<td>{e(c)}</td>" for c in cells)
                    + "</tr>")
    s = report.settings
    name = e(title or "Drift report")
    summary = (f"{report.n_current} rows in the window; drifted features: "
               f"<b>{e(', '.join(report.drifted) or 'none')}</b>; prediction drift: "
               f"<b>{'yes' if report.prediction_drift else 'no'}</b>.")
    if any(f.kind == "embedding" for f in report.features):
        summary += f" Embedding drift: <b>{'yes' if report.embedding_drift else 'no'}</b>."
    rules = (f"alpha {s.alpha:g} after {e(s.correction)} correction, PSI threshold {s.psi_threshold:g}, "
             f"at least {s.min_samples} values per feature. {e(json.dumps(report.meta, default=str))}")
    embedding = next((f for f in report.features if f.kind == "embedding"), None)
    if embedding is not None:
        pca = f"{embedding.current.get('pca')} whitened principal components"
        rules += (f" Embedding test: {e(s.embedding_test)} on {e(pca)}, {s.permutations} MMD permutations, "
                  f"at most {s.embedding_max_rows} window rows, seed {s.seed}.")
    parts = [
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{name}</title><style>{_CSS}</style></head>",
        f"<body><h1>{name}</h1><p>{summary}</p><p class=\"muted\">{rules}</p>",
        "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>",
    ]
    if performance is not None:
        acc = "n/a" if performance.accuracy is None else f"{performance.accuracy:.4f}"
        ref = "n/a" if performance.reference_accuracy is None else f"{performance.reference_accuracy:.4f}"
        pv = "n/a" if performance.label_shift_p_value is None else f"{performance.label_shift_p_value:.3g}"
        versions = "".join(f"<tr><td>{e(v)}</td><td>{d['n']}</td><td>{d['accuracy']:.4f}</td></tr>"
                           for v, d in performance.by_version.items())
        parts.append(
            f"<h2>Live performance</h2><p>{performance.n} labelled predictions; accuracy {acc} "
            f"(validation {ref}); label shift p = {pv}.</p><p>labels live {e(str(performance.label_frequencies))}"
            f", training {e(str(performance.reference_label_frequencies))}</p>"
            + (f"<table><tr><th>version</th><th>n</th><th>accuracy</th></tr>{versions}</table>" if versions else "")
        )
    if images:
        parts.append("<h2>Drifted features and the embedding</h2>" if any(
            f.kind == "embedding" for f in report.features) else "<h2>Drifted features</h2>")
        for name, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<h3>{e(name)}</h3><img alt=\"{e(name)}\" src=\"data:image/png;base64,{data}\">")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: DriftReport, out_dir: Path, performance: PerformanceReport | None = None,
                 title: str = "") -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and ``drift_<feature>.png`` per drifted feature/prediction
    and per embedding test, drifted or not (``drift_embedding_mmd.png``: for a text or images model the
    embedding's picture is the only view of its input, so a quiet window shows it too).

    ``report.json`` is ``{"title", "drift": report.to_dict(), "performance": ... | null}``. Every file
    is written atomically; ``out_dir`` is created. Returns ``{"json": ..., "html": ..., "plot:<name>": ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    used: set[str] = set()
    for f in report.features:
        if not f.drifted and f.kind != "embedding":
            continue
        png = plot_feature_drift(f)
        stem = _safe_name(f.name)
        while stem in used:  # two names that sanitise alike
            stem += "_"
        used.add(stem)
        images[f.name] = png
        written[f"plot:{f.name}"] = atomic_write_bytes(out_dir / f"drift_{stem}.png", png)
    doc = {"title": title, "drift": report.to_dict(),
           "performance": performance.to_dict() if performance is not None else None}
    written["json"] = atomic_write_text(out_dir / "report.json", json.dumps(doc, indent=2, default=str))
    written["html"] = atomic_write_text(out_dir / "report.html", _html(report, performance, title, images))
    return written


class DriftGauges:
    """Prometheus gauges of the latest check per model (scrape them, or write a textfile for node-exporter).

    Each :meth:`update` replaces the model's previous series, so a version that left the window or a
    feature no longer profiled does not linger with a stale value.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()  # fresh: tests stay isolated

        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry)

        self.psi = gauge("modelyard_drift_psi", "Population stability index of the feature's live window "
                         "against the training reference", ["model", "feature"])
        self.statistic = gauge("modelyard_drift_statistic", "Drift test statistic (ks, chi2; embeddings: mmd "
                               "is MMD squared, classifier is AUC)", ["model", "feature", "test"])
        self.p_adjusted = gauge("modelyard_drift_p_value_adjusted", "Drift test p-value after the "
                                "multiple-testing correction", ["model", "feature"])
        self.detected = gauge("modelyard_drift_detected", "1 when the feature drifted in the latest check",
                              ["model", "feature"])
        self.drifted = gauge("modelyard_drift_features_drifted", "Input features drifted in the latest check",
                             ["model"])
        self.accuracy = gauge("modelyard_live_accuracy", "Accuracy on labelled feedback (version 'all': every "
                              "version together)", ["model", "version"])
        self.labels = gauge("modelyard_live_labels", "Labelled predictions in the latest check's window",
                            ["model"])
        self._series: dict[str, set[tuple[Any, tuple[str, ...]]]] = {}

    def update(self, model: str, report: DriftReport | None, performance: PerformanceReport | None = None) -> None:
        """Set the gauges of ``model`` from one check (either part may be ``None``: not measured)."""
        series: set[tuple[Any, tuple[str, ...]]] = set()

        def put(g: Any, labels: tuple[str, ...], value: float) -> None:
            g.labels(*labels).set(value)
            series.add((g, labels))

        if report is not None:
            for f in report.features:
                if f.kind != "embedding":  # an embedding test has no bins, hence no PSI
                    put(self.psi, (model, f.name), f.psi)
                put(self.statistic, (model, f.name, f.test), f.statistic)
                put(self.p_adjusted, (model, f.name), f.p_adjusted)
                put(self.detected, (model, f.name), float(f.drifted))
            put(self.drifted, (model,), float(len(report.drifted)))
        if performance is not None:
            put(self.labels, (model,), float(performance.n))
            if performance.accuracy is not None:
                put(self.accuracy, (model, "all"), performance.accuracy)
            for version, figures in performance.by_version.items():
                put(self.accuracy, (model, str(version)), figures["accuracy"])
        for g, labels in self._series.get(model, set()) - series:
            g.remove(*labels)
        self._series[model] = series

    def write_textfile(self, path: str | Path) -> None:
        """The registry in the node-exporter textfile-collector format (written atomically by prometheus_client)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)
