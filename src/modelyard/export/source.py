"""What an export starts from: a training run (or a checkpoint) turned back into a model and its data.

The run is found in MLflow (``latest`` finished ``modelyard train`` run, or an id); its job folder
gives the best checkpoint (downloaded from the run's artifacts when the folder is not on this
machine), ``config.yaml`` gives the model class, and the data digest gives the exact snapshot whose
validation split the parity gate runs on. Checkpoints are read with ``weights_only=True``: nothing
from a checkpoint is unpickled.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelyard.safety import check_digest, check_name, resolves_inside
from modelyard.tracking import client_for, resolve_tracking_uri
from modelyard.train.config import TrainConfig
from modelyard.train.fit import instantiate_model
from modelyard.train.run import MODEL_FILES

if TYPE_CHECKING:
    import torch
    from lightning import LightningModule

    from modelyard.models.spec import DataSpec
    from modelyard.train.data_source import DataSource

__all__ = ["ExportSource", "RunNotFoundError", "find_run", "load_source"]

logger = logging.getLogger(__name__)

TRAIN_SOURCE_FILTER = "tags.`mlflow.source.name` = 'modelyard train' and attributes.status = 'FINISHED'"


class RunNotFoundError(LookupError):
    """The requested run does not exist or is not a finished training run."""


@dataclass
class ExportSource:
    """The model to export and the data its parity gate runs on: a snapshot (``spec`` and
    ``datamodule`` set, one ``features`` matrix) or any datamodule (``data``, named inputs)."""

    model: LightningModule
    spec: DataSpec | None
    datamodule: Any  # SnapshotDataModule, or the run's own LightningDataModule
    checkpoint: Path
    train_config: TrainConfig
    tracking_uri: str
    run_id: str | None = None
    experiment: str | None = None
    data_digest: str = ""
    git_commit: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    data: DataSource | None = None  # set when the run trained on a datamodule of its own (data.class_path)
    model_files: dict[str, Path] = field(default_factory=dict)  # files the model needs at serving time

    @property
    def named_inputs(self) -> bool:
        """True when the model takes named inputs from a datamodule, not the snapshot's one matrix."""
        return self.data is not None

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation features ``(N, F)`` and labels ``(N,)`` of the run's own snapshot."""
        features, labels = self.datamodule.dataset("val").tensors
        return features, labels


def find_run(client: Any, run: str, experiment: str | None = None) -> Any:
    """``run`` is a run id or ``latest`` (newest finished training run, optionally of ``experiment``)."""
    if run != "latest":
        check_name(run, "run id")  # it becomes a folder name (exports/<name>/<run id>/)
        try:
            found = client.get_run(run)
        except Exception as err:  # noqa: BLE001 - MlflowException for unknown ids
            raise RunNotFoundError(f"no run {run!r} in the tracking store {client.tracking_uri} ({err}). "
                                   "Use --run latest or an id shown by `modelyard train`.") from None
        if found.info.status != "FINISHED":
            raise RunNotFoundError(f"run {run} is {found.info.status}, not FINISHED; finish or resume the "
                                   "training job (`modelyard train ... --resume`) before exporting it")
        return found
    experiments = client.search_experiments()
    if experiment:
        experiments = [e for e in experiments if e.name == experiment]
        if not experiments:
            raise RunNotFoundError(f"no experiment {experiment!r} in {client.tracking_uri}")
    runs = client.search_runs([e.experiment_id for e in experiments], filter_string=TRAIN_SOURCE_FILTER,
                              order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
    if not runs:
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise RunNotFoundError(f"no finished `modelyard train` run in {where} of {client.tracking_uri}; "
                               "train one first, or pass --checkpoint PATH")
    return runs[0]


def load_source(run: str | None, checkpoint: str | None, experiment: str | None = None,
                tracking_uri: str | None = None) -> ExportSource:
    """Model (best checkpoint weights, eval mode), data spec and validation data of a run or checkpoint."""
    from modelyard.train.data_source import DataSource  # datamodules: import torch
    from modelyard.train.datamodule import SnapshotDataModule

    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    run_id = experiment_name = commit = None
    metrics: dict[str, float] = {}
    digest = ""
    if checkpoint:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file")
        job_dir = ckpt.resolve().parents[1]
        if not (job_dir / "config.yaml").is_file():
            raise FileNotFoundError(
                f"--checkpoint {checkpoint}: expected the job's config.yaml at {job_dir / 'config.yaml'} (a "
                "checkpoint inside runs/<experiment>/<job>/checkpoints/); export a run with --run instead")
        config = yaml.safe_load((job_dir / "config.yaml").read_text())
        state = json.loads((job_dir / "job.json").read_text()) if (job_dir / "job.json").is_file() else {}
        run_id, digest = state.get("run_id"), state.get("data_digest", "")
        if run_id:  # it becomes a folder name (exports/<name>/<run id>/)
            check_name(run_id, f"run_id in {job_dir / 'job.json'}")
        if digest:
            check_digest(digest, f"data_digest in {job_dir / 'job.json'}")
        if run_id:
            found = client.get_run(run_id)
            experiment_name = client.get_experiment(found.info.experiment_id).name
            metrics, commit = dict(found.data.metrics), found.data.tags.get("mlflow.source.git.commit")
    else:
        found = find_run(client, run or "latest", experiment)
        run_id = found.info.run_id
        experiment_name = client.get_experiment(found.info.experiment_id).name
        metrics, commit = dict(found.data.metrics), found.data.tags.get("mlflow.source.git.commit")
        digest = found.data.tags.get("modelyard.data_digest", "")
        if digest:  # a tag, looked up in the data store: a digest, never a path
            check_digest(digest, f"data digest tag of run {run_id}")
        config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", tempfile.mkdtemp())).read_text())
        ckpt = _run_checkpoint(client, found)
    train_config = TrainConfig.from_dict(config)
    if train_config.data.class_path:  # the run's own datamodule, rebuilt from its logged config
        data = DataSource.from_class_path(train_config.data.class_path, train_config.data.init_args,
                                          train_config.data.batch_adapter)
        model = _load_model(train_config, None, ckpt)
        files = _model_files(client, run_id, ckpt)
        logger.info("exporting %s (run %s, datamodule %s)", ckpt, run_id or "n/a", data.class_path)
        return ExportSource(model=model, spec=None, datamodule=data.datamodule, checkpoint=ckpt,
                            train_config=train_config, tracking_uri=uri, run_id=run_id, experiment=experiment_name,
                            data_digest=digest or data.digest(), git_commit=commit, metrics=metrics, data=data,
                            model_files=files)
    datamodule = SnapshotDataModule(snapshot=digest or train_config.data.snapshot, store=train_config.data.store)
    spec = datamodule.prepare()
    model = _load_model(train_config, spec, ckpt)
    logger.info("exporting %s (run %s, data %s)", ckpt, run_id or "n/a", spec.digest[:12])
    return ExportSource(model=model, spec=spec, datamodule=datamodule, checkpoint=ckpt, train_config=train_config,
                        tracking_uri=uri, run_id=run_id, experiment=experiment_name, data_digest=spec.digest,
                        git_commit=commit, metrics=metrics)


def _model_files(client: Any, run_id: str | None, checkpoint: Path) -> dict[str, Path]:
    """The files the datamodule gave the model (``model_files/`` of the job folder, else of the run)."""
    folder = checkpoint.resolve().parents[1] / MODEL_FILES
    if not folder.is_dir() and run_id:
        names = [a.path for a in client.list_artifacts(run_id, MODEL_FILES)]
        if names:
            folder = Path(client.download_artifacts(run_id, MODEL_FILES, tempfile.mkdtemp()))
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and resolves_inside(folder, p)}


def _run_checkpoint(client: Any, run: Any) -> Path:
    job_dir = run.data.tags.get("modelyard.job_dir")
    if job_dir:
        state_file = Path(job_dir) / "job.json"
        if state_file.is_file():
            best = json.loads(state_file.read_text()).get("best_checkpoint")
            # Only a checkpoint inside the job folder is trusted as the run's own (a job.json edited to
            # name another file, or a link out of the folder, falls back to the run's artifact).
            if best and Path(best).is_file() and resolves_inside(job_dir, best):
                return Path(best)
            if best:
                logger.warning("best_checkpoint %s in %s is not a file inside the job folder; using the run's "
                               "artifact", best, state_file)
    # The job folder is on another machine (or gone): the run's artifact is the same file.
    return Path(client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", tempfile.mkdtemp()))


def _load_model(train_config: TrainConfig, spec: DataSpec | None, checkpoint: Path) -> LightningModule:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "state_dict" not in state:
        raise ValueError(f"{checkpoint} is not a Lightning checkpoint (no 'state_dict'; keys: {sorted(state)[:8]})")
    model = instantiate_model(train_config.model, spec)
    model.load_state_dict(state["state_dict"])
    return model.eval()
