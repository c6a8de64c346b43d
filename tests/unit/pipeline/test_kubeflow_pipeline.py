"""``modelyard pipeline compile``: both Kubeflow pipelines compiled offline, read back from their YAML.

The compiled file is what a Kubeflow backend runs, so the checks read it, not the Python objects:
the components and their inputs/outputs, the image, the order of the tasks, which output feeds which
input, the workspace claim and the Secret. Then each component's command is run as the pod would
run it (``sh -ec SCRIPT``, the placeholders filled in), with a stand-in ``modelyard`` on PATH that
records its arguments and writes the result a stage writes: the recorded arguments must parse with
the real stage parsers, and the output files must hold what the next component reads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelyard.config import parse_config
from modelyard.data.config import DataConfig
from modelyard.export.config import ExportConfig
from modelyard.monitor.config import MonitorConfig
from modelyard.pipeline import cli as pipeline_cli
from modelyard.pipeline.config import DEFAULT_IMAGE, CanaryConfig, CompileConfig
from modelyard.pipeline.kubeflow import OPTIONAL_ENV, REQUIRED_ENV, STATE_DIRS, WORKDIR, compile_pipeline
from modelyard.registry.cli import build_parser as registry_parser
from modelyard.rollout.config import RolloutConfig, expand_spellings

ROOT = Path(__file__).resolve().parents[3]
IMAGE = "registry.example.com/team/modelyard:1.2"
RELEASE = ["data", "train", "export", "register", "rollout"]
# component -> (input parameters, output parameters)
INTERFACES = {
    "data": ({"data_config"}, {"digest", "snapshot"}),
    "train": ({"train_config", "snapshot"}, {"run_id"}),
    "export": ({"export_config", "run_id", "model"}, {"model_version", "sha256"}),
    "register": ({"model", "model_version", "pipeline_run"}, set()),
    "rollout": ({"serve_config", "rollout_config", "model", "model_version"}, set()),
    "monitor-check": ({"monitor_config", "model"}, {"fired"}),
}
# (consumer task, its input) <- (producer task, its output)
WIRING = {
    ("train", "snapshot"): ("data", "digest"),
    ("export", "run_id"): ("train", "run_id"),
    ("register", "model_version"): ("export", "model_version"),
    ("rollout", "model_version"): ("export", "model_version"),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, list[dict]]:
    """Both pipelines: ``train`` through the command line, ``retrain`` through the function."""
    folder = tmp_path_factory.mktemp("kfp")
    assert pipeline_cli.main(["compile", "--out", str(folder / "train.yaml"), "--image", IMAGE]) == 0
    compile_pipeline(CompileConfig(out=str(folder / "retrain.yaml"), which="retrain", image=IMAGE,
                                   workspace_pvc="team-claim", secret="team-secret"))
    return {which: list(yaml.safe_load_all((folder / f"{which}.yaml").read_text())) for which in ("train", "retrain")}


def _tasks(dag: dict) -> dict[str, dict]:
    return dag["dag"]["tasks"]


def _release_dag(docs: list[dict], which: str) -> dict[str, dict]:
    spec = docs[0]
    if which == "train":
        return _tasks(spec["root"])
    [condition] = [t for t in _tasks(spec["root"]).values() if t["componentRef"]["name"].startswith("comp-condition")]
    return _tasks(spec["components"][condition["componentRef"]["name"]])


def _order(tasks: dict[str, dict]) -> list[str]:
    """A topological order of ``tasks`` by their ``dependentTasks`` (ties by name), failing on a cycle."""
    done: list[str] = []
    while len(done) < len(tasks):
        ready = sorted(n for n, t in tasks.items() if n not in done and set(t.get("dependentTasks", [])) <= set(done))
        assert ready, f"a cycle among {sorted(set(tasks) - set(done))}"
        done.append(ready[0])
    return done


@pytest.mark.parametrize("which", ["train", "retrain"])
def test_components_and_their_inputs_and_outputs(compiled, which):
    spec = compiled[which][0]
    assert spec["pipelineInfo"]["name"] == f"modelyard-{which}"
    expected = RELEASE + (["monitor-check"] if which == "retrain" else [])
    components = {name.removeprefix("comp-"): c for name, c in spec["components"].items()
                  if not name.startswith("comp-condition")}
    assert sorted(components) == sorted(expected)
    for name, component in components.items():
        inputs = set(component.get("inputDefinitions", {}).get("parameters", {}))
        outputs = set(component.get("outputDefinitions", {}).get("parameters", {}))
        assert (inputs, outputs) == INTERFACES[name], name
        for params in (component.get("inputDefinitions", {}), component.get("outputDefinitions", {})):
            assert {p["parameterType"] for p in params.get("parameters", {}).values()} <= {"STRING"}
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    for key, param in defaults.items():  # every config a pipeline parameter names is in the image
        if key.endswith("_config"):
            assert (ROOT / param["defaultValue"]).is_file(), (key, param["defaultValue"])


@pytest.mark.parametrize("which", ["train", "retrain"])
def test_every_component_runs_the_image_given(compiled, which):
    executors = compiled[which][0]["deploymentSpec"]["executors"]
    assert executors and {e["container"]["image"] for e in executors.values()} == {IMAGE}


def test_the_default_image_is_the_one_dockerfile_cuda_builds():
    assert f"-t {DEFAULT_IMAGE} ." in (ROOT / "Dockerfile.cuda").read_text()
    assert CompileConfig().image == DEFAULT_IMAGE


@pytest.mark.parametrize("which", ["train", "retrain"])
def test_task_order_and_what_each_output_feeds(compiled, which):
    tasks = _release_dag(compiled[which], which)
    assert _order(tasks) == RELEASE
    for (consumer, name), (producer, output) in WIRING.items():
        source = tasks[consumer]["inputs"]["parameters"][name]["taskOutputParameter"]
        assert (source["producerTask"], source["outputParameterKey"]) == (producer, output), (consumer, name)
    assert "register" in tasks["rollout"]["dependentTasks"]  # the challenger alias moves before the rollout
    for task in tasks.values():
        assert not task["cachingOptions"].get("enableCache"), "a stage that writes must not be served from cache"
    if which == "retrain":
        root = _tasks(compiled[which][0]["root"])
        assert set(root) == {"monitor-check", "condition-1"}
        condition = root["condition-1"]
        assert condition["dependentTasks"] == ["monitor-check"]
        assert condition["triggerPolicy"]["condition"] == (
            "inputs.parameter_values['pipelinechannel--monitor-check-fired'] == 'true'")


@pytest.mark.parametrize("which,claim,secret", [("train", "modelyard-workspace", "modelyard"),
                                                 ("retrain", "team-claim", "team-secret")])
def test_each_task_mounts_the_workspace_and_reads_the_secret(compiled, which, claim, secret):
    executors = compiled[which][1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(compiled[which][0]["deploymentSpec"]["executors"])
    for name, executor in executors.items():
        mounts = {(m["mountPath"], m["subPath"], m["constant"]) for m in executor["pvcMount"]}
        assert mounts == {(f"{WORKDIR}/{d}", d, claim) for d in STATE_DIRS}, name
        env = {(k["envVar"], s["optional"], s["secretName"]) for s in executor["secretAsEnv"] for k in s["keyToEnv"]}
        assert env == ({(k, False, secret) for k in REQUIRED_ENV} | {(k, True, secret) for k in OPTIONAL_ENV}), name


def test_compile_refuses_an_unknown_pipeline(tmp_path):
    from modelyard.config import ConfigError

    with pytest.raises(ConfigError, match="which"):
        pipeline_cli.main(["compile", "--out", str(tmp_path / "x.yaml"), "--which", "nightly"])
    assert not (tmp_path / "x.yaml").exists()


# -- the commands, run as the pod runs them ------------------------------------------------------------

FAKE_MODELYARD = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
stage = " ".join(args[:2]) if args[0] in ("pipeline", "monitor", "rollout", "registry") else args[0]
results = json.loads(os.environ["FAKE_RESULTS"])
if "--output_json" in args:
    with open(args[args.index("--output_json") + 1], "w") as out:
        json.dump(results[stage], out)
sys.exit(int(json.loads(os.environ.get("FAKE_EXIT", "{{}}")).get(stage, 0)))
"""

RESULTS = {
    "data": {"stage": "data", "name": "transactions", "digest": "d" * 64, "rows": 20000},
    "train": {"stage": "train", "run_id": "0123abcd", "status": "finished"},
    "export": {"stage": "export", "name": "fraud", "model_version": "7", "sha256": "e" * 64},
    "pipeline canary": {"stage": "canary", "model": "fraud", "version": "7", "serve_url": "http://serve:8001"},
}
INPUTS = {"data_config": "configs/data/transactions.yaml", "train_config": "configs/train/transactions.yaml",
          "export_config": "configs/export/fraud.yaml", "rollout_config": "configs/rollout/default.yaml",
          "serve_config": "configs/serve/fraud.yaml", "monitor_config": "configs/monitor/fraud.yaml",
          "model": "fraud", "snapshot": "d" * 64, "run_id": "0123abcd", "model_version": "7",
          "pipeline_run": "modelyard-train-x7k2p"}
PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.parameters\['([a-z_0-9]+)'\](?:\.output_file)?\}\}")


def run_executor(executor: dict, tmp_path: Path, exit_codes: dict[str, int] | None = None,
                 results: dict | None = None) -> tuple[subprocess.CompletedProcess, list[list[str]], dict[str, Path]]:
    """Run one executor's command with the inputs filled in and a stand-in ``modelyard``; its process,
    the ``modelyard`` calls it made, and its output files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "modelyard"
    fake.write_text(FAKE_MODELYARD.format(python=sys.executable))
    fake.chmod(0o755)
    python = bin_dir / "python"  # the image's `python`, here the interpreter running the tests
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    outputs: dict[str, Path] = {}

    def fill(match: re.Match) -> str:
        kind, name = match.groups()
        if kind == "inputs":
            return INPUTS[name]
        outputs[name] = tmp_path / "outputs" / name / "data"  # a folder that does not exist yet, as on Kubeflow
        return str(outputs[name])

    container = executor["container"]
    argv = [PLACEHOLDER.sub(fill, part) for part in container["command"] + container.get("args", [])]
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_RESULTS": json.dumps(results or RESULTS), "FAKE_EXIT": json.dumps(exit_codes or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls, outputs


def _without_result(argv: list[str]) -> list[str]:
    i = argv.index("--output_json")
    return argv[:i] + argv[i + 2:]


@pytest.fixture(scope="module")
def executors(compiled) -> dict[str, dict]:
    return compiled["retrain"][0]["deploymentSpec"]["executors"]


def test_data_train_export_commands_parse_and_hand_on_their_identifiers(executors, tmp_path):
    proc, [call], out = run_executor(executors["exec-data"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert call[0] == "data"
    assert parse_config(DataConfig, _without_result(call[1:])).dataset == "transactions"
    assert out["digest"].read_text() == "d" * 64 and out["snapshot"].read_text() == "transactions"

    proc, [call], out = run_executor(executors["exec-train"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert call[:3] == ["train", "--config", "configs/train/transactions.yaml"]
    assert call[call.index("--data.snapshot") + 1] == INPUTS["snapshot"]  # parsed in test_stage_output_json
    assert out["run_id"].read_text() == "0123abcd"

    proc, [call], out = run_executor(executors["exec-export"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = parse_config(ExportConfig, _without_result(call[1:]))
    assert (cfg.run, cfg.name, cfg.register, cfg.alias) == ("0123abcd", "fraud", True, None)
    assert out["model_version"].read_text() == "7" and out["sha256"].read_text() == "e" * 64


def test_a_preempted_training_job_fails_its_task(executors, tmp_path):
    results = {**RESULTS, "train": {"stage": "train", "run_id": "0123abcd", "status": "preempted"}}
    proc, _, out = run_executor(executors["exec-train"], tmp_path, results=results)
    assert proc.returncode == 1 and "status is 'preempted', expected 'finished'" in proc.stderr
    assert not out["run_id"].exists()


def test_a_failed_stage_fails_its_task_and_writes_no_output(executors, tmp_path):
    proc, _, out = run_executor(executors["exec-export"], tmp_path, exit_codes={"export": 1})
    assert proc.returncode == 1 and not out["model_version"].exists()


def test_register_moves_challenger_with_a_reason(executors, tmp_path):
    proc, [call], _ = run_executor(executors["exec-register"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    parsed = registry_parser().parse_args(call[1:])
    args = parsed[parsed.action]
    assert (parsed.action, args.name, args.version, args.alias) == ("promote", "fraud", "7", "challenger")
    assert args.reason == "Kubeflow pipeline run modelyard-train-x7k2p"


def test_rollout_deploys_the_canary_then_rolls_it_out_at_its_url(executors, tmp_path):
    proc, [canary, start], _ = run_executor(executors["exec-rollout"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert canary[:2] == ["pipeline", "canary"]
    assert parse_config(CanaryConfig, canary[2:]).version == "7"
    assert start[:2] == ["rollout", "start"]
    cfg = parse_config(RolloutConfig, expand_spellings(start[2:]))
    assert (cfg.model, cfg.candidate, cfg.serve_url) == ("fraud", "7", "http://serve:8001")

    proc, calls, _ = run_executor(executors["exec-rollout"], tmp_path, exit_codes={"rollout start": 1})
    assert proc.returncode == 1 and len(calls) == 2  # rolled back: the task fails


@pytest.mark.parametrize("status,fired", [(0, "false"), (3, "true"), (1, None), (2, None)])
def test_monitor_check_fired_is_an_output_not_a_failure(executors, tmp_path, status, fired):
    proc, [call], out = run_executor(executors["exec-monitor-check"], tmp_path, exit_codes={"monitor check": status})
    assert call[:2] == ["monitor", "check"]
    cfg = parse_config(MonitorConfig, call[2:])
    assert cfg.retrain.enabled is False and cfg.model == "fraud"  # detection only: the pipeline retrains
    if fired is None:
        assert proc.returncode == status and not out["fired"].exists()
    else:
        assert proc.returncode == 0 and out["fired"].read_text() == fired
