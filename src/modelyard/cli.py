"""``modelyard <stage> ...``: a table of stages, each one parser and one ``run(config)``.

Every sub-command takes ``--config FILE.yaml`` plus overrides by key path and ``--help``; stage
code lives in the stage's package and this file only maps arguments onto it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "main"]

logger = logging.getLogger("modelyard")


@dataclass(frozen=True)
class Command:
    summary: str
    handler: Callable[[Sequence[str]], int]


def _data(argv: Sequence[str]) -> int:
    from modelyard.data.cli import parse_data_args
    from modelyard.data.run import run

    result = run(parse_data_args(argv))
    print(f"snapshot {result.short_digest} ({result.name}): {result.n_rows} rows accepted, "
          f"{result.n_quarantined} quarantined -> {result.path}")
    return 0


def _train(argv: Sequence[str]) -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from modelyard.train.config import parse_train_args
    from modelyard.train.run import run

    result = run(parse_train_args(argv))
    if rank_zero_only.rank != 0 or os.environ.get("MODELYARD_JOB_DIR"):
        return 0
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
    from modelyard.export.config import parse_export_args
    from modelyard.export.run import run
    from modelyard.serve.triton.repository import write_model_version

    result = run(parse_export_args(argv), write_model_version=write_model_version)
    for precision, report in result.reports.items():
        out = report.outputs[0] if report.outputs else None
        figures = f"max abs error {out.max_abs_error:.3g}, top-1 agreement {out.top1_agreement}" if out else ""
        accuracy = (f", accuracy {report.accuracy_torch:.4f} -> {report.accuracy_onnx:.4f}"
                    if report.accuracy_torch is not None else "")
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


def _triton(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "validate":
        print("usage: modelyard triton validate [REPO]\n\nChecks a Triton model repository offline: every "
              "config.pbtxt against Triton's ModelConfig schema and against its ONNX model.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from modelyard.serve.triton.validate import main as validate_main

    return validate_main(argv[1:])


def _serve(argv: Sequence[str]) -> int:
    targets = {"triton": "modelyard.serve.triton.server", "ray": "modelyard.serve.ray.app"}
    if not argv or argv[0] not in targets:
        print("usage: modelyard serve {triton,ray} [options]\n\n"
              "  triton  a real Triton Inference Server endpoint for a model of the repository\n"
              "  ray     the Ray Serve application (KServe v2 protocol, dynamic batching, canary/shadow)\n\n"
              "`modelyard serve triton --help` and `modelyard serve ray --help` list the options.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(targets[argv[0]]).main(argv[1:])


def _tracking(argv: Sequence[str]) -> int:
    from modelyard.tracking_server import main as tracking_main

    return tracking_main(argv)


def _rollout(argv: Sequence[str]) -> int:
    from modelyard.rollout.cli import main as rollout_main

    return rollout_main(argv)


def _monitor(argv: Sequence[str]) -> int:
    from modelyard.monitor.cli import main as monitor_main

    return monitor_main(argv)


COMMANDS: dict[str, Command] = {
    "data": Command("validate a dataset against its schema and store a content-addressed snapshot", _data),
    "train": Command("train a LightningModule on a snapshot (DDP, torchrun, Ray), tracked in MLflow", _train),
    "export": Command("best checkpoint -> parity-gated ONNX (+int8/fp16) -> Triton repository -> registry", _export),
    "triton": Command("`triton validate [REPO]`: check a Triton model repository offline", _triton),
    "serve": Command("`serve triton`: a Triton endpoint; `serve ray`: Ray Serve with canary/shadow traffic", _serve),
    "rollout": Command("progressive canary rollout: start, status, abort, promote", _rollout),
    "registry": Command("model versions, audited champion/challenger moves, their history", _registry),
    "monitor": Command("drift and live-accuracy checks; the retrain -> export -> canary -> promote loop", _monitor),
    "tracking": Command("`tracking server`: the MLflow tracking server with authentication, on 127.0.0.1", _tracking),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return (
        "usage: modelyard <command> [--config FILE.yaml] [--key.path VALUE ...]\n\n"
        "modelyard takes a deep-learning model from data to production and keeps it healthy.\n\n"
        "commands:\n" + "\n".join(lines) + "\n\n"
        "`modelyard <command> --help` lists every option of a command.\n"
        "MLflow: $MLFLOW_TRACKING_URI, else an embedded store (./mlflow.db, ./mlartifacts).\n"
        "Ray: $RAY_ADDRESS, else a local instance."
    )


def _setup_logging() -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    # Only rank 0 speaks; other ranks report warnings and errors.
    level = logging.INFO if rank_zero_only.rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "urllib3", "filelock", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    from modelyard.config import ConfigError
    from modelyard.errors import ModelyardError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"modelyard: unknown command {name!r}; expected one of: {', '.join(COMMANDS)}\n\n{_usage()}",
              file=sys.stderr)
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
