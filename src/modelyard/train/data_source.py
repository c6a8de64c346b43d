"""Where a job's data comes from: a dataset snapshot or any ``LightningDataModule``.

``data`` in a training config is either the built-in snapshot datamodule (``snapshot: fraud``) or,
the LightningCLI way, ``class_path`` + ``init_args`` of any ``LightningDataModule``. Either way a
:class:`DataSource` gives the rest of the job what it needs without caring which: the datamodule
Lightning fits on, the dataset's identity for lineage, sample batches for the signature, the parity
gate and the reference profile, and the files that travel with the model version.

Hooks a datamodule may define (all optional, looked up by name):

- ``dataset_digest() -> str``: a content digest of the data (recorded as ``modelyard.data_digest``;
  without it the run records the class and its init args only).
- ``artifacts() -> dict[str, Path]``: files the model needs beside its weights at serving time (a
  tokenizer); logged with the run and carried into the export and the model version.
- ``classes`` (list of class names) or ``num_classes``: named in the model card and used by the
  reference profile.
- ``profile_dataloader()``: batches of the traffic the model will serve, held out from training,
  when that differs from the validation split (a retrained model whose training data mixes older
  data in): the reference profile's predictions come from them instead of the val loader. ``None``:
  none this time (the val loader then).

Batches follow the convention of :mod:`modelyard.models.batch`; ``data.batch_adapter`` names a
function (``package.module.function``) that turns any other layout into ``(inputs, target)``.

``init_args`` hold plain values (what YAML, the logged ``config.yaml`` and the copy of the config
each Ray worker receives can carry): an argument annotated with a dataclass (``drift: TextDrift |
None``) is given as a mapping of its fields and built into that dataclass before the datamodule is
instantiated; the run records the plain form.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.models.batch import split_batch

__all__ = ["DataSource", "import_callable", "import_class", "open_data_source"]


def import_callable(path: str, what: str) -> Callable[..., Any]:
    """The object at ``package.module.name``, or ``ValueError`` naming ``what`` and the fix."""
    module_name, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{what} {path!r} cannot be imported ({err}); expected 'package.module.name' on the "
                         "Python path") from None
    if not callable(obj):
        raise ValueError(f"{what} {path!r} is a {type(obj).__name__}, not a class or function")
    return obj


def import_class(path: str, base: type, what: str) -> type:
    """:func:`import_callable`, checked to be a subclass of ``base``."""
    cls = import_callable(path, what)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ValueError(f"{what} {path!r} is not a {base.__name__} subclass")
    return cls


def _init_problems(cls: type, init_args: Mapping[str, Any], what: str) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    valid = [p for p in params if p != "self"]
    return [f"{what} {cls.__name__} has no argument {k!r}; its arguments: {', '.join(valid)}"
            for k in init_args if k not in valid]


def _dataclass_of(hint: Any) -> type | None:
    """The one dataclass an annotation names (``D``, ``D | None``, ``Optional[D]``), else None."""
    if inspect.isclass(hint) and dataclasses.is_dataclass(hint):
        return hint
    found = [a for a in typing.get_args(hint) if inspect.isclass(a) and dataclasses.is_dataclass(a)]
    return found[0] if len(found) == 1 else None


def _typed_init_args(cls: type, init_args: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``init_args`` with every mapping given for a dataclass-annotated parameter of ``cls.__init__``
    built into that dataclass; ``ValueError`` names the argument when its fields do not fit."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - annotations that do not resolve: the arguments go as given
        return dict(init_args)
    args = dict(init_args)
    for name, value in init_args.items():
        target = _dataclass_of(hints.get(name))
        if target is None or not isinstance(value, Mapping):
            continue
        try:
            args[name] = target(**value)
        except (TypeError, ValueError) as err:
            fields = ", ".join(f.name for f in dataclasses.fields(target))
            raise ValueError(f"{what} {cls.__name__}: init_args.{name} is not a {target.__name__} ({err}); "
                             f"its fields: {fields}") from None
    return args


def _plain(value: Any) -> Any:
    """A dataclass argument as the mapping of its fields (what the run records and workers receive)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


@dataclass
class DataSource:
    """A datamodule plus what the job records about it (see the module docstring)."""

    datamodule: Any  # a LightningDataModule
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    batch_adapter: Callable[[Any], tuple[Any, Any]] | None = None
    snapshot: Any = None  # modelyard.data.Snapshot for the built-in datamodule
    spec: Any = None  # modelyard.models.DataSpec for the built-in datamodule
    _ready: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_class_path(cls, class_path: str, init_args: Mapping[str, Any] | None = None,
                        batch_adapter: str | None = None) -> DataSource:
        """Instantiate ``class_path(**init_args)`` (mappings for dataclass-annotated arguments built into
        their dataclass); ``ValueError`` names a wrong path or argument."""
        from lightning import LightningDataModule

        datamodule_cls = import_class(class_path, LightningDataModule, "data.class_path")
        args = {k: _plain(v) for k, v in dict(init_args or {}).items()}
        problems = _init_problems(datamodule_cls, args, "data.class_path")
        if problems:
            raise ValueError("; ".join(problems))
        adapter = import_callable(batch_adapter, "data.batch_adapter") if batch_adapter else None
        datamodule = datamodule_cls(**_typed_init_args(datamodule_cls, args, "data.class_path"))
        return cls(datamodule, class_path, args, adapter)

    @property
    def is_snapshot(self) -> bool:
        return self.snapshot is not None

    @property
    def name(self) -> str:
        """The dataset's name: the snapshot's, else the datamodule's ``name`` attribute or class name."""
        if self.snapshot is not None:
            return self.snapshot.name
        explicit = getattr(self.datamodule, "name", None)
        if isinstance(explicit, str) and explicit:
            return explicit
        return type(self.datamodule).__name__.removesuffix("DataModule").lower() or "data"

    def setup(self) -> None:
        """``prepare_data`` and ``setup("fit")`` once in this process (idempotent for well-behaved
        datamodules, and Lightning calls ``setup`` again in each training process)."""
        if not self._ready:
            self.datamodule.prepare_data()
            self.datamodule.setup("fit")
            self._ready = True

    def digest(self) -> str:
        """The snapshot digest or the datamodule's ``dataset_digest()``; ``""`` when it has none."""
        if self.snapshot is not None:
            return self.snapshot.digest
        hook = getattr(self.datamodule, "dataset_digest", None)
        if not callable(hook):
            return ""
        self.setup()
        return str(hook())

    def artifacts(self) -> dict[str, Path]:
        """Files the model version carries (``artifacts()`` hook; none for a snapshot)."""
        hook = getattr(self.datamodule, "artifacts", None)
        if not callable(hook):
            return {}
        self.setup()
        files = {str(k): Path(v) for k, v in dict(hook()).items()}
        missing = [f"{k} -> {v}" for k, v in files.items() if not v.is_file()]
        if missing:
            raise ValueError(f"{self.class_path}.artifacts() names files that do not exist: {', '.join(missing)}")
        return files

    def classes(self) -> list[str] | None:
        if self.spec is not None:
            return list(self.spec.classes)
        named = getattr(self.datamodule, "classes", None)
        if named:
            return [str(c) for c in named]
        count = getattr(self.datamodule, "num_classes", None)
        return [str(i) for i in range(count)] if isinstance(count, int) else None

    @property
    def reference_split(self) -> str:
        """Where the reference profile's predictions come from: ``profile`` (the datamodule's
        ``profile_dataloader()``, unless it returns ``None``) or ``val``."""
        hook = getattr(self.datamodule, "profile_dataloader", None)
        if not callable(hook):
            return "val"
        self.setup()
        return "val" if hook() is None else "profile"

    def reference_description(self) -> str:
        """One line naming the data the reference profile describes (recorded with the run)."""
        describe = getattr(self.datamodule, "reference_description", None)
        if self.snapshot is not None and callable(describe):
            return str(describe())
        if self.reference_split == "profile":
            return f"predictions on {type(self.datamodule).__name__}.profile_dataloader()"
        return "the training data: predictions on its validation split"

    def describe(self) -> dict[str, Any]:
        """What the run records about the data: class, init args, digest, name."""
        return {"class_path": self.class_path, "init_args": self.init_args, "digest": self.digest(),
                "name": self.name}

    def samples(self, split: str = "val", max_batches: int = 8) -> list[tuple[Any, Any]]:
        """Up to ``max_batches`` batches of ``split`` (``train``, ``val``, ``test`` or ``profile``, the
        ``profile_dataloader()`` hook) as ``(inputs, target)``."""
        self.setup()
        if split != "train" and hasattr(self.datamodule, "setup"):
            self.datamodule.setup("test" if split == "test" else "validate")
        loader = {"train": self.datamodule.train_dataloader, "val": self.datamodule.val_dataloader,
                  "test": self.datamodule.test_dataloader,
                  "profile": getattr(self.datamodule, "profile_dataloader", None)}[split]()
        out = []
        for batch in loader:
            out.append(split_batch(batch, self.batch_adapter))
            if len(out) >= max_batches:
                break
        if not out:
            raise ValueError(f"{self.class_path}: the {split} loader gave no batches; export and the reference "
                             f"profile need {split} data")
        return out


def open_data_source(data: Any, seed: int) -> DataSource:
    """The :class:`DataSource` a training config's ``data`` section names (a
    :class:`~modelyard.train.config.DataModuleConfig`): its ``class_path``, else the snapshot
    datamodule over ``data.snapshot`` with the data spec fitted on its training split."""
    if data.class_path:
        return DataSource.from_class_path(data.class_path, data.init_args, data.batch_adapter)
    from modelyard.train.datamodule import SnapshotDataModule

    datamodule = SnapshotDataModule(**data.snapshot_args(), seed=seed)
    spec = datamodule.prepare()
    return DataSource(datamodule, f"{SnapshotDataModule.__module__}.{SnapshotDataModule.__name__}",
                      data.snapshot_args(), snapshot=datamodule.snapshot, spec=spec)
