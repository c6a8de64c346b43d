"""retrain.hook / retrain.hook_command: the user's code answers an incident's window with a datamodule or
a run; anything else, or a failure, closes the incident as failed with the reason in its timeline and
the monitor goes on. Real inference log, feedback, incident store and MLflow (SQLite); training,
export, canary and rollout are stand-ins that record what they were given."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.config import ConfigError, parse_config
from modelyard.data.generators import make_transactions, transactions_schema
from modelyard.inference.feedback import FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.models import encode_features, encode_labels, fit_data_spec
from modelyard.monitor.check import Reference
from modelyard.monitor.config import MonitorConfig, RetrainConfig
from modelyard.monitor.loop import Monitor, RetrainPipeline

WINDOWS: list[dict] = []  # what the hooks below were called with


def datamodule_hook(window: dict) -> dict:
    WINDOWS.append(window)
    labelled = pd.read_parquet(window["feedback"])
    return {"class_path": "user_models.SensorsDataModule", "init_args": {"rows": len(labelled), "seed": 7}}


def failing_hook(window: dict) -> dict:
    raise ValueError("no sensor data for this window")


def exiting_hook(window: dict) -> dict:
    sys.exit(3)


def forgetful_hook(window: dict) -> None:
    WINDOWS.append(window)


def number_hook(window: dict) -> int:
    return 42


def unknown_keys_hook(window: dict) -> dict:
    return {"class_path": "user_models.SensorsDataModule", "init": {"rows": 3}}


def unknown_run_hook(window: dict) -> str:
    return "0123456789abcdef0123456789abcdef"


NOT_CALLABLE = 3


class Recording(RetrainPipeline):
    """The real hook step and run check; training (for a datamodule), export, canary, rollout recorded."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg, echo=lambda line: None)
        self.trained_on: list[dict] = []

    def train(self, incident, data, tracking_uri):
        if data.get("run_id"):
            return super().train(incident, data, tracking_uri)  # checks the run is finished
        self.trained_on.append(data)
        return f"run-{incident.id}"

    def export(self, incident, run_id, tracking_uri):
        return "2"

    def deploy_canary(self, incident, version):
        return "http://127.0.0.1:1"

    def rollout(self, incident, version, store, tracking_uri, on_decision):
        return "promoted"


@pytest.fixture(scope="module")
def reference() -> Reference:
    import torch

    from modelyard.train.profile import build_reference_profile

    train = make_transactions(3000, seed=0)
    spec = fit_data_spec(train, transactions_schema())
    logits = torch.zeros((100, 2))
    return Reference("fraud", "1", "run-0", build_reference_profile(train, logits, spec), spec, since=None)


@pytest.fixture
def log_dir(tmp_path, reference) -> Path:
    """300 answered rows, 200 of them labelled."""
    frame = make_transactions(300, seed=1)
    x, y = encode_features(frame, reference.spec), encode_labels(frame, reference.spec)
    log = InferenceLog(tmp_path / "log", "fraud")
    for start in range(0, 300, 50):
        log.record(f"r{start}", "1", "stable", x[start:start + 50], np.zeros((50, 2), np.float32),
                   timestamp=time.time() - 60)
    log.close()
    feedback = FeedbackLog(tmp_path / "log", "fraud").submit(
        [{"id": f"r{start}", "labels": [int(v) for v in y[start:start + 50]]} for start in range(0, 200, 50)])
    assert feedback.accepted == 200
    return tmp_path / "log"


def _monitor(tmp_path: Path, reference: Reference, **retrain) -> Monitor:
    cfg = MonitorConfig(log_dir=str(tmp_path / "log"), state_dir=str(tmp_path / "state"),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", cooldown_s=0.0,
                        retrain=RetrainConfig(serve_config=None, serve_url="http://127.0.0.1:1", **retrain))
    return Monitor(cfg, pipeline=Recording(cfg), echo=lambda line: None, reference_loader=lambda: reference)


def test_a_callable_hook_gets_the_window_and_its_datamodule_is_retrained_on(tmp_path, reference, log_dir):
    WINDOWS.clear()
    monitor = _monitor(tmp_path, reference, hook=f"{__name__}:datamodule_hook")
    incident = monitor.retrain_now("new sensor calibration")
    assert incident.state == "promoted", (incident.state, incident.error)
    (window,) = WINDOWS
    assert (window["model"], window["incident"], window["champion_version"], window["champion_run"]) == (
        "fraud", 1, "1", "run-0")
    assert window["labelled_rows"] == 200 and window["until"] > 0 and window["triggers"][0]["name"] == "manual"
    labelled = pd.read_parquet(window["feedback"])
    assert len(labelled) == 200 and {"features", "label", "ts", "predicted"} <= set(labelled.columns)
    assert Path(window["folder"]) == monitor.incidents.incident_dir(incident).resolve()
    datamodule = {"class_path": "user_models.SensorsDataModule", "init_args": {"rows": 200, "seed": 7}}
    assert monitor.pipeline.trained_on[0]["datamodule"] == datamodule
    assert incident.steps["data"]["datamodule"] == datamodule
    kinds = [e["kind"] for e in monitor.incidents.events()]
    assert kinds == ["incident", "data", "trained", "exported", "canary", "closed"]
    data_event = monitor.incidents.events()[1]
    assert "answered datamodule user_models.SensorsDataModule" in data_event["message"]


def test_a_hook_may_answer_a_run_it_trained(tmp_path, reference, log_dir, monkeypatch):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("sensors"))
    client.set_terminated(run.info.run_id, "FINISHED")
    monkeypatch.setattr(sys.modules[__name__], "unknown_run_hook", lambda window: {"run_id": run.info.run_id})
    monitor = _monitor(tmp_path, reference, hook=f"{__name__}:unknown_run_hook")
    incident = monitor.retrain_now("retrained by hand")
    assert incident.state == "promoted" and incident.steps["run_id"] == run.info.run_id
    assert monitor.pipeline.trained_on == []
    assert f"answered run {run.info.run_id}, trained by the hook" in monitor.incidents.events()[1]["message"]


COMMAND_OK = ("import json, sys; window = json.load(sys.stdin); print('reading', window['feedback']); "
              "print(json.dumps({'class_path': 'pkg.mod.DataModule', 'init_args': {'n': window['labelled_rows']}}))")


def test_a_command_hook_reads_the_window_on_stdin_and_answers_on_its_last_line(tmp_path, reference, log_dir):
    monitor = _monitor(tmp_path, reference, hook_command=[sys.executable, "-c", COMMAND_OK])
    incident = monitor.retrain_now("command")
    assert incident.state == "promoted", incident.error
    assert incident.steps["data"]["datamodule"] == {"class_path": "pkg.mod.DataModule", "init_args": {"n": 200}}


FAILURES = [  # (retrain settings, the reason the incident records)
    ({"hook": "no_such_module_here:build"}, "retrain.hook 'no_such_module_here:build' cannot be imported: "
                                            "ModuleNotFoundError"),
    ({"hook": f"{__name__}:missing"}, "cannot be imported: AttributeError"),
    ({"hook": f"{__name__}:NOT_CALLABLE"}, "is not a function but int 3"),
    ({"hook": f"{__name__}:failing_hook"}, "raised ValueError: no sensor data for this window"),
    ({"hook": f"{__name__}:exiting_hook"}, "raised SystemExit: 3"),
    ({"hook": f"{__name__}:forgetful_hook"}, "returned NoneType None: neither a datamodule nor a run id (did it "
                                             "forget to return?); expected a datamodule"),
    ({"hook": f"{__name__}:number_hook"}, "returned int 42: neither a datamodule nor a run id"),
    ({"hook": f"{__name__}:unknown_keys_hook"}, "unknown key(s) ['init']"),
    ({"hook": f"{__name__}:unknown_run_hook"}, "answered run '0123456789abcdef0123456789abcdef', which is not a "
                                               "run in sqlite"),
    ({"hook_command": [sys.executable, "-c", "import sys; print('oops', file=sys.stderr); sys.exit(4)"]},
     "exited 4:\noops"),
    ({"hook_command": [sys.executable, "-c", "print('done')"]}, "the last line of its output is not JSON ('done')"),
    ({"hook_command": [sys.executable, "-c", "print('[1, 2]')"]}, "returned list [1, 2]"),
    ({"hook_command": [sys.executable, "-c", "import time; time.sleep(30)"], "hook_timeout_s": 0.5},
     "did not finish within retrain.hook_timeout_s=0.5s and was stopped"),
    ({"hook_command": ["/nonexistent/retrain-hook"]}, "cannot be run: [Errno 2]"),
]


def test_a_failing_hook_fails_the_incident_with_its_reason_and_the_monitor_goes_on(tmp_path, reference, log_dir):
    monitor = _monitor(tmp_path, reference)
    for number, (settings, reason) in enumerate(FAILURES, start=1):
        retrain = monitor.cfg.retrain
        retrain.hook, retrain.hook_command, retrain.hook_timeout_s = None, None, 60.0
        for key, value in settings.items():
            setattr(retrain, key, value)
        incident = monitor.retrain_now(f"case {number}")
        assert incident.id == number and incident.state == "failed", (settings, incident.state)
        assert reason in incident.error, (settings, incident.error)
        closed = monitor.incidents.events()[-1]
        assert closed["kind"] == "closed" and closed["incident"] == number and reason in closed["message"]
    assert monitor.pipeline.trained_on == []
    assert monitor.check().window["rows"] == 300  # and checks still run


def test_an_open_incident_refuses_a_second_request(tmp_path, reference, log_dir):
    from modelyard.errors import ModelyardError

    monitor = _monitor(tmp_path, reference, hook=f"{__name__}:datamodule_hook")
    monitor.incidents.open("1", [{"name": "manual", "detail": "first"}])
    with pytest.raises(ModelyardError, match="incident 1 of fraud is still open"):
        monitor.retrain_now("second")


@pytest.mark.parametrize(("args", "message"), [
    (["--retrain.hook", "my-hooks.py"], "retrain.hook must name a Python callable as 'package.module:function', "
                                        "got 'my-hooks.py'; a command goes in retrain.hook_command"),
    (["--retrain.hook", "pkg.mod:fn", "--retrain.hook_command", '["python", "h.py"]'],
     "retrain.hook and retrain.hook_command are exclusive"),
    (["--retrain.hook_command", "[]"], "retrain.hook_command must be a non-empty list of non-empty arguments"),
    (["--retrain.hook_timeout_s", "0"], "retrain.hook_timeout_s"),
    (["--retrain.profile_window", "recent"], "retrain.profile_window"),
    (["--retrain.profile_window", "last_rows", "--retrain.profile_rows", "500"],
     "retrain.profile_rows (500) must be within retrain.min_labelled_rows (1000) and retrain.recent_rows (20000)"),
])
def test_bad_retrain_values_name_the_field_and_what_is_expected(args, message):
    with pytest.raises(ConfigError) as err:
        parse_config(MonitorConfig, args, source="monitor configuration")
    assert message in str(err.value), str(err.value)


def test_good_hook_values_parse():
    cfg = parse_config(MonitorConfig, ["--retrain.hook", "company.retraining:sensors_window"])
    assert cfg.retrain.hook == "company.retraining:sensors_window" and cfg.retrain.hook_command is None
    cfg = parse_config(MonitorConfig, ["--retrain.hook_command", json.dumps(["python", "retrain.py", "--fast"]),
                                       "--retrain.profile_window", "last_rows", "--retrain.profile_rows", "2000"])
    assert cfg.retrain.hook_command == ["python", "retrain.py", "--fast"]
    assert (cfg.retrain.profile_window, cfg.retrain.profile_rows) == ("last_rows", 2000)


def test_the_retrain_command_wants_a_reason(capsys):
    from modelyard.monitor.cli import main

    assert main(["retrain", "--model", "fraud"]) == 2
    assert "--reason TEXT is required" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "retrain" in capsys.readouterr().out
