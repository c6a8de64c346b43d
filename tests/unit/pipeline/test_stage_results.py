"""``--output_json``: the result each stage command writes for an orchestrator, and the step that copies
its values into the files Kubeflow reads as component outputs (:mod:`modelyard.pipeline.outputs`).

The data stage runs for real on a small table; training and export are replaced by their results (a
real run is the integration tier's job) while their command lines go through the real parsers.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from modelyard import cli
from modelyard._io import file_sha256
from modelyard.config import ConfigError
from modelyard.pipeline import outputs

ROOT = Path(__file__).resolve().parents[3]


def test_data_writes_its_digest_and_the_next_step_reads_it(workdir, capsys):
    result = workdir / "result.json"
    assert cli.COMMANDS["data"].handler(["--dataset", "transactions", "--rows", "600", "--store", "store",
                                         "--output_json", str(result)]) == 0
    written = json.loads(result.read_text())
    [snapshot] = (workdir / "store" / "snapshots").iterdir()
    assert written["stage"] == "data" and written["digest"] == snapshot.name
    assert (written["name"], written["rows"] + written["quarantined"]) == ("transactions", 600)
    assert written["short_digest"] in capsys.readouterr().out  # the same result as the summary line

    digest_file = workdir / "out" / "digest" / "data"
    assert outputs.main([str(result), f"digest={digest_file}", "name=-"]) == 0
    assert digest_file.read_text() == snapshot.name
    assert capsys.readouterr().out == "transactions\n"


def test_output_json_takes_both_spellings_and_needs_a_path():
    assert cli._take_result_path(["--rows", "5", "--output_json", "r.json"], "data") == (["--rows", "5"], "r.json")
    assert cli._take_result_path(["--output_json=r.json", "--rows", "5"], "data") == (["--rows", "5"], "r.json")
    assert cli._take_result_path(["--rows", "5"], "data") == (["--rows", "5"], None)
    for argv in (["--output_json"], ["--output_json", "--rows", "5"], ["--output_json="]):
        with pytest.raises(ConfigError, match="--output_json needs a PATH"):
            cli._take_result_path(argv, "data")


def test_train_writes_its_run_id(workdir, monkeypatch):
    from modelyard.train.run import TrainResult

    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return TrainResult(run_id="0123abcd", experiment="transactions", tracking_uri="sqlite:///mlflow.db",
                           job_dir=workdir / "runs" / "job", status="finished", best_score=0.91,
                           monitor="val_auroc", data_digest="d" * 64)

    # the module, not the package attribute of the same name (modelyard.train exports the function `run`)
    monkeypatch.setattr(importlib.import_module("modelyard.train.run"), "run", fake_run)
    result = workdir / "result.json"
    # the train component's command line, through the real parser
    assert cli.COMMANDS["train"].handler(["--config", str(ROOT / "configs/train/transactions.yaml"),
                                          "--data.snapshot", "d" * 64, "--output_json", str(result)]) == 0
    assert seen["cfg"].data.snapshot == "d" * 64
    written = json.loads(result.read_text())
    assert (written["stage"], written["run_id"], written["status"]) == ("train", "0123abcd", "finished")
    assert written["data_digest"] == "d" * 64


def test_export_writes_its_model_version_and_the_deployed_files_sha256(workdir, monkeypatch):
    from modelyard.export.run import ExportResult

    onnx = workdir / "exports" / "fraud" / "0123abcd" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"not really a graph")

    def fake_run(cfg, write_model_version):
        assert (cfg.run, cfg.name, cfg.alias, cfg.register) == ("0123abcd", "fraud", None, True)
        return ExportResult(name="fraud", export_dir=onnx.parent, onnx_path=onnx, reports={}, triton_version=3,
                            model_version="7")

    monkeypatch.setattr(importlib.import_module("modelyard.export.run"), "run", fake_run)
    result = workdir / "result.json"
    assert cli.COMMANDS["export"].handler(["--config", str(ROOT / "configs/export/fraud.yaml"), "--run", "0123abcd",
                                           "--name", "fraud", "--register", "true", "--alias", "null",
                                           "--output_json", str(result)]) == 0
    written = json.loads(result.read_text())
    assert (written["model_version"], written["triton_version"], written["alias"]) == ("7", 3, None)
    assert written["sha256"] == file_sha256(onnx)


def test_outputs_refuses_a_missing_key_or_an_unmet_expectation_and_writes_nothing(tmp_path, capsys):
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"run_id": "0123abcd", "status": "preempted", "model_version": None}))
    target = tmp_path / "run_id"
    assert outputs.main([str(result), f"run_id={target}", "--expect", "status=finished"]) == 1
    assert "status is 'preempted', expected 'finished'" in capsys.readouterr().err
    assert outputs.main([str(result), f"run_id={target}", f"model_version={tmp_path / 'v'}"]) == 1
    assert "model_version is missing or empty" in capsys.readouterr().err
    assert not target.exists() and not (tmp_path / "v").exists()
    assert outputs.main([str(result), f"run_id={target}", "--expect", "status=preempted"]) == 0
    assert target.read_text() == "0123abcd"


def test_outputs_refuses_what_is_not_a_result(tmp_path, capsys):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "text.json").write_text("run 0123abcd")
    assert outputs.main([str(tmp_path / "list.json"), f"a={tmp_path / 'a'}"]) == 1
    assert outputs.main([str(tmp_path / "text.json"), f"a={tmp_path / 'a'}"]) == 1
    assert outputs.main([str(tmp_path / "missing.json"), f"a={tmp_path / 'a'}"]) == 1
    with pytest.raises(SystemExit) as exit_info:
        outputs.main([str(tmp_path / "list.json"), "no-equals-sign"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "a").exists()


def test_canary_deploys_the_version_and_writes_the_control_url(workdir, monkeypatch, capsys):
    from modelyard.monitor.loop import RayServeDeployer
    from modelyard.pipeline import cli as pipeline_cli

    deployed = []

    def fake_deploy(self, version):
        deployed.append((self.serve_config.model, self.serve_config.tracking_uri, version))
        return "http://127.0.0.1:8001"

    monkeypatch.setattr(RayServeDeployer, "deploy_canary", fake_deploy)
    result = workdir / "result.json"
    assert pipeline_cli.main(["canary", "--serve_config", str(ROOT / "configs/serve/fraud.yaml"), "--version", "7",
                              "--tracking_uri", "sqlite:///x.db", "--output_json", str(result)]) == 0
    assert deployed == [("fraud", "sqlite:///x.db", "7")]
    assert json.loads(result.read_text()) == {"stage": "canary", "model": "fraud", "version": "7",
                                              "serve_url": "http://127.0.0.1:8001"}
    assert "control routes: http://127.0.0.1:8001" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="version is required"):
        pipeline_cli.main(["canary", "--serve_config", str(ROOT / "configs/serve/fraud.yaml")])
    assert len(deployed) == 1
