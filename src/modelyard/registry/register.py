"""Register an exported ONNX model as an MLflow model version (ONNX flavor), with tags and a card.

The model is logged into the training run it came from, so the version's source run *is* the
training run: from a version one walks to the run, its data digest, its config and its commit.
A plain MLflow install loads it with ``mlflow.pyfunc.load_model("models:/<name>@champion")``.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._io import file_sha256
from modelyard.registry.store import PARITY_TAG, SHA256_TAG
from modelyard.safety import check_name
from modelyard.tracking import client_for, ensure_experiment, tracking_uri_scope

__all__ = ["register_onnx", "version_tags"]

logger = logging.getLogger(__name__)


def register_onnx(name: str, onnx_path: Path, *, tracking_uri: str, run_id: str | None, experiment: str,
                  input_example: np.ndarray | dict[str, np.ndarray], output_example: np.ndarray | None = None,
                  tags: dict[str, str], card: str, extra_artifacts: list[Path], signature: Any = None) -> str:
    """Log ``onnx_path`` under the run and register it as a new version of ``name``; returns the version.

    The MLflow model signature is ``signature`` (an ``mlflow.models.ModelSignature``, from a
    :class:`modelyard.signature.Signature`: named tensors with dynamic axes) or, without one, inferred
    from ``input_example`` and ``output_example``.

    ``tags`` go on the model version; ``PARITY_TAG`` must be among them (set by the export stage
    from the parity gate's verdict), the promotion check reads it.

    Everything is logged first and the version is created last, by one request that carries all its
    tags and its card: a process killed on the way leaves at most a logged model no version points
    to, never a version without its parity verdict or checksum. The run is written to through the
    client, never reopened with ``mlflow.start_run``, so its status stays what training left (a kill
    cannot leave it RUNNING).
    """
    # The name becomes artifact paths (``onnx-<name>``, ``model_card/<name>.md``, ``export/<name>/``)
    # in the run's artifact store: checked before anything is logged or read.
    check_name(name, "registered model name")
    import mlflow
    import onnx
    from mlflow.models import infer_signature
    from mlflow.tracking.context.registry import resolve_tags

    if PARITY_TAG not in tags:
        raise ValueError(f"refusing to register {name} without a parity verdict ({PARITY_TAG} tag)")
    # The bytes registered, so a rollout can refuse a file changed or damaged after export (preflight).
    tags = {SHA256_TAG: file_sha256(onnx_path), **tags}
    client = client_for(tracking_uri)
    created_run = run_id is None
    if run_id is None:
        run_id = client.create_run(ensure_experiment(client, experiment),
                                   tags={"mlflow.source.name": "modelyard export"}).info.run_id
    run = client.get_run(run_id)
    # MLflow's SQL registry and the logged model's finalisation resolve ``models:/m-...`` through the
    # global tracking URI: pointed at this store for the block.
    with warnings.catch_warnings(), tracking_uri_scope(tracking_uri):
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hints about integer columns and pip requirements
        try:
            # Created here rather than by ``log_model``: without an active run, log_model would file
            # the model under the default experiment instead of the run's. Tags and params as
            # log_model gives them (the run's params, the user and source of this process).
            logged = client.create_logged_model(
                run.info.experiment_id, name=f"onnx-{name}", source_run_id=run_id, tags=resolve_tags(),
                params={key: str(value) for key, value in run.data.params.items()})
            mlflow.onnx.log_model(
                onnx_model=onnx.load(str(onnx_path)), name=f"onnx-{name}", model_id=logged.model_id, run_id=run_id,
                signature=signature or infer_signature(input_example, output_example),
                input_example=input_example)
            client.log_text(run_id, card, f"model_card/{name}.md")
            for path in extra_artifacts:
                client.log_artifact(run_id, str(path), artifact_path=f"export/{name}")
            _ensure_registered_model(client, name)
            mv = client.create_model_version(
                name, source=f"models:/{logged.model_id}", run_id=run_id, model_id=logged.model_id,
                tags={key: str(value) for key, value in tags.items()}, description=card, await_creation_for=60)
        except BaseException:
            if created_run:  # a run of its own (no training run): ended as ``mlflow.start_run`` would end it
                client.set_terminated(run_id, "FAILED")
            raise
    if created_run:
        client.set_terminated(run_id, "FINISHED")
    version = str(mv.version)
    # After the version exists (its number is not known before): cosmetic, a kill here only leaves
    # the card's title without the number and the logged model without its link to the version.
    _link_logged_model(client, logged.model_id, name, version)
    client.update_model_version(name, version, description=card.replace(f"# {name}\n", f"# {name} v{version}\n", 1))
    logger.info("registered %s version %s (run %s)", name, version, run_id)
    return version


def _ensure_registered_model(client: Any, name: str) -> None:
    """Create the registered model ``name`` unless it exists (another export may create it meanwhile)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def _link_logged_model(client: Any, model_id: str, name: str, version: str) -> None:
    """Record the version on the logged model (``mlflow.modelVersions``), as ``log_model`` does when it
    registers: the MLflow UI shows it on the model's page. A tracking server sets it itself."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    entry = {"name": name, "version": version}
    existing = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    if not any(str(e.get("name")) == name and str(e.get("version")) == version for e in existing):
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*existing, entry])})


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
