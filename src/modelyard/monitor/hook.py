"""Retraining hooks: the user's own code decides what a model whose data is not a snapshot retrains on.

A model trained on a datamodule of its own (``data.class_path``) cannot be retrained from a snapshot
of logged rows: only its author knows how labelled traffic becomes its training data. The monitor's
``retrain.hook`` (a Python callable ``package.module:function``) or ``retrain.hook_command`` (a
command) is that knowledge. When an incident opens, the loop calls it with the incident's window::

    {"model": "sensors", "incident": 3, "triggers": [{"name": "drift", "detail": "..."}, ...],
     "champion_version": "4", "champion_run": "<MLflow run id>",
     "since": 1767225600.0,        # the champion went live (None: unknown)
     "drift_since": 1767229200.0,  # the last check before the incident that saw no drift (None: none)
     "until": 1767232800.0,        # when the hook is called
     "feedback": ".../incidents/0003/labelled.parquet",  # labelled logged rows since `since`
     "labelled_rows": 1840,
     "profile_window": "since_drift",  # retrain.profile_window, and the time its rows start from:
     "profile_since": 1767229230.5,    # rows logged since then are the new reference profile's (None: none)
     "reference_fraction": 0.2, "seed": 0,  # retrain.reference_fraction and retrain.seed, for the hook's mix
     "log_dir": "inference_log", "folder": ".../incidents/0003", "tracking_uri": "sqlite:///mlflow.db"}

``feedback`` holds one row per labelled logged row: ``ts``, ``request_id``, ``row``, ``version``,
``features`` (the logged inputs, as :mod:`modelyard.inference.log` flattens them), ``outputs``,
``predicted``, ``label`` (as fed back), ``label_index`` and ``label_ts``. ``folder`` is the
incident's own folder, where the hook may write what its datamodule will read; always a local folder
(with a ``s3://``/``gs://`` state_dir, the working copy whose files are uploaded to the state's
``incidents/<NNNN>/`` when each step ends).

The hook answers with one of:

- a datamodule: ``{"class_path": "package.module.Class", "init_args": {...}}`` (optionally
  ``"batch_adapter"``): the loop runs ``modelyard train`` with the champion's config on it (the
  datamodule's ``profile_dataloader()``, if it has one, gives the new reference profile);
- a run: the id of a finished training run (a string, or ``{"run_id": ...}``) the hook trained itself.

Export, canary and rollout then follow as for a snapshot, every step in the incident's timeline. The
built-in workloads have their hooks, chosen by the champion run's datamodule when ``retrain.hook`` is
not set: text (:func:`modelyard.workloads.text.retraining_window`: the logged token ids, decoded with
the champion's tokenizer, and their labels become the ``served`` texts of a new ``TextDataModule``) and
images (:func:`modelyard.workloads.images.retraining_window`: the pixels the serving log kept for its
sample of requests and their labels become the ``served`` images of a new ``ImagesDataModule``). A
hook that cannot be imported, raises, exits non-zero, times out or answers anything else fails the
incident with the reason in its timeline; the monitor goes on.

A command gets the window as JSON on its standard input and answers with JSON on the last line of
its standard output (other lines are its log); it runs without a shell, in the monitor's working
directory, and is killed after ``retrain.hook_timeout_s``. A callable runs in the monitor's process,
to its end.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.errors import ModelyardError

__all__ = ["BUILTIN_HOOKS", "HookError", "HookResult", "call_hook", "parse_answer"]

DATAMODULE_KEYS = ("class_path", "init_args", "batch_adapter")
# the hooks of the built-in datamodules, by the class path a run records (modelyard.datamodule)
BUILTIN_HOOKS = {"modelyard.workloads.TextDataModule": "modelyard.workloads.text:retraining_window",
                 "modelyard.workloads.text.TextDataModule": "modelyard.workloads.text:retraining_window",
                 "modelyard.workloads.ImagesDataModule": "modelyard.workloads.images:retraining_window",
                 "modelyard.workloads.images.ImagesDataModule": "modelyard.workloads.images:retraining_window"}
EXPECTED = ("a datamodule {'class_path': 'package.module.Class', 'init_args': {...}} or the id of a finished "
            "training run (a string or {'run_id': ...})")


class HookError(ModelyardError, RuntimeError):
    """The retraining hook could not be run or gave no usable answer."""


@dataclass
class HookResult:
    """What the hook answered: a datamodule to train on, or a run it trained."""

    datamodule: dict[str, Any] | None = None
    run_id: str | None = None
    log: list[str] = field(default_factory=list)  # the last lines a command printed before its answer

    def to_dict(self) -> dict[str, Any]:
        return {"datamodule": self.datamodule} if self.datamodule is not None else {"run_id": self.run_id}


def hook_name(hook: str | None, command: list[str] | None) -> str:
    return f"retrain.hook {hook!r}" if hook else f"retrain.hook_command {command!r}"


def parse_answer(value: Any, what: str) -> HookResult:
    """The :class:`HookResult` of a hook's answer ``value``; :class:`HookError` naming ``what`` otherwise."""

    def refuse(reason: str) -> HookError:
        shown = repr(value)
        return HookError(f"{what} returned {type(value).__name__} {shown[:200]}{'...' if len(shown) > 200 else ''}: "
                         f"{reason}; expected {EXPECTED}")

    if isinstance(value, str):
        if not value.strip() or any(c.isspace() for c in value.strip()):
            raise refuse("not a run id")
        return HookResult(run_id=value.strip())
    if not isinstance(value, Mapping):
        raise refuse("neither a datamodule nor a run id" + (" (did it forget to return?)" if value is None else ""))
    if set(value) == {"run_id"}:
        if not isinstance(value["run_id"], str):
            raise refuse("run_id is not a string")
        return parse_answer(value["run_id"], what)
    unknown = sorted(str(k) for k in value if k not in DATAMODULE_KEYS)
    if unknown:
        raise refuse(f"unknown key(s) {unknown}")
    class_path, init_args = value.get("class_path"), value.get("init_args", {})
    if not isinstance(class_path, str) or "." not in class_path.strip(". "):
        raise refuse("class_path must be 'package.module.Class'")
    if not isinstance(init_args, Mapping) or not all(isinstance(k, str) for k in init_args):
        raise refuse("init_args must be a mapping of argument names to values")
    adapter = value.get("batch_adapter")
    if adapter is not None and not isinstance(adapter, str):
        raise refuse("batch_adapter must be 'package.module.function' or absent")
    try:  # the values travel to `modelyard train` as JSON
        init_args = json.loads(json.dumps(dict(init_args)))
    except (TypeError, ValueError) as err:
        raise refuse(f"init_args are not JSON values ({err})") from None
    datamodule = {"class_path": class_path, "init_args": init_args}
    if adapter:
        datamodule["batch_adapter"] = adapter
    return HookResult(datamodule=datamodule)


def _import(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as err:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error at import
        raise HookError(f"retrain.hook {path!r} cannot be imported: {type(err).__name__}: {err}") from None
    if not callable(target):
        raise HookError(f"retrain.hook {path!r} is not a function but {type(target).__name__} {target!r:.60}")
    return target


def call_hook(hook: str | None, command: list[str] | None, window: dict[str, Any], timeout_s: float) -> HookResult:
    """Call the callable ``hook`` or run ``command`` with ``window``; its parsed answer.

    Raises:
        HookError: any failure, its message naming the hook and the reason.
    """
    what = hook_name(hook, command)
    if hook:
        function = _import(hook)
        try:
            answer = function(dict(window))
        except (Exception, SystemExit) as err:  # noqa: BLE001 - the user's code: any failure fails the incident
            raise HookError(f"{what} raised {type(err).__name__}: {err}") from None
        return parse_answer(answer, what)
    if not command:
        raise HookError("no retrain.hook or retrain.hook_command is set")
    try:
        proc = subprocess.run(list(command), input=json.dumps(window), capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise HookError(f"{what} did not finish within retrain.hook_timeout_s={timeout_s:g}s and was stopped") from None
    except OSError as err:
        raise HookError(f"{what} cannot be run: {err}") from None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0:
        tail = "\n".join((lines + proc.stderr.strip().splitlines())[-10:])
        raise HookError(f"{what} exited {proc.returncode}" + (f":\n{tail}" if tail else ""))
    if not lines:
        raise HookError(f"{what} printed nothing; expected its answer as JSON on the last line of its output: "
                        f"{EXPECTED}")
    try:
        answer = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise HookError(f"{what}: the last line of its output is not JSON ({lines[-1][:200]!r}); expected "
                        f"{EXPECTED}") from None
    result = parse_answer(answer, what)
    result.log = lines[-11:-1]
    return result
