"""Command-line/YAML configuration shared by every stage.

A stage declares its options as a dataclass whose field types carry their constraints
(jsonargparse's restricted types such as ``PositiveInt`` and ``ClosedUnitInterval``, ``Literal``
choices) and whose ``__post_init__`` holds only the rules that involve several fields.
:func:`parse_config` reads ``--config`` YAML files plus ``--key.path value`` overrides
(LightningCLI style) into such a dataclass; :func:`load_config` reads one YAML file plus keyword
overrides. Both report every problem at once as a :class:`ConfigError`: unknown keys with the nearest
valid ones, then every value that breaks its declared type.

A dataclass built directly in Python checks itself the same way: its ``__post_init__`` calls
:func:`declared_problems`, which holds every field to its declared type, before its own rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, DefaultHelpFormatter, Namespace
from jsonargparse.typing import import_object, restricted_number_type

__all__ = ["Confidence", "ConfigError", "Port", "SeedInt", "config_parser", "declared_problems", "flatten",
           "group_parser", "load_config", "parse_config", "pick_action", "suggest"]

T = TypeVar("T")

# Restricted types used by several stages, beside jsonargparse's own (PositiveInt, ClosedUnitInterval ...).
Port = restricted_number_type("Port", int, [(">=", 0), ("<=", 65535)],
                              docstring="int restricted to be ≥0 and ≤65535")
SeedInt = restricted_number_type("SeedInt", int, [(">=", 0), ("<", 2**32)],
                                 docstring="int restricted to be ≥0 and <2**32")
Confidence = restricted_number_type("Confidence", float, [(">=", 0.5), ("<", 1)],
                                    docstring="float restricted to be ≥0.5 and <1")


class ConfigError(ValueError):
    """A configuration problem; the message lists every problem found."""

    def __init__(self, problems: Sequence[str], source: str = "configuration") -> None:
        self.problems = list(problems)
        self.source = source
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


# --- declared constraints --------------------------------------------------------------------------

_BASE_NAMES = {"int": "an integer", "float": "a number", "str": "a string"}


def _expected(hint: Any) -> str:
    """What a value of type ``hint`` must be, in words: ``a number ≥0 and ≤1``, ``one of 'a', 'b'``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = " or ".join(_expected(a) for a in args if a is not type(None))
        return f"{others} or null" if type(None) in args else others
    restricted_type = isinstance(hint, type) and hint not in (int, float, str) and issubclass(hint, (int, float, str))
    if restricted_type and hint.__doc__:
        base, restricted, rule = hint.__doc__.partition(" restricted to be ")  # jsonargparse's restricted types
        return f"{_BASE_NAMES[base]} {rule}" if restricted and base in _BASE_NAMES else hint.__doc__
    return _BASE_NAMES.get(getattr(hint, "__name__", ""), str(hint).replace("typing.", ""))


@functools.cache
def _checker(hint: Any) -> ArgumentParser:
    # One option of type ``hint``: jsonargparse's own validation of a single value.
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=hint)
    return parser


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(value: Any) -> Any:
    # jsonargparse returns instances of the restricted types (PositiveInt(3)); YAML, JSON and MLflow
    # want the plain int/float/str.
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return value if type(value) is base else base(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. export's tolerances
        for f in dataclasses.fields(value):
            object.__setattr__(value, f.name, _plain(getattr(value, f.name)))
    return value


def _value_problem(key: str, hint: Any, value: Any, *, from_text: bool = False) -> str | None:
    """``None`` when ``value`` conforms to ``hint``, else ``"KEY must be EXPECTED, got VALUE"``."""
    try:
        if from_text:
            _checker(hint).parse_args(["--value", value])
        else:
            _checker(hint).parse_object({"value": value})
    except ArgumentError as err:
        if from_text:  # shown as the YAML value jsonargparse read: 2, not '2'
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        problem = f"{key} must be {_expected(hint)}, got {value!r}"
        if dataclasses.is_dataclass(_innermost(hint)):  # name the field inside, in jsonargparse's words
            problem += ": " + " ".join(line.strip() for line in str(err).strip().splitlines()[-2:])
        return problem
    return None


def _innermost(hint: Any) -> Any:
    """The last type argument of ``dict[str, X]``/``list[X]``/``X | None``, recursively: ``X``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _innermost(args[-1]) if args else hint


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def declared_problems(obj: Any, prefix: str = "") -> list[str]:
    """Every field of dataclass ``obj`` (nested dataclasses included, their keys prefixed) whose value
    does not conform to its declared type, each as ``"KEY must be EXPECTED, got VALUE"``.

    Conforming values of restricted types are stored back as plain ``int``/``float``/``str``. Meant
    for ``__post_init__``, so a configuration built in Python is held to the same types as a parsed one.
    """
    problems = []
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            problems += declared_problems(value, f"{prefix}{f.name}.")
            continue
        if value != _default(f) and (problem := _value_problem(f"{prefix}{f.name}", hints[f.name], value)):
            problems.append(problem)
        else:
            object.__setattr__(obj, f.name, _plain(value))
    return problems


def _field_hint(cls: type, key: str) -> Any:
    """The declared type of dotted ``key`` in dataclass ``cls`` (through nested dataclasses), or None."""
    hint: Any = cls
    for part in key.split("."):
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return None
        hint = _hints(hint).get(part)
    return hint


# --- parsing ---------------------------------------------------------------------------------------

def config_parser(cls: type, prog: str | None = None, description: str | None = None) -> ArgumentParser:
    """The parser of dataclass ``cls``: its fields (nested ones by their key path) plus ``--config``
    (repeatable YAML files); errors are raised, not printed and exited on."""
    parser = ArgumentParser(prog=prog, description=description or inspect.getdoc(cls), exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable).")
    parser.add_class_arguments(cls, None)
    return parser


def _given(argv: Sequence[str]) -> tuple[list[tuple[str, Any, str]], list[str]]:
    """``(key, value, where)`` for every key set by ``--config`` files and ``--key value`` overrides
    (``where`` is the file or ``"command line"``), and the problems of config files that cannot be read."""
    given: list[tuple[str, Any, str]] = []
    problems: list[str] = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, inline = arg[2:].partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None)
        if name == "config":
            if value and Path(value).is_file():
                loaded = yaml.safe_load(Path(value).read_text()) or {}
                if isinstance(loaded, dict):
                    given += [(k, v, value) for k, v in flatten(loaded).items()]
            elif value:
                problems.append(f"config file {value!r} does not exist")
        elif name not in ("help", "print_config"):
            given.append((name.replace("-", "_"), value, "command line"))
    return given, problems


def _valid_keys(parser: ArgumentParser) -> tuple[set[str], set[str]]:
    """(every valid key and key section, the leaf keys) of ``parser``, from its defaults."""
    leaves = set(parser.get_defaults().keys()) - {"config", "__default_config__"}
    valid = set(leaves)
    for key in leaves:
        parts = key.split(".")
        valid.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return valid, leaves


def _init_args_problems(class_path: str, init_args: dict[str, Any], section: str) -> list[str]:
    try:
        cls = import_object(class_path)  # the same resolution jsonargparse applies
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


def _key_problems(parser: ArgumentParser, given: list[tuple[str, Any, str]]) -> list[str]:
    """Every unknown key among ``given``, with suggestions."""
    valid, leaves = _valid_keys(parser)
    problems = []
    # (where, section) -> the class_path and the init_args given there; a later file or the command
    # line may name another class, whose init_args jsonargparse then takes over where they fit.
    class_paths: dict[tuple[str, str], str] = {}
    init_args: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value, where in given:
        section, _, rest = key.partition(".init_args.")
        if rest and section in valid:
            init_args.setdefault((where, section), {})[rest.split(".")[0]] = value
            continue  # checked against the signature of the class named beside them, below
        if key.endswith(".class_path") and key.rpartition(".")[0] in valid:
            class_paths[(where, key.rpartition(".")[0])] = value
            continue
        if key in valid or any(key.startswith(f"{leaf}.") for leaf in leaves):
            continue  # a leaf, or inside a dict-valued option such as drift.shift
        problems.append(f"unknown key '{key}' in {where}{suggest(key, valid)}")
    for (where, section), args in init_args.items():
        if (where, section) in class_paths:
            problems += _init_args_problems(class_paths[(where, section)], args, section)
    return problems


def _value_problems(cls: type, given: list[tuple[str, Any, str]]) -> list[str]:
    """Every given value that breaks the declared type of its key in dataclass ``cls``."""
    problems = []
    for key, value, where in given:
        hint = _field_hint(cls, key)
        if hint is not None and value is not None and not dataclasses.is_dataclass(hint):
            problem = _value_problem(key, hint, value, from_text=where == "command line")
            if problem:
                problems.append(problem if where == "command line" else f"{problem} (in {where})")
    return problems


def _source(cls: type) -> str:
    """``RolloutConfig`` -> ``rollout configuration``: how an error message names the configuration."""
    words = re.findall(r"[A-Z][a-z0-9]*", cls.__name__.removesuffix("Config")) or [cls.__name__]
    return " ".join(w.lower() for w in words) + " configuration"


def _build(cls: type[T], parser: ArgumentParser, ns: Namespace, source: str | None, own_parser: bool) -> T:
    values = ns.clone()
    values.pop("config", None)
    values.pop("__default_config__", None)
    try:
        if own_parser:  # the values of a parser of cls's fields: jsonargparse builds the nested dataclasses
            fields = parser.instantiate(values)
            return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields})
        return cls.from_dict(values.as_dict())  # type: ignore[attr-defined]
    except ConfigError as err:
        if source is None:
            raise
        raise ConfigError(err.problems, source) from None


def parse_config(cls: type[T], argv: Sequence[str], *, prog: str | None = None, description: str | None = None,
                 source: str | None = None, parser: ArgumentParser | None = None) -> T:
    """``argv`` (``--config FILE.yaml`` files, repeatable, plus ``--key.path value`` overrides) as an
    instance of dataclass ``cls``; jsonargparse builds its nested dataclasses and checks every value
    against its declared type, then ``cls.__post_init__`` checks the rules between fields.

    ``parser`` replaces the parser built from ``cls``'s fields where a stage's keys are richer than
    them (training: Lightning's ``Trainer`` signature, a ``class_path`` model); the parsed values then
    go to ``cls.from_dict``.

    Raises:
        ConfigError: listing every unknown key (with the nearest valid ones) and every bad value.
    """
    if source is None and prog:
        source = f"{prog.removeprefix('modelyard ')} configuration"
    own_parser = parser is None
    parser = parser or config_parser(cls, prog, description)
    given, problems = _given(argv)
    problems += _key_problems(parser, given)
    if problems:
        raise ConfigError(problems, source or _source(cls))
    try:
        ns = parser.parse_args(list(argv))
    except ArgumentError as err:
        raise ConfigError(_value_problems(cls, given) or [str(err).strip()], source or _source(cls)) from None
    return _build(cls, parser, ns, source, own_parser)


def load_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """The YAML file ``path`` (optional) with ``overrides`` on top (keyword per key; nested keys as
    ``**{"retrain.serve_url": url}``) as an instance of dataclass ``cls``, checked as
    :func:`parse_config` checks.

    Raises:
        ConfigError: listing every unknown key and every bad value.
    """
    source = _source(cls) if path is None else f"{_source(cls)} {str(path)!r}"
    parser = config_parser(cls)
    given, problems = _given(["--config", str(path)] if path is not None else [])
    given += [(key, value, "overrides") for key, value in overrides.items()]
    problems += _key_problems(parser, given)
    if problems:
        raise ConfigError(problems, source)
    data = yaml.safe_load(Path(path).read_text()) or {} if path is not None else {}
    for key, value in overrides.items():
        section = data
        *parents, leaf = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
        section[leaf] = value
    try:
        ns = parser.parse_object(data)
    except ArgumentError as err:
        raise ConfigError(_value_problems(cls, given) or [str(err).strip()], source) from None
    return _build(cls, parser, ns, source, True)



# --- command groups --------------------------------------------------------------------------------

class _RawDescription(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description and epilog printed as written (their own columns)."""


def group_parser(prog: str, description: str, subcommands: dict[str, tuple[str, ArgumentParser | None]],
                 epilog: str | None = None) -> ArgumentParser:
    """The parser of a command group (``modelyard rollout``): its help lists the sub-commands, each
    with its one-line summary. ``subcommands``: name -> (summary, the sub-command's parser, or None
    for one that parses its own arguments)."""
    parser = ArgumentParser(prog=prog, description=description, epilog=epilog, exit_on_error=False,
                            formatter_class=_RawDescription)
    commands = parser.add_subcommands(dest="command", title="commands")
    for name, (summary, subparser) in subcommands.items():
        subparser = subparser or ArgumentParser(prog=f"{prog} {name}", description=summary)
        commands.add_subcommand(name, subparser, help=summary)
    return parser


def pick_action(prog: str, argv: Sequence[str], actions: Iterable[str], group: Callable[[], ArgumentParser],
                action_parser: Callable[[str], ArgumentParser]) -> tuple[str, list[str]] | int:
    """The action of a command group's arguments (``modelyard rollout start ...``) and the rest, or,
    when there is nothing to run, the exit status after printing what the user asked for or needs:
    the group's help (0 when asked, 2 without an action), an unknown action with the valid ones (2),
    or the action's own help (0)."""
    argv, actions = list(argv), list(actions)
    if not argv or argv[0] in ("-h", "--help"):
        group().print_help()
        return 0 if argv else 2
    if argv[0] not in actions:
        print(f"{prog}: unknown action {argv[0]!r}; expected one of: {', '.join(actions)}\n\n"
              f"{group().format_help()}", file=sys.stderr)
        return 2
    action, rest = argv[0], argv[1:]
    if "-h" in rest or "--help" in rest:
        action_parser(action).print_help()
        return 0
    return action, rest
