"""Named environments (``dev``, ``staging``, ``prod``...): each its own MLflow registry.

A team keeps one environments file (``configs/environments.yaml``, or the file named by
``$MODELYARD_ENVIRONMENTS``)::

    environments:
      dev:
        tracking_uri: sqlite:///envs/dev/mlflow.db
      staging:
        tracking_uri: sqlite:///envs/staging/mlflow.db
        promote_from: [dev]
      prod:
        tracking_uri: ${PROD_MLFLOW_URI}  # $VAR, ${VAR} and ${VAR:-default} are expanded
        promote_from: [staging]
        promote_only: true         # versions arrive by `registry promote`, never by a direct export

An environment is selected by ``modelyard --env NAME <command>`` or ``MODELYARD_ENV=NAME``. Then every
stage (train, export, registry, serve, rollout, monitor) reads and writes that environment's
registry and no other: :func:`modelyard.tracking.resolve_tracking_uri` returns its URI, and a config
whose own ``tracking_uri`` names another store is refused rather than silently obeyed. With no
environment selected nothing changes: ``$MLFLOW_TRACKING_URI``, else the embedded ``./mlflow.db``.

Moving a version between environments is :func:`modelyard.registry.promote.promote_version`
(``modelyard registry promote --model M --version V --from staging --to prod``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelyard.errors import ModelyardError

__all__ = ["ENV_VAR", "FILE_VAR", "Environment", "EnvironmentConfigError", "Environments", "load_environments",
           "selected_environment"]

ENV_VAR = "MODELYARD_ENV"
FILE_VAR = "MODELYARD_ENVIRONMENTS"
DEFAULT_FILES = ("configs/environments.yaml", "environments.yaml")
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


class EnvironmentConfigError(ModelyardError, ValueError):
    """An environments file or an environment selection that cannot be used; the message says why."""


@dataclass(frozen=True)
class Environment:
    """One environment: where its registry is and how versions may enter it.

    Attributes:
        name: ``dev``, ``staging``, ``prod``...
        tracking_uri: the MLflow tracking (and registry) URI of this environment.
        promote_from: environments a version may be promoted from (empty: any).
        promote_only: versions enter only by promotion; ``modelyard export`` refuses to register here.
        description: a line for ``modelyard registry environments``.
    """

    name: str
    tracking_uri: str
    promote_from: tuple[str, ...] = ()
    promote_only: bool = False
    description: str = ""


@dataclass(frozen=True)
class Environments:
    """The environments of a file, in the order written (the promotion path, by convention)."""

    source: str
    environments: dict[str, Environment] = field(default_factory=dict)

    def get(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            raise EnvironmentConfigError(f"no environment {name!r} in {self.source}; environments there: "
                                    f"{', '.join(self.environments) or 'none'}") from None


def _files() -> list[Path]:
    named = os.environ.get(FILE_VAR)
    return [Path(named)] if named else [Path(f) for f in DEFAULT_FILES]


def _uri(value: str, where: str) -> str:
    # ``${VAR:-default}`` as in a shell or docker compose (os.path.expandvars knows only ``$VAR``/``${VAR}``),
    # then the plain forms; an unset variable stays as written and is caught below.
    uri = os.path.expandvars(_DEFAULTED.sub(lambda m: os.environ.get(m[1]) or m[2], value.strip()))
    if not uri or "$" in uri:
        raise EnvironmentConfigError(f"{where}: tracking_uri {value!r} is empty or names an unset variable; expected "
                                "an MLflow URI such as sqlite:///envs/prod/mlflow.db or http://host:5000")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # a relative SQLite path: made absolute now, so every process of a job opens the same file
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def load_environments(path: str | Path | None = None) -> Environments | None:
    """The environments file at ``path`` (default: ``$MODELYARD_ENVIRONMENTS``, else
    ``configs/environments.yaml`` or ``environments.yaml`` in the working directory); None when
    there is none.

    Raises:
        EnvironmentConfigError: a file that is not a mapping of environments each with a ``tracking_uri``,
            with every problem listed.
    """
    candidates = [Path(path)] if path is not None else _files()
    file = next((p for p in candidates if p.is_file()), None)
    if file is None:
        if path is not None or os.environ.get(FILE_VAR):
            raise EnvironmentConfigError(f"environments file {str(candidates[0])!r} does not exist")
        return None
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise EnvironmentConfigError(f"{file}: not valid YAML ({err})") from None
    problems: list[str] = []
    if not isinstance(data, dict):
        raise EnvironmentConfigError(f"{file}: expected a mapping with 'environments:', got {type(data).__name__}")
    problems += [f"unknown key {k!r}; expected 'environments'" for k in sorted(set(data) - {"environments"})]
    raw = data.get("environments")
    if not isinstance(raw, dict) or not raw:
        problems.append("'environments' must map names to {tracking_uri: ...}")
        raw = {}
    allowed = {"tracking_uri", "promote_from", "promote_only", "description"}
    envs: dict[str, Environment] = {}
    for name, entry in raw.items():
        where = f"environment {name!r}"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a mapping with tracking_uri, got {entry!r}")
            continue
        problems += [f"{where}: unknown key {k!r}; expected {sorted(allowed)}" for k in sorted(set(entry) - allowed)]
        if not isinstance(entry.get("tracking_uri"), str):
            problems.append(f"{where}: tracking_uri is missing; expected an MLflow URI")
            continue
        sources = entry.get("promote_from") or []
        sources = [sources] if isinstance(sources, str) else sources
        if not isinstance(entry.get("promote_only", False), bool):
            problems.append(f"{where}: promote_only must be true or false, got {entry['promote_only']!r}")
        try:
            envs[str(name)] = Environment(str(name), _uri(entry["tracking_uri"], f"{file} {where}"),
                                          tuple(str(s) for s in sources), bool(entry.get("promote_only", False)),
                                          str(entry.get("description", "")))
        except EnvironmentConfigError as err:
            problems.append(str(err))
    for env in envs.values():
        problems += [f"environment {env.name!r}: promote_from names {s!r}, which is not an environment"
                     for s in env.promote_from if s not in envs]
    uris: dict[str, str] = {}
    for env in envs.values():
        if env.tracking_uri in uris:
            problems.append(f"environments {uris[env.tracking_uri]!r} and {env.name!r} share the registry "
                            f"{env.tracking_uri}; each environment needs its own")
        uris.setdefault(env.tracking_uri, env.name)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise EnvironmentConfigError(f"{len(problems)} problem(s) in {file}:\n{listing}")
    return Environments(str(file), envs)


def selected_environment() -> Environment | None:
    """The environment named by ``$MODELYARD_ENV`` (set by ``modelyard --env``); None when unset.

    Raises:
        EnvironmentConfigError: an environment is named but there is no environments file, or it lacks it.
    """
    name = os.environ.get(ENV_VAR, "").strip()
    if not name:
        return None
    envs = load_environments()
    if envs is None:
        raise EnvironmentConfigError(f"{ENV_VAR}={name} selects an environment, but there is no environments file "
                                f"({' or '.join(DEFAULT_FILES)} in {Path.cwd()}, or ${FILE_VAR})")
    return envs.get(name)


def describe(envs: Environments) -> list[dict[str, Any]]:
    """Rows for ``modelyard registry environments``."""
    selected = os.environ.get(ENV_VAR, "").strip()
    return [{"name": e.name, "tracking_uri": e.tracking_uri, "promote_from": list(e.promote_from),
             "promote_only": e.promote_only, "selected": e.name == selected, "description": e.description}
            for e in envs.environments.values()]
