"""Typed configuration of ``modelyard train`` and the parser that builds it.

The YAML layout follows LightningCLI: ``model`` is ``class_path`` + ``init_args`` (any
LightningModule), ``trainer`` takes the keyword arguments of ``lightning.Trainer`` (validated against
its signature), and every key can be overridden on the command line by its path
(``--trainer.devices 2 --trainer.strategy ddp``). :func:`parse_train_config` is
:func:`modelyard.config.parse_config` with that richer parser; :class:`TrainConfig` holds every
value to its declared type when it is built.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

import docstring_parser
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveInt

from modelyard.config import ConfigError, declared_problems, parse_config

__all__ = ["CheckpointConfig", "DataModuleConfig", "MlflowConfig", "ModelConfig", "ProfileConfig", "TrainConfig",
           "build_parser", "parse_train_config"]

# Trainer arguments modelyard sets itself (from the sections below), so they are not user keys.
_MANAGED_TRAINER_ARGS = {"callbacks", "logger", "plugins", "enable_checkpointing", "default_root_dir"}


@dataclass
class DataModuleConfig:
    """Where the training data comes from: a dataset snapshot, or any ``LightningDataModule``.

    The built-in snapshot datamodule takes ``snapshot`` and the batching keys below. Any other
    datamodule is named the LightningCLI way, ``class_path`` + ``init_args`` (its own arguments,
    batch sizes included); the snapshot keys are then not used. Batches are ``(inputs, target)``
    (see :mod:`modelyard.models.batch`); ``batch_adapter`` names a function that turns another
    layout into that. Hooks a datamodule may offer: :mod:`modelyard.train.data_source`.

    Args:
        snapshot: a ref name written by ``modelyard data`` (e.g. ``transactions``), a digest or
            unique digest prefix, or a snapshot directory.
        store: the data store root.
        batch_size: training batch size per process.
        eval_batch_size: validation/test batch size per process.
        num_workers: DataLoader worker processes per training process.
        class_path: ``package.module.Class`` of a ``LightningDataModule`` instead of a snapshot.
        init_args: keyword arguments of ``class_path``.
        batch_adapter: ``package.module.function`` turning one of its batches into ``(inputs, target)``.
        profile: a snapshot (ref name or digest in ``store``) of the traffic the model will serve, when
            that is not what it trains on: the reference profile the drift monitor compares live
            traffic with describes its rows (input features, label frequencies) and the model's
            predictions on its rows held out from training (its val and test splits; they must not
            be in this snapshot's training split). The retraining loop sets it to the recent window
            of an incident. ``null``: the training snapshot's own train and val splits. Another
            datamodule gives its serving reference by a ``profile_dataloader()`` method instead.
    """

    snapshot: str = "transactions"
    store: str = "data/store"
    batch_size: PositiveInt = 256
    eval_batch_size: PositiveInt = 1024
    num_workers: NonNegativeInt = 0
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    batch_adapter: str | None = None
    profile: str | None = None

    def snapshot_args(self) -> dict[str, Any]:
        """The keyword arguments of the built-in snapshot datamodule."""
        return {"snapshot": self.snapshot, "store": self.store, "batch_size": self.batch_size,
                "eval_batch_size": self.eval_batch_size, "num_workers": self.num_workers, "profile": self.profile}


@dataclass
class CheckpointConfig:
    """Best-checkpoint selection.

    Args:
        monitor: the logged validation metric that ranks checkpoints (``val_loss``, ``val_auroc``,
            ``val_acc`` for the built-in models).
        mode: ``min`` when lower is better, ``max`` when higher is better.
        save_top_k: how many best checkpoints to keep (``last`` is kept as well).
    """

    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    save_top_k: int = 2


@dataclass
class MlflowConfig:
    """Where the run is tracked.

    Args:
        experiment: experiment name; default: the dataset's name.
        tracking_uri: default: ``$MLFLOW_TRACKING_URI``, else the embedded store
            ``sqlite:///mlflow.db`` with artifacts under ``mlartifacts/`` in the working directory.
        run_name: display name of the run; default: the job id.
    """

    experiment: str | None = None
    tracking_uri: str | None = None
    run_name: str | None = None


@dataclass
class ProfileConfig:
    """What the run's reference profile keeps for the drift monitor, beyond features and predictions.

    Args:
        embedding: for a model whose inputs are not table columns (text, images, a user's
            datamodule), the output whose validation values are kept as the reference of the
            monitor's embedding drift tests. ``null``, or an output the model does not have: none.
        embedding_sample: validation rows of it kept at most (a seeded sample).
    """

    embedding: str | None = "embedding"
    embedding_sample: PositiveInt = 2000


@dataclass
class ModelConfig:
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Everything one training job needs; ``asdict`` of it is what gets logged and re-run."""

    model: ModelConfig
    data: DataModuleConfig = field(default_factory=DataModuleConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    seed_everything: int = 42
    output_dir: str = "runs"
    resume: str | None = None
    launcher: Literal["lightning", "ray"] = "lightning"
    num_workers: PositiveInt = 2

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if not self.data.class_path and (self.data.init_args or self.data.batch_adapter):
            problems.append("data.init_args and data.batch_adapter belong to a data.class_path (a "
                            "LightningDataModule); the snapshot datamodule takes data.snapshot, data.batch_size, ...")
        if self.data.class_path and self.data.profile:
            problems.append(f"data.profile ({self.data.profile!r}) names a snapshot for the snapshot datamodule; "
                            f"{self.data.class_path} gives its serving reference by a profile_dataloader() method")
        if problems:
            raise ConfigError(problems, "training configuration")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not (data.get("model") or {}).get("class_path"):
            raise ConfigError(["'model' is required: give model.class_path (e.g. modelyard.models.TabularMLP)"],
                              "training configuration")
        return cls(
            model=ModelConfig(data["model"]["class_path"], dict(data["model"].get("init_args") or {})),
            data=DataModuleConfig(**data.get("data", {})),
            trainer=dict(data.get("trainer", {})),
            checkpoint=CheckpointConfig(**data.get("checkpoint", {})),
            mlflow=MlflowConfig(**data.get("mlflow", {})),
            profile=ProfileConfig(**(data.get("profile") or {})),
            **{k: data[k] for k in ("seed_everything", "output_dir", "resume", "launcher", "num_workers")
               if k in data},
        )


def build_parser() -> ArgumentParser:
    """The ``modelyard train`` parser: :class:`TrainConfig`'s sections, with ``trainer`` validated
    against ``lightning.Trainer``'s signature and ``model`` as a LightningModule ``class_path``."""
    from lightning import LightningModule, Trainer

    parser = ArgumentParser(
        prog="modelyard train",
        description=(
            "Train a LightningModule on a dataset snapshot or any LightningDataModule (data.class_path), "
            "tracked as one MLflow run. Options come "
            "from --config YAML files and can be overridden by their key path, e.g. "
            "--trainer.devices 2 --trainer.strategy ddp. --output_json PATH also writes the result (run id, "
            "status, best checkpoint) as JSON, for an orchestrator."
        ),
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable).")
    parser.add_argument("--seed_everything", type=int, default=42, help="Seed of every RNG (torch, numpy, random).")
    _add_data_arguments(parser)
    parser.add_subclass_arguments(
        LightningModule, "model", required=True, skip={"data_spec"},
        help="The LightningModule: class_path and init_args. Built-ins: modelyard.models.TabularMLP, "
             "modelyard.models.SmallCNN. A data_spec argument, if present, is filled in by modelyard.",
    )
    parser.add_class_arguments(Trainer, "trainer", skip=_MANAGED_TRAINER_ARGS)
    parser.add_class_arguments(CheckpointConfig, "checkpoint")
    parser.add_class_arguments(MlflowConfig, "mlflow")
    parser.add_class_arguments(ProfileConfig, "profile")
    parser.add_argument("--output_dir", type=str, default="runs",
                        help="Job folders (checkpoints, state) go under OUTPUT_DIR/<experiment>/<job id>.")
    parser.add_argument("--resume", type=str | None, nargs="?", const="latest", default=None,
                        help="Continue an interrupted job from its 'last' checkpoint in the same MLflow run: "
                             "bare --resume takes the latest job of this experiment, or give a job folder.")
    parser.add_argument("--launcher", type=Literal["lightning", "ray"], default="lightning",
                        help="lightning: processes started by Lightning (trainer.devices/strategy) or by "
                             "torchrun/SLURM. ray: Ray Train workers on the cluster at $RAY_ADDRESS "
                             "(a local Ray instance when unset).")
    parser.add_argument("--num-workers", "--num_workers", dest="num_workers", type=PositiveInt, default=2,
                        help="Ray Train workers (with --launcher ray).")
    return parser


def _add_data_arguments(parser: ArgumentParser) -> None:
    """:class:`DataModuleConfig`'s fields as ``--data.<field>`` options, one by one.

    A group built from the dataclass (``add_class_arguments``) would read ``class_path`` under
    ``data`` as a subclass of ``DataModuleConfig`` and refuse a LightningDataModule; here it names
    any datamodule, the LightningCLI way, and ``--data.init_args.KEY VALUE`` overrides one argument.
    """
    hints = get_type_hints(DataModuleConfig)
    helps = {p.arg_name: p.description for p in docstring_parser.parse(DataModuleConfig.__doc__ or "").params}
    for f in fields(DataModuleConfig):
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        parser.add_argument(f"--data.{f.name}", type=hints[f.name], default=default, help=helps.get(f.name))


def parse_train_config(argv: Sequence[str]) -> TrainConfig:
    """Parse ``modelyard train`` arguments (:func:`modelyard.config.parse_config` on
    :func:`build_parser`, ``data.init_args`` layered by :func:`layer_data_init_args`); raises
    :class:`modelyard.config.ConfigError`."""
    return parse_config(TrainConfig, layer_data_init_args(argv), parser=build_parser(),
                        source="training configuration")


def layer_data_init_args(argv: Sequence[str]) -> list[str]:
    """``argv`` where a ``--config`` file's ``data.init_args`` update those set before it, as
    ``model.init_args`` do (LightningCLI's layering), instead of replacing them.

    ``data.init_args`` is a plain mapping option (see :func:`_add_data_arguments`), which a later
    file would replace whole: ``text-large.yaml`` layered on ``text-topics.yaml`` would lose every
    argument it does not repeat. After such a file the merged arguments are set again
    (``--data.init_args JSON``). A file or option that names another ``data.class_path`` starts
    from no arguments but its own. ``--data.init_args.KEY VALUE`` options are merged by the parser;
    they are followed here so that a file after them keeps them.
    """
    out: list[str] = []
    class_path: str | None = None
    merged: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        has_next = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        value = inline if eq else (argv[i + 1] if has_next else None)
        out += argv[i:i + (2 if has_next else 1)]
        i += 2 if has_next else 1
        if name == "config" and value and Path(value).is_file():
            loaded = yaml.safe_load(Path(value).read_text())
            data = loaded.get("data") if isinstance(loaded, dict) else None
            if not isinstance(data, dict):
                continue
            given = data.get("init_args") if isinstance(data.get("init_args"), dict) else None
            if data.get("class_path") and data["class_path"] != class_path:
                if class_path is not None and merged and given is None:
                    out += ["--data.init_args", "{}"]  # the previous class's arguments are not this one's
                class_path, merged = data["class_path"], dict(given or {})
            elif given is not None:
                if set(merged) - set(given):
                    out += ["--data.init_args", json.dumps(merged | given)]
                merged |= given
        elif name == "data.class_path" and value is not None and value != class_path:
            if class_path is not None and merged:
                out += ["--data.init_args", "{}"]
            class_path, merged = value, {}
        elif name == "data.init_args" and value is not None:
            parsed = yaml.safe_load(value)
            merged = dict(parsed) if isinstance(parsed, dict) else {}
        elif name.startswith("data.init_args.") and value is not None:
            # as the parser reads it: one level of nesting, ``KEY.SUB VALUE`` sets ``KEY`` to ``{SUB: VALUE}``
            key, _, sub = name.removeprefix("data.init_args.").partition(".")
            merged[key] = {sub: yaml.safe_load(value)} if sub else yaml.safe_load(value)
    return out
