"""``modelyard export`` killed while it writes: the export folder, the Triton version, the registry."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from train_fault_helpers import TRAIN_CONFIG, kill_group, make_store, run_cli, slow_write_env, start_cli, wait_for_file

pytestmark = pytest.mark.slow

NAME = "fraud"
# Folder names the write hook can tell apart from MLflow's own temp folders.
TRITON = "TRITONREPO"
EXPORTS = "EXPORTS_OUT"
# Where each kill lands: a regex on the path being written, in the order export writes them.
KILL_POINTS = {
    "the ONNX file in the export folder": r"EXPORTS_OUT/fraud/[^/]+/model\.onnx$",
    "the model file of the new Triton version": r"TRITONREPO/fraud/[^/]+/[^/]*model\.onnx",
    "the model's files in the registry": r"mlartifacts/.*/export/fraud/\.artifact\.uploading",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A working folder with one finished training run (embedded MLflow store)."""
    work = tmp_path_factory.mktemp("export-faults")
    store = make_store(work / "store", rows=3000)
    proc = run_cli(["train", "--config", str(TRAIN_CONFIG), "--data.store", str(store), "--trainer.devices", "1",
                    "--trainer.strategy", "auto", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar",
                    "false", "--mlflow.experiment", NAME], cwd=work)
    assert proc.returncode == 0
    return work


def _export_args() -> list[str]:
    return ["export", "--run", "latest", "--name", NAME, "--triton_repo", TRITON, "--output_dir", EXPORTS]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _serves(model: Path) -> bool:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return out.shape == (4, 2) and bool(np.isfinite(out).all())


def _state(work: Path) -> dict:
    """What a kill may have damaged: Triton versions, export folders, registry versions."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    from modelyard.registry.store import PARITY_TAG
    from modelyard.serve.triton.validate import validate_repository
    from modelyard.tracking import tracking_uri_scope

    model_dir = work / TRITON / NAME
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    problems = []
    for version in versions:
        folder = model_dir / str(version)
        manifest = json.loads((folder / "manifest.json").read_text())
        deployed = folder / "model.onnx"
        # the version's model.onnx is the deployed file of the export; the manifest names its hash
        if _sha256(deployed) not in {entry["sha256"] for entry in manifest["files"].values()}:
            problems.append(f"Triton version {version}: model.onnx does not match its manifest")
    exports = sorted(p for p in (work / EXPORTS / NAME).iterdir() if not p.name.startswith("."))
    for folder in exports:
        files = json.loads((folder / "manifest.json").read_text())["files"]
        problems += [f"{folder.name}/{f}: {'missing' if not (folder / f).is_file() else 'sha256 differs'}"
                     for f, entry in files.items()
                     if not (folder / f).is_file() or _sha256(folder / f) != entry["sha256"]]
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    registered = client.search_model_versions(f"name='{NAME}'")
    untagged = []
    for mv in registered:
        try:
            with tracking_uri_scope(f"sqlite:///{work / 'mlflow.db'}"):
                model = mlflow.onnx.load_model(f"models:/{NAME}/{mv.version}")
            onnx.checker.check_model(model, full_check=True)
        except Exception as err:  # noqa: BLE001 - a partial file fails in many ways
            problems.append(f"registry version {mv.version}: {type(err).__name__}: {err}")
        if PARITY_TAG not in mv.tags:
            untagged.append(mv.version)
    return {"triton_versions": versions, "repo_problems": [str(p) for p in validate_repository(work / TRITON)],
            "problems": problems, "registered": sorted(int(mv.version) for mv in registered), "untagged": untagged,
            "leftovers": sorted([p.name for p in model_dir.iterdir() if p.name.startswith(".")]
                                + [p.name for p in (work / EXPORTS / NAME).iterdir() if p.name.startswith(".")])}


def test_export_killed_mid_write_leaves_no_partial_version(trained, tmp_path, figures):
    """An export SIGKILLed while it writes the ONNX file of its export folder, the model of a new Triton
    version, or the model's files in the registry leaves every earlier version intact and servable: no
    partial Triton version or export folder under its final name, ``modelyard triton validate`` clean,
    no registry version whose model does not load, and the next export succeeds.

    Each write is made slow by a hook in the export process (half the bytes, then a pause) and the
    process group is killed at that moment."""
    from modelyard.registry import PromotionRefused, set_alias

    work = trained
    first = run_cli([*_export_args(), "--alias", "champion"], cwd=work)
    assert first.returncode == 0, first.stderr[-3000:]
    baseline = _state(work)
    assert baseline["triton_versions"] == [1] and baseline["registered"] == [1] and not baseline["problems"]

    for index, (where, pattern) in enumerate(KILL_POINTS.items()):
        env, marker = slow_write_env(tmp_path / f"inject-{index}", match=pattern, nth=1, hooks="copy,onnx")
        log = tmp_path / f"export-{index}.log"
        proc = start_cli(_export_args(), work, env, log)
        try:
            wait_for_file(marker, proc, log, timeout_s=240)
            writing = marker.read_text().split()[1]
            kill_group(proc)
        finally:
            if proc.poll() is None:
                kill_group(proc)
        state = _state(work)
        print(where, writing, json.dumps(state, indent=1))
        figures.record(f"killed while writing {where}: partial or unloadable files under final names",
                       len(state["problems"]), bound="0", note=Path(writing).name)
        figures.record(f"killed while writing {where}: validate problems", len(state["repo_problems"]), bound="0")
        assert not state["problems"], f"after a kill while writing {where} ({writing}): {state['problems']}"
        assert not state["repo_problems"], state["repo_problems"]
        assert 1 in state["triton_versions"] and _serves(work / TRITON / NAME / "1" / "model.onnx")
        assert (work / EXPORTS / NAME).is_dir() and [p for p in (work / EXPORTS / NAME).iterdir()
                                                     if not p.name.startswith(".")], "the export folder vanished"

    figures.record("hidden leftovers (ignored by Triton and validate)", len(state["leftovers"]),
                   note=", ".join(state["leftovers"]))
    figures.record("Triton versions written but not registered by the killed exports",
                   len(set(state["triton_versions"]) - {1}), note="complete folders; see the report")
    figures.record("registry versions without a parity verdict", len(state["untagged"]),
                   note="created before the kill; promotion refuses them")
    for version in state["untagged"]:  # a version the kill left without its parity tag cannot be promoted
        with pytest.raises(PromotionRefused):
            set_alias(NAME, "champion", version, reason="test", tracking_uri=f"sqlite:///{work / 'mlflow.db'}")

    t0 = time.monotonic()
    again = run_cli(_export_args(), cwd=work)
    figures.record("re-run export after the kills", "succeeded" if again.returncode == 0 else "failed",
                   bound="succeeds", note=f"{time.monotonic() - t0:.0f} s")
    assert again.returncode == 0, again.stderr[-3000:]
    final = _state(work)
    assert not final["problems"] and not final["repo_problems"]
    newest = final["triton_versions"][-1]
    assert newest > max(baseline["triton_versions"]) and _serves(work / TRITON / NAME / str(newest) / "model.onnx")
    assert max(final["registered"]) not in final["untagged"]
