"""``modelyard pipeline {compile,canary}``: the stages as a Kubeflow pipeline, and the canary step it runs."""

from __future__ import annotations

import json
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from modelyard._io import atomic_write_text
from modelyard.config import config_parser, group_parser, parse_config, pick_action
from modelyard.pipeline.config import CanaryConfig, CompileConfig

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# name -> (one-line summary, the configuration it parses, its description)
SUBCOMMANDS: dict[str, tuple[str, type, str]] = {
    "compile": (
        "write the train or retrain pipeline as Kubeflow Pipelines YAML (offline, with the kfp SDK)",
        CompileConfig,
        "Write a Kubeflow Pipelines pipeline (its YAML intermediate representation) whose components run "
        "the stage commands in the project image: --which train is data -> train -> export -> register "
        "(challenger) -> canary rollout; --which retrain is monitor check and, when its policy fires, the "
        "same stages. Stages pass identifiers (snapshot digest, run id, model version) as component "
        "outputs. Nothing is contacted: upload the file with the Kubeflow UI, `kfp pipeline create` or "
        "kfp.Client().create_run_from_pipeline_package. docs/orchestration.md has the details."),
    "canary": (
        "deploy a model version as the 0% canary beside @champion on the running Ray Serve application",
        CanaryConfig,
        "Redeploy the running `modelyard serve ray` application (on the Ray cluster of $RAY_ADDRESS) with "
        "@champion as stable and --version as the canary at 0% of the traffic, as the monitor's loop does "
        "before its rollout; prints the URL of the control routes (`modelyard rollout start --serve_url`). "
        "The pipeline's rollout component runs it before `modelyard rollout start`."),
}

DESCRIPTION = """The stages as an orchestrator's pipeline (Kubeflow Pipelines).

  compile  write the pipeline YAML: --which train (data -> train -> export -> register -> rollout)
           or --which retrain (monitor check; when the policy fires, the same stages);
           --image the project image (default modelyard:cuda, built from Dockerfile.cuda),
           --workspace_pvc the claim holding the shared state, --secret the MLflow/Ray settings.
  canary   deploy a version as the 0% canary beside @champion on the running Ray Serve app."""

EPILOG = """Example: modelyard pipeline compile --out build/train.yaml --image registry.example.com/modelyard:cuda
`modelyard pipeline ACTION --help` lists every option; docs/orchestration.md shows how to run the pipelines
and the same stages as an Airflow DAG. Exit status: 0 done, 1 an error, 2 bad usage."""


def _parser(action: str) -> ArgumentParser:
    _, cls, description = SUBCOMMANDS[action]
    return config_parser(cls, f"modelyard pipeline {action}", description)


def build_parser() -> ArgumentParser:
    """The ``modelyard pipeline`` group: its help lists the sub-commands."""
    return group_parser("modelyard pipeline", DESCRIPTION,
                        {name: (summary, _parser(name)) for name, (summary, _, _) in SUBCOMMANDS.items()}, EPILOG)


def main(argv: Sequence[str]) -> int:
    """Run ``modelyard pipeline ACTION [--config FILE.yaml] [--key VALUE ...]``."""
    picked = pick_action("modelyard pipeline", argv, SUBCOMMANDS, build_parser, _parser)
    if isinstance(picked, int):
        return picked
    action, rest = picked
    _, cls, description = SUBCOMMANDS[action]
    cfg = parse_config(cls, rest, prog=f"modelyard pipeline {action}", description=description)
    return _compile(cfg) if action == "compile" else _canary(cfg)


def _compile(cfg: CompileConfig) -> int:
    # kfp (and the Kubernetes client it brings) is imported for this command only
    from modelyard.pipeline.kubeflow import PIPELINES, compile_pipeline

    out = compile_pipeline(cfg)
    print(f"wrote {out}: Kubeflow pipeline {PIPELINES[cfg.which][0]} ({PIPELINES[cfg.which][1]}), image {cfg.image}")
    return 0


def _canary(cfg: CanaryConfig) -> int:
    # the monitor's deployer imports Ray when it deploys (and the monitor loop's stages at its top)
    from modelyard.monitor.loop import RayServeDeployer

    deployer = RayServeDeployer.from_file(cfg.serve_config, cfg.tracking_uri)
    url = deployer.deploy_canary(str(cfg.version))
    model = deployer.serve_config.model
    print(f"{model}: version {cfg.version} deployed as the canary at 0% beside @champion; control routes: {url}")
    if cfg.output_json:
        atomic_write_text(cfg.output_json, json.dumps({"stage": "canary", "model": model, "version": cfg.version,
                                                       "serve_url": url}, indent=2) + "\n")
    return 0
