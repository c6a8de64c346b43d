"""The model card logged with every registered version: what the model is for and what is known of it."""

from __future__ import annotations

from typing import Any

__all__ = ["model_card"]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(*, name: str, version: str | None, intended_use: str, limitations: list[str],
               run_id: str | None, experiment: str | None, data: dict[str, Any], metrics: dict[str, float],
               parity: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    """Markdown: intended use, training data and digest, metrics, parity and quantisation figures,
    known limitations, and where everything came from."""
    lines = [f"# {name}" + (f" v{version}" if version else ""), "", "## Intended use", "", intended_use, ""]
    lines += ["## Training data", "",
              f"- dataset: `{data.get('name', 'n/a')}`, snapshot digest `{data.get('digest', 'n/a')}`",
              f"- splits: {', '.join(f'{k} {v}' for k, v in data.get('splits', {}).items()) or 'n/a'}",
              f"- label: `{data.get('label', 'n/a')}`, classes: {', '.join(map(str, data.get('classes', [])))}",
              f"- features ({len(data.get('features', []))}): {', '.join(data.get('features', []))}", ""]
    lines += ["## Metrics (training run)", "", "| metric | value |", "|---|---|"]
    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith(("best_", "val_", "test_"))}
    lines += [f"| {k} | {_fmt(v)} |" for k, v in shown.items()] or ["| n/a | |"]
    lines += ["", "## Export parity (validation split, ONNX Runtime vs PyTorch)", "",
              "| file | precision | status | max abs error | top-1 agreement | accuracy (torch -> onnx) |",
              "|---|---|---|---|---|---|"]
    for rep in parity:
        out = rep["outputs"][0] if rep.get("outputs") else {}
        acc = (f"{_fmt(rep.get('accuracy_torch'))} -> {_fmt(rep.get('accuracy_onnx'))}"
               if rep.get("accuracy_torch") is not None else "n/a")
        lines.append(f"| {rep['file']} | {rep['precision']} | {rep['status']} | {_fmt(out.get('max_abs_error'))} | "
                     f"{_fmt(out.get('top1_agreement'))} | {acc} |")
    measured = [(rep["file"], output, metric, fig) for rep in parity
                for output, metrics in (rep.get("metrics") or {}).items() for metric, fig in metrics.items()]
    if measured:
        lines += ["", "Task metrics against the validation labels:", "",
                  "| file | output | metric | torch | onnx | change |", "|---|---|---|---|---|---|"]
        lines += [f"| {file} | {output} | {metric} | {_fmt(fig.get('torch'))} | {_fmt(fig.get('onnx'))} | "
                  f"{_fmt(fig.get('change'))} |" for file, output, metric, fig in measured]
    lines += ["", "## Known limitations", ""] + [f"- {item}" for item in limitations]
    lines += ["", "## Lineage", "",
              f"- training run: `{run_id or 'n/a'}` (experiment `{experiment or 'n/a'}`)",
              f"- git commit: `{manifest.get('git_commit') or 'n/a'}`",
              f"- exporter: {manifest.get('exporter')}, opset {manifest.get('opset')}; torch "
              f"{manifest.get('versions', {}).get('torch')}, onnx {manifest.get('versions', {}).get('onnx')}, "
              f"onnxruntime {manifest.get('versions', {}).get('onnxruntime')}",
              f"- input `{manifest.get('inputs', [{}])[0].get('name')}` {manifest.get('inputs', [{}])[0].get('shape')} "
              f"float32: raw feature values in the order above (categorical columns as codes from the data spec)",
              ""]
    return "\n".join(lines)
