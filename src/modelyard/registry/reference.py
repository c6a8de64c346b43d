"""Model references: which ONNX file, under which version label, a served model version is.

A reference is ``@champion``/``@challenger`` (registry alias), a registry version number (``"3"``) or
``path:FILE.onnx``. Registry versions resolve to the Triton repository copy named by the version's
``modelyard.triton_repo``/``modelyard.triton_version`` tags, else to the ONNX file among the
version's artifacts. Serving loads what this names and the rollout's preflight checks the same file.

The files a model needs beside its graph (``signature.json``, a tokenizer) lie beside the ONNX file in
an export or Triton version folder; for a version served from its artifacts they are fetched from
its run's ``export/<name>/`` folder into :attr:`ModelSource.files`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.safety import check_name, check_version, contained, resolves_inside
from modelyard.tracking import client_for, resolve_tracking_uri, tracking_uri_scope

__all__ = ["ModelSource", "resolve_reference"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """An ONNX file, the version label it is served under, and the folder of the files the model
    needs beside it (``signature.json``, a tokenizer); None: the ONNX file's own folder."""

    reference: str
    path: str
    label: str
    files: str | None = None

    @property
    def files_dir(self) -> Path:
        """Where the version's ``signature.json`` and tokenizer are, when it has them."""
        return Path(self.files) if self.files is not None else Path(self.path).parent


def resolve_reference(reference: str, model: str, tracking_uri: str | None = None) -> ModelSource:
    """The ONNX file and version label of a model reference.

    Raises:
        ValueError: the reference is malformed, or names a file/version/alias that does not exist.
    """
    if reference.startswith("path:"):
        # An operator's own file, so any folder is allowed; but judged as a string first: no NUL, no
        # URI (file://, s3://: not fetched here), an .onnx name, then a regular file once links are followed.
        raw = reference.removeprefix("path:")
        if "\0" in raw or "://" in raw or not raw.endswith(".onnx"):
            raise ValueError(f"model reference {reference!r} refused: expected path:FILE.onnx, a local ONNX file "
                             "path without a URI scheme or NUL character")
        path = Path(raw).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"model reference {reference!r}: no file at {path}; expected path:FILE.onnx")
        # triton_models/<name>/<version>/model.onnx -> that version number; else the file's stem.
        label = path.parent.name if path.parent.name.isdigit() else path.stem
        return ModelSource(reference, str(path), label)
    if reference.startswith("@") or reference.isdigit():
        return _from_registry(reference, model, tracking_uri)
    raise ValueError(f"model reference {reference!r} not understood; expected @champion, @challenger, a registry "
                     "version number such as 3, or path:FILE.onnx")


def _from_registry(reference: str, model: str, tracking_uri: str | None) -> ModelSource:
    client = client_for(resolve_tracking_uri(tracking_uri))
    try:
        if reference.startswith("@"):
            mv = client.get_model_version_by_alias(model, reference[1:])
        else:
            mv = client.get_model_version(model, reference)
    except Exception as err:  # noqa: BLE001 - MlflowException for an unknown alias/version/model
        raise ValueError(f"model reference {reference!r}: registry model {model!r} has no such "
                         f"{'alias' if reference.startswith('@') else 'version'} ({err})") from None
    version = str(mv.version)
    tags = mv.tags or {}
    repo, triton_version = tags.get("modelyard.triton_repo"), tags.get("modelyard.triton_version")
    if repo and triton_version:
        # Tags are data anyone with registry write access can set: the path is built from checked
        # names and must stay inside the repository once symlinks are followed.
        check_version(triton_version, f"{model} v{version} tag modelyard.triton_version")
        candidate = contained(repo, f"{check_name(model, 'model name')}/{triton_version}/model.onnx",
                              f"{model} v{version} Triton copy")
        if candidate.is_file():
            return ModelSource(reference, str(candidate.resolve()), version)
        logger.warning("%s v%s: Triton copy %s is missing; using the version's artifacts", model, version, candidate)
    import mlflow.artifacts

    # ``models:/m-...`` (a logged model) resolves through MLflow's global tracking URI whatever
    # ``tracking_uri`` says: pointed at this registry for the call.
    with tracking_uri_scope(client.tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, tracking_uri=client.tracking_uri))
    files = [local] if local.is_file() else sorted(f for f in local.rglob("*.onnx") if resolves_inside(local, f))
    if not files:
        raise ValueError(f"model reference {reference!r}: {model} v{version} has no Triton copy "
                         f"({repo}/{model}/{triton_version}) and no .onnx artifact under {mv.source}")
    return ModelSource(reference, str(files[0]), version, _export_files(client, mv.run_id, model))


def _export_files(client: Any, run_id: str | None, model: str) -> str | None:
    """The run's ``export/<model>/`` files other than ONNX graphs (signature, tokenizer, manifest),
    downloaded into a folder; None when the run has none or they cannot be fetched."""
    if not run_id:
        return None
    import mlflow.artifacts

    try:
        wanted = [a.path for a in client.list_artifacts(run_id, f"export/{model}")
                  if not a.is_dir and not a.path.endswith(".onnx")]
        if not wanted:
            return None
        folder = tempfile.mkdtemp(prefix=f"modelyard-{model}-files-")
        local = [mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=folder,
                                                     tracking_uri=client.tracking_uri) for path in wanted]
    except Exception as err:  # noqa: BLE001 - MlflowException, OSError: served without them, said so
        logger.warning("%s run %s: cannot fetch the files of export/%s (%s); serving with the graph's own "
                       "signature", model, run_id, model, err)
        return None
    return str(Path(local[0]).parent)  # the files of one artifact folder land in one local folder
