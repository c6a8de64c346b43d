"""Check a Triton model repository offline, without a server (``modelyard triton validate``).

What Triton itself would refuse at load time is found here, in CI: configs that do not parse as
Triton's ``ModelConfig``, inputs/outputs that disagree with the ONNX graph, batching a model
without a dynamic batch dim, missing versions or warmup files, ONNX external data that
points outside its version folder (a path-traversal hazard on a shared model store), and TensorRT
optimisation profiles that do not fit the graph or the bounds of the version's ``signature.json``
(:func:`~modelyard.serve.triton.profiles.check_profiles`).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING

from modelyard import safety
from modelyard.serve.triton.config import TritonConfigError, read_config
from modelyard.serve.triton.onnx_io import ITEMSIZE, external_tensors, graph_io, read_model
from modelyard.serve.triton.profiles import check_profiles
from modelyard.serve.triton.repository import MODEL_FILENAME, NAME_RULE, existing_versions, name_problem
from modelyard.signature import SIGNATURE_FILE, Signature, SignatureError, TensorSig

if TYPE_CHECKING:
    import onnx
    from tritonclient.grpc import model_config_pb2

__all__ = ["RepoProblem", "main", "validate_model", "validate_repository"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepoProblem:
    """One thing Triton would refuse (or misbehave on) in model ``model``."""

    model: str
    field: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.model}: {self.field}: expected {self.expected}, found {self.found}"


Report = Callable[[str, object, object], None]


def _escapes(root: Path, relative: str) -> bool:
    """Whether ``root / relative`` (a name read from the disk) resolves outside ``root`` through a symlink."""
    return not safety.resolves_inside(root, root / relative)


def _check_config(config: model_config_pb2.ModelConfig, model_dir: Path, report: Report) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    if config.name != model_dir.name:
        report("name", repr(model_dir.name) + " (the folder name)", repr(config.name))
    if not (config.backend == "onnxruntime" or (config.platform == "onnxruntime_onnx" and not config.backend)):
        report("backend", "backend 'onnxruntime' or platform 'onnxruntime_onnx'",
               f"backend {config.backend!r}, platform {config.platform!r}")
    if too_big := [s for s in config.dynamic_batching.preferred_batch_size if s > config.max_batch_size]:
        report("dynamic_batching.preferred_batch_size", f"sizes <= max_batch_size {config.max_batch_size}", too_big)
    for warmup in config.model_warmup:
        batch = max(warmup.batch_size, 1)
        for name, entry in sorted(warmup.inputs.items()):
            where, file = f"model_warmup {warmup.name}.{name}", entry.input_data_file
            dims, dtype = list(entry.dims), pb.DataType.Name(entry.data_type)
            if any(d < 0 for d in dims):
                report(f"{where}.dims", "concrete dims (Triton allocates the warmup tensor)", dims)
            path = model_dir / "warmup" / file
            if file and safety.name_problem(file):  # it must not escape warmup/
                report(f"{where}.input_data_file", "a plain file name inside warmup/",
                       f"{file!r} ({safety.name_problem(file)})")
            elif file and _escapes(model_dir, f"warmup/{file}"):
                report(f"{where}.input_data_file", "a file inside warmup/", f"{file!r} (a link pointing outside "
                       "the model folder)")
            elif file and not path.is_file():
                report(f"{where}.input_data_file", f"file warmup/{file}", "missing")
            elif file and ITEMSIZE.get(dtype) and all(d >= 0 for d in dims):
                want = math.prod(dims) * ITEMSIZE[dtype] * batch
                if path.stat().st_size != want:
                    report(f"{where}.input_data_file", f"{want} bytes (batch {batch} x dims {dims} x "
                           f"{ITEMSIZE[dtype]}-byte {dtype})", f"{path.stat().st_size} bytes in warmup/{file}")


def _location_problem(location: str) -> str | None:
    """Why an external-data ``location`` may not be followed, judged as a string (no disk access)."""
    if not location:
        return "no location"
    if location.startswith(("/", "\\")) or PureWindowsPath(location).drive or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:",
                                                                                        location):
        return "an absolute path"
    if ".." in location.replace("\\", "/").split("/"):
        return "'..'"
    try:
        safety.check_relative(location, "external data location")
    except safety.UnsafeNameError as err:
        return f"not a plain relative path: {str(err).split(' is refused: ', 1)[-1].split('; expected')[0]}"
    return None


def _check_external(model: onnx.ModelProto, version_dir: Path, where: str, report: Report) -> bool:
    ok = True
    for tensor, location in external_tensors(model):
        # The string is judged first; only a plain relative location is resolved (symlinks followed)
        # and must land inside the version folder, so nothing outside it is ever opened.
        bad = _location_problem(location)
        if bad is None:
            try:
                target = safety.contained(version_dir, location, "external data location")
                bad = None if target.is_file() else "a missing file"
            except safety.PathEscapeError:
                bad = "a link pointing outside the version folder"
        if bad:
            ok = False
            report(f"{where}: external data of tensor {tensor}",
                   "a relative path to a file inside the version folder", f"{location!r} ({bad})")
    return ok


def _check_io(config: model_config_pb2.ModelConfig, graph: tuple[list[TensorSig], list[TensorSig]],
              where: str, report: Report) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    for kind, specs, entries in (("input", graph[0], config.input), ("output", graph[1], config.output)):
        ours, declared = {s.name: s for s in specs}, {e.name: e for e in entries}
        for name in sorted(ours.keys() - declared.keys()):
            report(f"{kind} {name}", f"declared in config.pbtxt ({where} has it)", "missing")
        for name in sorted(declared.keys() - ours.keys()):
            report(f"{kind} {name}", f"one of the {kind}s of {where}: {sorted(ours)}", "not in the graph")
        for name in sorted(ours.keys() & declared.keys()):
            spec, entry = ours[name], declared[name]
            if pb.DataType.Name(entry.data_type) != spec.triton_type:
                report(f"{kind} {name}.data_type", f"{spec.triton_type} (from {where})",
                       pb.DataType.Name(entry.data_type))
            dims = spec.kserve_shape()
            if config.max_batch_size > 0:
                if not dims or dims[0] >= 0:
                    report(f"{kind} {name}.batch dim", f"a dynamic first dim in {where} since max_batch_size="
                           f"{config.max_batch_size} (re-export with a dynamic batch dim)", f"shape {dims}")
                    continue
                dims = dims[1:]
            found = list(entry.dims)
            if len(found) != len(dims) or any(g >= 0 and g != c for g, c in zip(dims, found)):
                report(f"{kind} {name}.dims", f"{dims} as in {where} (batch dim excluded, -1 = any)", found)


def _signature(model_dir: Path, version: int, report: Report) -> Signature | None:
    """The ``signature.json`` of a version, None when it has none (or it cannot be read: reported)."""
    path = model_dir / str(version) / SIGNATURE_FILE
    if path.is_symlink() and _escapes(model_dir, f"{version}/{SIGNATURE_FILE}"):  # judged before it is opened
        report(f"{version}/{SIGNATURE_FILE}", "a file inside the version folder", "a link pointing outside it")
        return None
    if not path.is_file():
        return None
    try:
        return Signature.from_json(path.read_text())
    except (ValueError, SignatureError) as err:
        report(f"{version}/{SIGNATURE_FILE}", "a modelyard Signature in JSON", str(err).splitlines()[0])
        return None


def _loaded(config: model_config_pb2.ModelConfig | None, versions: list[int]) -> list[int]:
    """The versions Triton loads under the config's version_policy (default: the latest one)."""
    choice = config.version_policy.WhichOneof("policy_choice") if config is not None else None
    if choice in ("all", "specific"):
        return versions if choice == "all" else [v for v in versions if v in config.version_policy.specific.versions]
    count = config.version_policy.latest.num_versions if choice == "latest" else 1
    return versions[-count:] if count > 0 else []


def validate_model(model_dir: Path) -> list[RepoProblem]:
    """Every problem of one model folder (see the module docstring); [] when Triton can load it."""
    import onnx

    problems: list[RepoProblem] = []

    def report(field: str, expected: object, found: object) -> None:
        problems.append(RepoProblem(model_dir.name, field, str(expected), str(found)))

    if rule := name_problem(model_dir.name):
        report("model name", NAME_RULE, f"{model_dir.name!r} ({rule})")
    if _escapes(model_dir.parent, model_dir.name):
        report("model folder", "a folder inside the repository",
               f"a link to {model_dir.resolve()} (outside {model_dir.parent.resolve()}); nothing in it was read")
        return problems
    config = None
    try:
        if _escapes(model_dir, "config.pbtxt"):
            raise TritonConfigError(f"config.pbtxt is a link to {(model_dir / 'config.pbtxt').resolve()}, outside "
                                    "the model folder; it was not read")
        config = read_config(model_dir / "config.pbtxt")
        _check_config(config, model_dir, report)
    except TritonConfigError as err:
        exists = (model_dir / "config.pbtxt").is_file()
        report("config.pbtxt", "a Triton ModelConfig in protobuf text format" if exists
               else "a config.pbtxt file", str(err) if exists else "missing")
    filename = (config.default_model_filename if config is not None else "") or MODEL_FILENAME
    versions = existing_versions(model_dir)
    if not versions:
        others = sorted(p.name for p in model_dir.iterdir() if p.is_dir() and p.name[0] != "." and p.name != "warmup")
        report("versions", "at least one version folder named 1, 2, ...", others or "none")
    loaded = _loaded(config, versions)
    for version in versions:
        path = model_dir / str(version) / filename
        where = f"{version}/{filename}"
        if safety.name_problem(filename):
            report("default_model_filename", "a plain file name", f"{filename!r} ({safety.name_problem(filename)})")
            break
        if _escapes(model_dir, str(version)) or _escapes(model_dir, f"{version}/{filename}"):
            report(f"version {version}", "a version folder and model file inside the model folder",
                   f"a link to {path.resolve()} (outside {model_dir.resolve()}); it was not read")
            continue
        if not path.is_file():
            report(f"version {version}", f"model file {filename}", "missing")
            continue
        try:
            model = read_model(path)
            if not _check_external(model, path.parent, where, report):
                continue  # the checker would follow the bad location
            onnx.checker.check_model(str(path))
            graph = graph_io(model, where)
        except Exception as err:  # noqa: BLE001 - any load/check failure is this version's problem
            report(where, "an ONNX model that loads and passes onnx.checker", str(err).strip().splitlines()[0])
            continue
        if config is not None and version in loaded:
            _check_io(config, graph, where, report)
            check_profiles(config, graph[0], _signature(model_dir, version, report), where, report)
    return problems


def _model_dirs(repo: Path) -> Iterator[Path]:
    return (p for p in sorted(repo.iterdir()) if p.is_dir() and not p.name.startswith("."))


def validate_repository(repo: str | Path) -> list[RepoProblem]:
    """Problems of every model folder in ``repo``; top-level files and dot-folders are ignored.

    Raises:
        FileNotFoundError: ``repo`` is not a folder.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise FileNotFoundError(f"Triton model repository {repo} is not a folder; pass the repository path")
    problems = [problem for model_dir in _model_dirs(repo) for problem in validate_model(model_dir)]
    logger.debug("validated Triton repository %s: %d problem(s)", repo, len(problems))
    return problems


def _summary(model_dir: Path) -> str:
    from tritonclient.grpc import model_config_pb2 as pb

    config = read_config(model_dir / "config.pbtxt")
    batch = [-1] if config.max_batch_size > 0 else []
    inputs, outputs = ([f"{e.name}[{','.join(map(str, batch + list(e.dims)))}] "
                        f"{pb.DataType.Name(e.data_type).removeprefix('TYPE_')}" for e in entries]
                       for entries in (config.input, config.output))
    versions = ",".join(map(str, existing_versions(model_dir)))
    return f"{model_dir.name}  versions {versions}  inputs {', '.join(inputs)} -> {', '.join(outputs)}"


def main(argv: Sequence[str]) -> int:
    """``modelyard triton validate [REPO]``: 0 when clean, 1 with problems, 2 without the folder."""
    parser = argparse.ArgumentParser(
        prog="modelyard triton validate",
        description="Check a Triton model repository offline, without a server: each config.pbtxt parses as "
                    "Triton's ModelConfig and agrees with its ONNX graphs (names, dtypes, dims, batch dim), versions "
                    "and warmup files exist, external data stays in its version folder, TensorRT optimisation "
                    "profiles fit the graph and the bounds of signature.json. Exit status: 0 clean, "
                    "1 problems found, 2 no such folder.")
    parser.add_argument("repo", nargs="?", default="triton_models",
                        help="model repository folder (default: triton_models)")
    repo = Path(parser.parse_args(list(argv)).repo)
    if not repo.is_dir():
        print(f"modelyard triton validate: {repo} is not a folder; pass the Triton model repository path")
        return 2
    total, count = 0, 0
    for model_dir in _model_dirs(repo):
        problems, count = validate_model(model_dir), count + 1
        total += len(problems)
        print(f"ok  {_summary(model_dir)}" if not problems else f"FAIL  {model_dir.name}  {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
    print(f"{repo}: {count} model(s), {total} problem(s)")
    return 1 if total else 0
