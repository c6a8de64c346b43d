"""docs/orchestration.md: the Airflow DAG it shows runs the stages as the Kubeflow pipeline does.

Airflow is not installed here (it is no dependency of modelyard), so the DAG's code runs against
stand-ins for the three names it imports (``DAG``, ``BashOperator``, ``pendulum``) that record the
tasks and their order. Its bash commands then run with the same stand-in ``modelyard`` as the Kubeflow
components' (test_kubeflow_pipeline.py): the identifiers must reach the next task as XComs, and the
``modelyard`` arguments must parse with the real stage parsers.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from test_kubeflow_pipeline import INPUTS, RELEASE, RESULTS, run_executor

from modelyard.cli import COMMANDS
from modelyard.config import parse_config
from modelyard.export.config import ExportConfig
from modelyard.monitor.config import MonitorConfig

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "orchestration.md"


class FakeOperator:
    def __init__(self, task_id: str, bash_command: str, **kwargs: Any) -> None:
        self.task_id, self.bash_command, self.kwargs = task_id, bash_command, kwargs
        self.downstream: list[FakeOperator] = []
        FakeDag.current.tasks[task_id] = self

    def __rshift__(self, other: FakeOperator) -> FakeOperator:
        self.downstream.append(other)
        return other


class FakeDag:
    current: FakeDag
    dags: dict[str, FakeDag] = {}

    def __init__(self, dag_id: str, **kwargs: Any) -> None:
        self.dag_id, self.kwargs, self.tasks = dag_id, kwargs, {}

    def __enter__(self) -> FakeDag:
        FakeDag.current = FakeDag.dags[self.dag_id] = self
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture(scope="module")
def dags(tmp_path_factory) -> dict[str, FakeDag]:
    text = DOC.read_text()
    section = text.split("## The same stages as an Airflow DAG", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    fakes = {"airflow": types.ModuleType("airflow"), "airflow.sdk": types.ModuleType("airflow.sdk"),
             "airflow.providers.standard.operators.bash": types.ModuleType("bash"),
             "pendulum": types.ModuleType("pendulum")}
    fakes["airflow.sdk"].DAG = FakeDag
    fakes["airflow.providers.standard.operators.bash"].BashOperator = FakeOperator
    fakes["pendulum"].datetime = lambda *args, **kwargs: args
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    FakeDag.dags = {}
    try:
        exec(compile(code, str(DOC), "exec"), {"__name__": "airflow_dag"})
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return FakeDag.dags


def _chain(first: FakeOperator) -> list[str]:
    order, task = [first.task_id], first
    while task.downstream:
        [task] = task.downstream
        order.append(task.task_id)
    return order


def test_the_dags_run_the_stages_in_the_pipelines_order(dags):
    assert set(dags) == {"modelyard_train", "modelyard_retrain"}
    assert _chain(dags["modelyard_train"].tasks["data"]) == RELEASE
    retrain = dags["modelyard_retrain"]
    assert _chain(retrain.tasks["monitor_check"]) == ["monitor_check", *RELEASE]
    assert retrain.tasks["monitor_check"].kwargs["skip_on_exit_code"] == 99
    assert retrain.kwargs["max_active_runs"] == 1


def _render(command: str) -> str:
    """Airflow's templating of the commands, for the values the upstream tasks pushed."""
    pushed = {"data": RESULTS["data"]["digest"], "train": RESULTS["train"]["run_id"],
              "export": RESULTS["export"]["model_version"]}
    command = re.sub(r"\{\{ ti\.xcom_pull\(task_ids='(\w+)'\) \}\}", lambda m: pushed[m.group(1)], command)
    return command.replace("{{ run_id }}", "manual__2025-01-01")


def test_each_task_pushes_the_identifier_the_next_one_pulls(dags, tmp_path):
    tasks = dags["modelyard_train"].tasks
    for task_id, pushed in (("data", "d" * 64), ("train", "0123abcd"), ("export", "7")):
        executor = {"container": {"command": ["bash", "-c", _render(tasks[task_id].bash_command)]}}
        proc, calls, _ = run_executor(executor, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == pushed, task_id  # BashOperator's XCom: the last line
        assert tasks[task_id].kwargs["do_xcom_push"] is True
    [export] = calls  # the last task's call: export, with the run id train pushed
    assert export[export.index("--run") + 1] == INPUTS["run_id"]
    i = export.index("--output_json")
    assert parse_config(ExportConfig, export[1:i] + export[i + 2:]).alias is None


def test_register_and_rollout_commands(dags, tmp_path):
    tasks = dags["modelyard_train"].tasks
    executor = {"container": {"command": ["bash", "-c", _render(tasks["register"].bash_command)]}}
    proc, [call], _ = run_executor(executor, tmp_path)
    assert proc.returncode == 0 and call[:3] == ["registry", "promote", "fraud"]
    assert call[call.index("--version") + 1] == "7" and "challenger" in call

    executor = {"container": {"command": ["bash", "-c", _render(tasks["rollout"].bash_command)]}}
    proc, [canary, start], _ = run_executor(executor, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert canary[:2] == ["pipeline", "canary"] and start[:2] == ["rollout", "start"]
    assert start[start.index("--serve_url") + 1] == RESULTS["pipeline canary"]["serve_url"]


@pytest.mark.parametrize("status,rc", [(0, 99), (3, 0), (1, 1)])
def test_monitor_check_skips_downstream_when_quiet(dags, tmp_path, status, rc):
    check = dags["modelyard_retrain"].tasks["monitor_check"]
    executor = {"container": {"command": ["bash", "-c", check.bash_command]}}
    proc, [call], _ = run_executor(executor, tmp_path, exit_codes={"monitor check": status})
    assert proc.returncode == rc
    assert parse_config(MonitorConfig, call[2:]).retrain.enabled is False


def test_every_modelyard_command_in_the_page_exists():
    text = DOC.read_text()
    blocks = re.findall(r"```(?:bash|python)\n(.*?)```", text, re.S)
    code = blocks + re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = {c for snippet in code for c in re.findall(r"\bmodelyard ([a-z]+)\b", snippet)}
    assert {"data", "train", "export", "registry", "rollout", "monitor", "pipeline"} <= commands
    assert commands <= set(COMMANDS), commands - set(COMMANDS)
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):  # the page's shell blocks parse
        proc = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
