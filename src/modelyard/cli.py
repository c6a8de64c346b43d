"""``modelyard <stage> ...``: a table of stages, each one parser and one ``run(config)``.

Every sub-command takes ``--config FILE.yaml`` plus overrides by key path and ``--help``; stage
code lives in the stage's package and this file only maps arguments onto it
(:func:`modelyard.config.parse_config` builds the stage's configuration).

The stage modules are imported inside the handlers, not at the top of this file, on purpose:
``modelyard --help`` and each command load only what they use (training alone pulls in torch and
Lightning, serving Ray).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jsonargparse import ArgumentParser

from modelyard._io import atomic_write_text, file_sha256
from modelyard.config import ConfigError, group_parser, parse_config
from modelyard.errors import ModelyardError

__all__ = ["COMMANDS", "build_parser", "main"]

logger = logging.getLogger("modelyard")


@dataclass(frozen=True)
class Command:
    summary: str
    handler: Callable[[Sequence[str]], int]


DATA_DESCRIPTION = (
    "Generate or read a dataset, validate it against its schema, and store it as a content-addressed snapshot "
    "with recorded train/val/test splits. Rejected rows go to a quarantine file (policy quarantine) or stop "
    "the command with a report (policy fail). --output_json PATH also writes the result (name, digest, "
    "counts) as JSON, for an orchestrator.")

EXPORT_DESCRIPTION = (
    "Export the best checkpoint of a training run to ONNX behind a parity gate against PyTorch on the run's "
    "validation data, write it into the Triton model repository and register it in MLflow with a model card. "
    "--output_json PATH also writes the result (model version, sha256 of the deployed file, parity verdicts) "
    "as JSON, for an orchestrator.")

# `modelyard data|train|export --output_json PATH`: the stage's result as JSON, the identifiers the next
# stage takes (snapshot digest, run id, model version) read by a machine rather than from the summary
# lines (the Kubeflow components of modelyard.pipeline read it). The stage configs do not hold it.
RESULT_OPTION = "--output_json"


def _take_result_path(argv: Sequence[str], stage: str) -> tuple[list[str], str | None]:
    """``argv`` without ``--output_json PATH`` (or ``--output_json=PATH``), and that path."""
    rest, path = list(argv), None
    for i, arg in enumerate(rest):
        if arg == RESULT_OPTION or arg.startswith(RESULT_OPTION + "="):
            value = arg.partition("=")[2] if "=" in arg else (rest[i + 1] if i + 1 < len(rest) else "")
            if not value or value.startswith("--"):
                raise ConfigError([f"{RESULT_OPTION} needs a PATH (the JSON file to write)"],
                                  f"{stage} configuration")
            del rest[i: i + (1 if "=" in arg else 2)]
            path = value
            break
    return rest, path


def _write_result(path: str | None, result: dict[str, Any]) -> None:
    if path:
        atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")


def _data(argv: Sequence[str]) -> int:
    from modelyard.data.config import DataConfig
    from modelyard.data.run import run

    argv, result_path = _take_result_path(argv, "data")
    result = run(parse_config(DataConfig, argv, prog="modelyard data", description=DATA_DESCRIPTION))
    print(f"snapshot {result.short_digest} ({result.name}): {result.n_rows} rows accepted, "
          f"{result.n_quarantined} quarantined -> {result.path}")
    _write_result(result_path, {"stage": "data", "name": result.name, "digest": result.digest,
                                "short_digest": result.short_digest, "path": result.path, "rows": result.n_rows,
                                "quarantined": result.n_quarantined, "splits": result.splits})
    return 0


def _train(argv: Sequence[str]) -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from modelyard.train.config import parse_train_config
    from modelyard.train.run import run

    argv, result_path = _take_result_path(argv, "training")
    result = run(parse_train_config(argv))
    if rank_zero_only.rank != 0 or os.environ.get("MODELYARD_JOB_DIR"):
        return 0
    _write_result(result_path, {"stage": "train", "run_id": result.run_id, "status": result.status,
                                "experiment": result.experiment, "job_dir": result.job_dir,
                                "best_checkpoint": result.best_checkpoint, "monitor": result.monitor,
                                "best_score": result.best_score, "data_digest": result.data_digest,
                                "undelivered_metrics": result.undelivered_metrics})
    if result.status == "preempted":
        print(f"preempted: checkpoint saved in {result.job_dir}; continue with the same command plus --resume")
        return 0
    if result.undelivered_metrics:
        print(f"NOT delivered to MLflow: {result.undelivered_metrics} metric points, kept in "
              f"{result.undelivered_file}; the same command plus --resume delivers them")
    score = f"{result.best_score:.4f}" if result.best_score is not None else "n/a"
    print(f"run {result.run_id} ({result.experiment}): best {result.monitor} = {score}\n"
          f"  best checkpoint: {result.best_checkpoint}\n"
          f"  job folder:      {result.job_dir}\n"
          f"  browse it:       mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


def _export(argv: Sequence[str]) -> int:
    from modelyard.export.config import ExportConfig
    from modelyard.export.run import run
    from modelyard.serve.triton.repository import write_model_version

    argv, result_path = _take_result_path(argv, "export")
    result = run(parse_config(ExportConfig, argv, prog="modelyard export", description=EXPORT_DESCRIPTION),
                 write_model_version=write_model_version)
    _write_result(result_path, {"stage": "export", "name": result.name, "model_version": result.model_version,
                                "alias": result.alias, "triton_version": result.triton_version,
                                "export_dir": result.export_dir, "onnx_path": result.onnx_path,
                                "sha256": file_sha256(result.onnx_path),
                                "parity": {p: r.status for p, r in result.reports.items()},
                                "refused": result.refused})
    for precision, report in result.reports.items():
        out = report.outputs[0] if report.outputs else None
        figures = f"max abs error {out.max_abs_error:.3g}, top-1 agreement {out.top1_agreement}" if out else ""
        figures += "".join(f"; {o.name}: max abs error {o.max_abs_error:.3g}" + ("" if o.passed else " (FAILED)")
                           for o in report.outputs[1:])  # a model with several outputs
        accuracy = (f", accuracy {report.accuracy_torch:.4f} -> {report.accuracy_onnx:.4f}"
                    if report.accuracy_torch is not None else "")
        accuracy += "".join(f"; {output} {metric} {fig['torch']:.4g} -> {fig['onnx']:.4g}"  # the other task metrics
                            for output, metrics in report.metrics.items() for metric, fig in metrics.items()
                            if (output, metric) != (report.main_output, "accuracy"))
        print(f"{precision:<5} {report.status:<8} {report.file}: {figures}{accuracy}"
              + (f" ({report.reason})" if report.reason else ""))
    print(f"exported {result.name}: {result.export_dir}\n"
          f"  triton:   {result.name} version {result.triton_version}\n"
          f"  registry: {result.name} version {result.model_version or '(not registered)'}"
          + (f", alias {result.alias}" if result.alias else ""))
    return 1 if result.refused else 0


def _registry(argv: Sequence[str]) -> int:
    from modelyard.registry.cli import main as registry_main

    return registry_main(argv)


def _group(prog: str, description: str, targets: dict[str, tuple[str, str]], argv: Sequence[str]) -> int:
    """A command group whose sub-commands parse their own arguments: ``targets`` is name -> (summary,
    the module whose ``main(argv)`` runs it); without a known sub-command, the group's help."""
    if not argv or argv[0] not in targets:
        parser = group_parser(prog, description, {name: (summary, None) for name, (summary, _) in targets.items()},
                              f"`{prog} COMMAND --help` lists the options of a command.")
        parser.print_help()
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(targets[argv[0]][1]).main(argv[1:])


def _triton(argv: Sequence[str]) -> int:
    return _group("modelyard triton", "Triton model repositories.", {
        "validate": ("`validate [REPO]`: check a Triton model repository offline: every config.pbtxt against "
                     "Triton's ModelConfig schema and against its ONNX model", "modelyard.serve.triton.validate"),
    }, argv)


def _serve(argv: Sequence[str]) -> int:
    return _group("modelyard serve", "Serve a model over HTTP.", {
        "triton": ("a real Triton Inference Server endpoint for a model of the repository",
                   "modelyard.serve.triton.server"),
        "ray": ("the Ray Serve application (KServe v2 protocol, dynamic batching, canary/shadow)",
                "modelyard.serve.ray.app"),
    }, argv)


def _pipeline(argv: Sequence[str]) -> int:
    from modelyard.pipeline.cli import main as pipeline_main

    return pipeline_main(argv)


def _deploy(argv: Sequence[str]) -> int:
    from modelyard.deploy.cli import main as deploy_main

    return deploy_main(argv)


def _tracking(argv: Sequence[str]) -> int:
    from modelyard.tracking_server import main as tracking_main

    return tracking_main(argv)


def _rollout(argv: Sequence[str]) -> int:
    from modelyard.rollout.cli import main as rollout_main

    return rollout_main(argv)


def _features(argv: Sequence[str]) -> int:
    from modelyard.features.cli import main as features_main

    return features_main(argv)


def _monitor(argv: Sequence[str]) -> int:
    from modelyard.monitor.cli import main as monitor_main

    return monitor_main(argv)


COMMANDS: dict[str, Command] = {
    "data": Command("validate a dataset against its schema and store a content-addressed snapshot", _data),
    "features": Command("a Feast feature store of per-card aggregates: events, apply, materialize, historical",
                        _features),
    "train": Command("train a LightningModule on a snapshot (DDP, torchrun, Ray), tracked in MLflow", _train),
    "export": Command("best checkpoint -> parity-gated ONNX (+int8/fp16) -> Triton repository -> registry", _export),
    "triton": Command("`triton validate [REPO]`: check a Triton model repository offline", _triton),
    "serve": Command("`serve triton`: a Triton endpoint; `serve ray`: Ray Serve with canary/shadow traffic", _serve),
    "rollout": Command("progressive canary rollout: start, status, abort, promote", _rollout),
    "registry": Command("model versions, audited champion/challenger moves, their history", _registry),
    "monitor": Command("drift and live-accuracy checks; the retrain -> export -> canary -> promote loop", _monitor),
    "pipeline": Command("`pipeline compile`: the stages as a Kubeflow pipeline (train, or the retrain an incident "
                        "triggers)", _pipeline),
    "deploy": Command("`deploy kuberay`: a KubeRay RayService and Triton on Kubernetes, manifests validated "
                      "offline", _deploy),
    "tracking": Command("`tracking server`: the MLflow tracking server with authentication, on 127.0.0.1", _tracking),
}


def build_parser() -> ArgumentParser:
    """The ``modelyard`` parser: its help lists every command with its summary (each command parses
    its own arguments, so the stage modules stay unimported here)."""
    return group_parser(
        "modelyard", "modelyard takes a deep-learning model from data to production and keeps it healthy.",
        {name: (cmd.summary, None) for name, cmd in COMMANDS.items()},
        "`modelyard <command> --help` lists every option of a command.\n"
        "MLflow: $MLFLOW_TRACKING_URI, else an embedded store (./mlflow.db, ./mlartifacts).\n"
        "Environments: `modelyard --env prod <command>` (or $MODELYARD_ENV) uses that environment's registry\n"
        "  from configs/environments.yaml for every stage; `registry environments` lists them.\n"
        "Ray: $RAY_ADDRESS, else a local instance.")


def _setup_logging() -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    # Only rank 0 speaks; other ranks report warnings and errors.
    level = logging.INFO if rank_zero_only.rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "urllib3", "filelock", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _select_environment(args: list[str]) -> list[str]:
    """Strip a leading ``--env NAME`` (or ``--env=NAME``) and select it for this process and the
    processes it starts (training workers, the monitor's retraining jobs) through ``$MODELYARD_ENV``."""
    if args and args[0].startswith("--env="):
        name, args = args[0].removeprefix("--env="), args[1:]
    elif args and args[0] == "--env":
        if len(args) < 2:
            raise ConfigError(["--env needs an environment name (dev, staging, prod...)"], "command line")
        name, args = args[1], args[2:]
    else:
        return args
    from modelyard.environments import ENV_VAR, selected_environment

    os.environ[ENV_VAR] = name
    selected_environment()  # an unknown name or a missing environments file fails here, before any work
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _select_environment(args)
    except (ConfigError, ModelyardError) as err:
        print(f"modelyard: {err}", file=sys.stderr)
        return 2
    if not args or args[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"modelyard: unknown command {name!r}; expected one of: {', '.join(COMMANDS)}\n\n"
              f"{build_parser().format_help()}", file=sys.stderr)
        return 2
    _setup_logging()
    try:
        return COMMANDS[name].handler(rest)
    except ConfigError as err:
        print(f"modelyard {name}: {err}", file=sys.stderr)
        return 2
    except (ModelyardError, ValueError, LookupError, FileNotFoundError) as err:
        print(f"modelyard {name}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
