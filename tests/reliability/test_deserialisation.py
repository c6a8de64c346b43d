"""No unsafe deserialisation: nothing modelyard reads can run code.

A scan of every module under ``src/`` (its syntax tree, imports and aliases resolved) fails on any
call that unpickles or evaluates what it reads: ``torch.load`` without ``weights_only=True``, pickle
and its relatives, ``yaml.load`` without a safe loader, ``numpy.load(allow_pickle=True)``, ``eval``/
``exec``, ``torch.jit.load``, MLflow's ``load_model`` of a flavor, and Lightning calls that load a
checkpoint (``ckpt_path=``, ``load_from_checkpoint``) without ``weights_only=True``. Then a
checkpoint whose pickle writes a marker file when it is loaded is fed to every modelyard path that
loads a checkpoint; each must refuse it, and the marker must never appear.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TRAIN_CONFIG = ROOT / "configs" / "train" / "transactions.yaml"

# (file relative to the repository root, qualified call) -> why it is provably safe. Empty: nothing in
# src/ needs an exception today; add one only with the reason a reviewer can check.
ALLOWED: dict[tuple[str, str], str] = {}

SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}
PICKLE_MODULES = ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")
PICKLE_LOADS = {"load", "loads", "Unpickler", "open"}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    call: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.call}: {self.why}"


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for every import in the module (function-level ones included)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return out


def _qualified(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _problem(call: ast.Call, qual: str, aliases: dict[str, str]) -> str | None:
    """Why ``call`` (to ``qual``) may run code from what it reads, or None."""
    head, _, last = qual.rpartition(".")
    if qual == "torch.load" and not _is_true(_keyword(call, "weights_only")):
        return "unpickles arbitrary objects unless weights_only=True"
    if head.split(".")[0] in PICKLE_MODULES and last in PICKLE_LOADS:
        return "pickle-family loads run code from the data"
    if qual in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
        return "constructs arbitrary Python objects"
    if qual in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or _qualified(loader, aliases) not in SAFE_YAML_LOADERS:
            return "needs Loader=yaml.SafeLoader (or use yaml.safe_load)"
    if qual == "numpy.load":
        allow = _keyword(call, "allow_pickle")
        if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
            return "allow_pickle unpickles object arrays"
    if qual in ("eval", "exec", "builtins.eval", "builtins.exec"):
        return "evaluates text as code"
    if qual in ("pandas.read_pickle", "torch.jit.load", "torch.hub.load", "torch.package.PackageImporter"):
        return "loads pickled objects or code"
    if qual.startswith("mlflow.") and last == "load_model":
        return "a flavor's load_model unpickles the model (use ONNX Runtime on the ONNX file)"
    if last == "load_from_checkpoint" and not _is_true(_keyword(call, "weights_only")):
        return "Lightning loads the checkpoint with torch.load; pass weights_only=True"
    if _keyword(call, "ckpt_path") is not None and not _is_true(_keyword(call, "weights_only")):
        return ("Lightning loads ckpt_path with torch.load(weights_only=None), which an environment variable "
                "(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) turns into a full unpickle; pass weights_only=True")
    if qual.startswith("lightning.") and last in ("pl_load", "_load") and not _is_true(_keyword(call, "weights_only")):
        return "Lightning's loader falls back to a full unpickle; pass weights_only=True"
    return None


def scan_source(text: str, file: str) -> list[Finding]:
    """Every unsafe-deserialisation call in one module's source ``text``."""
    tree = ast.parse(text, filename=file)
    aliases = _aliases(tree)
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            qual = _qualified(node.func, aliases)
            if qual is None:
                continue
            why = _problem(node, qual, aliases)
            if why and (file, qual) not in ALLOWED:
                findings.append(Finding(file, node.lineno, qual, why))
    return findings


def test_the_scanner_finds_each_unsafe_form():
    """The scanner is not blind: every unsafe form is found in a planted module, no safe form is."""
    unsafe = '''
import pickle, dill, joblib, yaml, torch
import numpy as np
import pandas as pd
import cloudpickle as cp
from torch import load as tload
from mlflow import pyfunc
import mlflow.pytorch

pickle.loads(b"")
pickle.Unpickler(f).load()
dill.load(f)
cp.loads(b"")
joblib.load("m.joblib")
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
yaml.full_load(text)
np.load("a.npy", allow_pickle=True)
torch.load("x.ckpt")
torch.load("x.ckpt", weights_only=False)
tload("x.ckpt")
eval("1 + 1")
exec("x = 1")
pd.read_pickle("f.pkl")
torch.jit.load("m.pt")
pyfunc.load_model("models:/m/1")
mlflow.pytorch.load_model("runs:/r/m")
trainer.fit(model, ckpt_path="last.ckpt")
Module.load_from_checkpoint("x.ckpt")
'''
    safe = '''
import yaml, torch, json
import numpy as np
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
np.load("a.npy")
np.load("a.npy", allow_pickle=False)
torch.load("x.ckpt", map_location="cpu", weights_only=True)
trainer.fit(model, ckpt_path="last.ckpt", weights_only=True)
model.eval()
json.loads("{}")
'''
    found = scan_source(unsafe, "planted.py")
    planted_lines = [n for n, line in enumerate(unsafe.splitlines(), 1) if "(" in line and not line.startswith(
        ("import", "from"))]
    assert sorted({f.line for f in found}) == planted_lines, [str(f) for f in found]
    assert scan_source(safe, "safe.py") == []


def test_no_unsafe_deserialisation_in_src(figures):
    """No module under ``src/`` unpickles, evaluates or otherwise deserialises code from what it reads:
    every checkpoint load is ``weights_only=True``, YAML is safe-loaded, no pickle, ``eval``/``exec``,
    ``torch.jit.load`` or MLflow flavor ``load_model``; each finding is named file:line."""
    files = sorted(SRC.rglob("*.py"))
    findings = [f for path in files
                for f in scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    figures.record("modules scanned", len(files))
    figures.record("unsafe deserialisation calls", len(findings), bound="0",
                   note="; ".join(f"{f.file}:{f.line} {f.call}" for f in findings))
    figures.record("allow-listed calls", len(ALLOWED), note="; ".join(f"{k}: {v}" for k, v in ALLOWED.items()))
    assert len(files) > 50  # the scan saw the package, not an empty folder
    assert not findings, "unsafe deserialisation:\n" + "\n".join(map(str, findings))


# --- malicious checkpoints ------------------------------------------------------------------------------


class PlantMarker:
    """Pickles as "call ``open(marker, 'w')``": loading it with a full unpickler creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(source: Path, target: Path, marker: Path) -> Path:
    """``target``: the checkpoint at ``source`` (a real one, loadable) plus an object that runs code on load."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    state["payload"] = PlantMarker(marker)
    torch.save(state, target)
    return target


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (
        "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MODELYARD_JOB_DIR", "MODELYARD_MLFLOW_RUN_ID",
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD")}
    return env | extra


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "modelyard.cli", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n")
    return proc


TRAIN = ["train", "--config", str(TRAIN_CONFIG), "--data.store", "store", "--trainer.devices", "1",
         "--trainer.strategy", "auto", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
         "--data.batch_size", "256"]


@pytest.fixture(scope="module")
def trained_job(tmp_path_factory) -> dict:
    """A real, finished (one-epoch, one-process) training job: its folder, run id and checkpoints."""
    from modelyard.data import DataConfig
    from modelyard.data import run as make_snapshot

    cwd = tmp_path_factory.mktemp("deserialisation")
    make_snapshot(DataConfig(dataset="transactions", rows=2000, seed=5, store=str(cwd / "store")))
    proc = _cli(*TRAIN, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_dir = next(p.parent for p in (cwd / "runs").rglob("job.json"))
    state = json.loads((job_dir / "job.json").read_text())
    return {"cwd": cwd, "job_dir": job_dir, "run_id": state["run_id"], "best": Path(state["best_checkpoint"])}


def _refused(proc: subprocess.CompletedProcess) -> bool:
    text = proc.stdout + proc.stderr
    return proc.returncode != 0 and ("Weights only load failed" in text or "UnpicklingError" in text)


def test_the_payload_is_live(tmp_path, trained_job):
    """Control: the planted checkpoint does run code under a full unpickle, so the refusals below mean
    something."""
    marker = tmp_path / "control-marker"
    evil = plant(trained_job["best"], tmp_path / "evil.ckpt", marker)
    torch.load(evil, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_export_refuses_a_malicious_checkpoint(tmp_path, trained_job, figures):
    """``modelyard export`` (by ``--checkpoint`` and by ``--run``) and the export loader itself refuse a
    checkpoint whose pickle would run code; the marker file it would write never appears."""
    from modelyard.export.source import _load_model

    cwd, job_dir, marker = trained_job["cwd"], trained_job["job_dir"], tmp_path / "export-marker"
    refused = 0
    # 1. the loader, in this process
    evil = plant(trained_job["best"], tmp_path / "evil.ckpt", marker)
    with pytest.raises(Exception, match="Weights only load failed"):
        _load_model(None, None, evil)  # type: ignore[arg-type]  # refused before the config is used
    refused += not marker.exists()
    # 2. --checkpoint: a file inside the job's checkpoints/ folder
    plant(trained_job["best"], job_dir / "checkpoints" / "evil.ckpt", marker)
    common = ["--register", "false", "--output_dir", str(tmp_path / "exports"), "--triton_repo",
              str(tmp_path / "triton"), "--name", "fraud", "--tracking_uri", f"sqlite:///{cwd / 'mlflow.db'}"]
    proc = _cli("export", "--checkpoint", str(job_dir / "checkpoints" / "evil.ckpt"), *common, cwd=cwd)
    assert _refused(proc), proc.stderr[-2000:]
    refused += not marker.exists()
    # 3. --run: the run's best checkpoint replaced in its job folder
    original = trained_job["best"].read_bytes()
    try:
        plant(trained_job["best"], trained_job["best"], marker)
        proc = _cli("export", "--run", trained_job["run_id"], *common, cwd=cwd)
        assert _refused(proc), proc.stderr[-2000:]
        refused += not marker.exists()
    finally:
        trained_job["best"].write_bytes(original)
    figures.record("export paths fed the malicious checkpoint", 3)
    figures.record("refused without running the payload", refused, bound="all 3")
    assert not marker.exists() and not (tmp_path / "triton").exists()


@pytest.mark.parametrize("force_full_unpickle", [False, True], ids=["default", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
def test_resume_refuses_a_malicious_checkpoint(tmp_path, trained_job, force_full_unpickle, figures):
    """``modelyard train --resume`` refuses a ``last.ckpt`` whose pickle would run code, also when the
    environment sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (which turns every load that does not say
    ``weights_only=True`` into a full unpickle); the marker file never appears."""
    job_dir, marker = trained_job["job_dir"], tmp_path / "resume-marker"
    last = job_dir / "checkpoints" / "last.ckpt"
    original = last.read_bytes()
    env = _env(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1") if force_full_unpickle else _env()
    try:
        plant(last, last, marker)
        proc = _cli(*TRAIN, "--resume", str(job_dir), cwd=trained_job["cwd"], env=env)
    finally:
        last.write_bytes(original)
    figures.record("payload ran (marker written)", int(marker.exists()), bound="0")
    figures.record("resume refused", int(_refused(proc)), bound="1")
    assert not marker.exists(), "the resume path unpickled the checkpoint and ran its payload"
    assert _refused(proc), proc.stderr[-2000:]
