"""Register an exported ONNX model as an MLflow model version (ONNX flavor), with tags and a card.

The model is logged into the training run it came from, so the version's source run *is* the
training run: from a version one walks to the run, its data digest, its config and its commit.
A plain MLflow install loads it with ``mlflow.pyfunc.load_model("models:/<name>@champion")``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.registry.store import PARITY_TAG
from modelyard.tracking import client_for, ensure_experiment, tracking_uri_scope

__all__ = ["register_onnx", "version_tags"]

logger = logging.getLogger(__name__)


def register_onnx(name: str, onnx_path: Path, *, tracking_uri: str, run_id: str | None, experiment: str,
                  input_example: np.ndarray, output_example: np.ndarray, tags: dict[str, str], card: str,
                  extra_artifacts: list[Path]) -> str:
    """Log ``onnx_path`` under the run and register it as a new version of ``name``; returns the version.

    ``tags`` go on the model version; ``PARITY_TAG`` must be among them (set by the export stage
    from the parity gate's verdict), the promotion check reads it.
    """
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    if PARITY_TAG not in tags:
        raise ValueError(f"refusing to register {name} without a parity verdict ({PARITY_TAG} tag)")
    client = client_for(tracking_uri)
    if run_id is None:
        run_id = client.create_run(ensure_experiment(client, experiment),
                                   tags={"mlflow.source.name": "modelyard export"}).info.run_id
    with warnings.catch_warnings(), tracking_uri_scope(tracking_uri):
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hints about integer columns and pip requirements
        with mlflow.start_run(run_id=run_id):
            info = mlflow.onnx.log_model(
                onnx_model=onnx.load(str(onnx_path)), name=f"onnx-{name}",
                signature=infer_signature(input_example, output_example), input_example=input_example,
                registered_model_name=name, await_registration_for=60,
            )
            mlflow.log_text(card, f"model_card/{name}.md")
            for path in extra_artifacts:
                mlflow.log_artifact(str(path), artifact_path=f"export/{name}")
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=card.replace(f"# {name}\n", f"# {name} v{version}\n", 1))
    logger.info("registered %s version %s (run %s)", name, version, run_id)
    return version


def version_tags(*, run_id: str | None, data_digest: str, git_commit: str | None, parity: dict[str, Any],
                 triton_version: int | None, triton_repo: str, precision: str) -> dict[str, str]:
    """The model version's tags: lineage, parity figures, Triton repository version."""
    out = parity["outputs"][0] if parity.get("outputs") else {}
    tags = {
        PARITY_TAG: parity["status"],
        "modelyard.run_id": run_id or "",
        "modelyard.data_digest": data_digest,
        "modelyard.git_commit": git_commit or "",
        "modelyard.precision": precision,
        "modelyard.parity.max_abs_error": f"{out.get('max_abs_error', float('nan')):.3g}",
        "modelyard.parity.top1_agreement": str(out.get("top1_agreement")),
        "modelyard.parity.rows": str(parity.get("rows")),
        "modelyard.triton_repo": triton_repo,
    }
    if triton_version is not None:
        tags["modelyard.triton_version"] = str(triton_version)
    return tags
