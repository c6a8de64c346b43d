"""Command-line/YAML configuration shared by every stage.

Stages declare their options as dataclasses (and, for training, Lightning's own signatures) and
parse them with jsonargparse, so a YAML file and ``--section.key value`` overrides use the same key
paths (LightningCLI style). jsonargparse stops at the first unknown key; :func:`parse_args` first
checks every key given in config files and on the command line and reports all unknown ones at once,
each with the nearest valid keys.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

__all__ = ["ConfigError", "dataclass_parser", "flatten", "parse_args", "parse_dataclass_args", "suggest"]


class ConfigError(ValueError):
    """A configuration problem; the message lists every problem found."""

    def __init__(self, problems: Sequence[str], source: str = "configuration") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the {source}:\n{lines}")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; a ``class_path``/``init_args`` mapping stays one level."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def suggest(key: str, valid: Iterable[str], n: int = 3) -> str:
    """`` (did you mean 'x', 'y'?)`` or the valid keys of the same section, for an error message."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(key, valid, n=n, cutoff=0.6)
    if close:
        return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"
    section = key.rpartition(".")[0]
    siblings = [v for v in valid if v.rpartition(".")[0] == section]
    if siblings:
        shown = ", ".join(s.rpartition(".")[2] for s in siblings[:25])
        return f" (valid keys under {section or 'the top level'!r}: {shown})"
    return ""


def _given_keys(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(key, where) for every key set by ``--config`` files and ``--key value`` overrides."""
    keys: list[tuple[str, str]] = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if not arg.startswith("--"):
            continue
        name, _, inline = arg[2:].partition("=")
        if name == "config":
            path = inline or (argv[i + 1] if i + 1 < len(argv) else "")
            if path and Path(path).is_file():
                loaded = yaml.safe_load(Path(path).read_text()) or {}
                if isinstance(loaded, dict):
                    keys += [(k, path) for k in flatten(_without_subclass_args(loaded))]
            continue
        if name not in ("help", "print_config"):
            keys.append((name.replace("-", "_"), "command line"))
    return keys


def _without_subclass_args(data: dict[str, Any]) -> dict[str, Any]:
    # init_args of a class_path are checked against that class's signature, not the parser's keys.
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and "class_path" in value:
            out[key] = {"class_path": value["class_path"]}
        elif isinstance(value, dict):
            out[key] = _without_subclass_args(value)
        else:
            out[key] = value
    return out


def _valid_keys(parser: ArgumentParser) -> set[str]:
    keys: set[str] = set()
    for action in parser._actions:  # jsonargparse keeps one action per leaf key and group
        dest = getattr(action, "dest", None)
        if dest and dest != "help" and not dest.endswith(".help"):
            keys.add(dest)
            parts = dest.split(".")
            keys.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return keys


def _init_args_problems(class_path: str, init_args: dict[str, Any], section: str) -> list[str]:
    from jsonargparse._util import import_object  # the same resolution jsonargparse applies

    try:
        cls = import_object(class_path)
    except Exception:  # noqa: BLE001 - jsonargparse reports the import failure itself
        return []
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    valid = [f"{section}.init_args.{p}" for p in params if p not in ("self", "data_spec")]
    return [
        f"unknown key '{section}.init_args.{k}' for {class_path}{suggest(f'{section}.init_args.{k}', valid)}"
        for k in init_args
        if f"{section}.init_args.{k}" not in valid
    ]


def check_keys(parser: ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Every unknown key in ``argv`` and its config files, with suggestions."""
    valid = _valid_keys(parser)
    leaves = {v for v in valid if not any(w.startswith(f"{v}.") for w in valid)}
    problems = []
    for key, where in _given_keys(argv):
        if key in valid or (key.endswith(".class_path") and key.rpartition(".")[0] in valid):
            continue
        if any(key.startswith(f"{leaf}.") for leaf in leaves):
            continue  # inside a dict-valued option such as drift.shift
        if any(key.startswith(f"{v}.init_args.") for v in valid):
            continue  # overrides such as --model.init_args.lr: checked below
        problems.append(f"unknown key '{key}' in {where}{suggest(key, valid)}")
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv) and Path(argv[i + 1]).is_file():
            loaded = yaml.safe_load(Path(argv[i + 1]).read_text()) or {}
            for section, value in loaded.items() if isinstance(loaded, dict) else []:
                if isinstance(value, dict) and "class_path" in value:
                    problems += _init_args_problems(value["class_path"], value.get("init_args") or {}, section)
        elif arg == "--config" and i + 1 < len(argv):
            problems.append(f"config file {argv[i + 1]!r} does not exist")
    return problems


def parse_args(parser: ArgumentParser, argv: Sequence[str], source: str) -> Namespace:
    """Parse ``argv`` with ``parser``; raise :class:`ConfigError` listing every problem.

    ``parser`` must be built with ``exit_on_error=False``.
    """
    from jsonargparse import ArgumentError

    problems = check_keys(parser, argv)
    if problems:
        raise ConfigError(problems, source)
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as err:
        raise ConfigError([str(err).strip()], source) from None


def dataclass_parser(cls: type, prog: str, description: str) -> ArgumentParser:
    """A stage parser whose options are the fields of dataclass ``cls`` at the top level, plus
    ``--config`` (repeatable YAML files); errors are raised, not printed and exited on."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable).")
    parser.add_class_arguments(cls, None)
    return parser


def parse_dataclass_args(parser: ArgumentParser, argv: Sequence[str], source: str) -> dict[str, Any]:
    """:func:`parse_args`, as a plain dict of the dataclass fields (``config`` removed)."""
    values = parse_args(parser, argv, source).as_dict()
    values.pop("config", None)
    return values
