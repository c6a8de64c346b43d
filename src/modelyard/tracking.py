"""MLflow access with embedded defaults.

With nothing configured, runs go to an embedded store in the working directory: ``mlflow.db``
(SQLite) and ``mlartifacts/``. ``MLFLOW_TRACKING_URI`` (or ``mlflow.tracking_uri`` in a config)
switches to a tracking server with the same code; a named environment (``--env prod``,
:mod:`modelyard.environments`) fixes the store for every stage.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["client_for", "default_tracking_uri", "ensure_experiment", "git_commit", "quiet_downloads",
           "resolve_tracking_uri", "tracking_uri_scope"]

logger = logging.getLogger(__name__)


def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """The selected environment's registry (:mod:`modelyard.environments`), else ``configured``,
    else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store.

    Raises:
        EnvironmentConfigError: an environment is selected and ``configured`` names another store: a
            stage of one environment never reads or writes another's registry.
    """
    from modelyard.environments import EnvironmentConfigError, selected_environment

    env = selected_environment()
    if env is None:
        return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if configured and configured != env.tracking_uri:
        raise EnvironmentConfigError(
            f"the configuration names tracking_uri {configured} but environment {env.name!r} uses "
            f"{env.tracking_uri}; remove tracking_uri from the configuration, or select the environment that "
            "owns that store")
    return env.tracking_uri


def _artifact_location(uri: str) -> str | None:
    # A server decides where artifacts go; an embedded SQLite store would otherwise put them in
    # ./mlruns relative to whatever directory a later process runs in.
    if uri.startswith("sqlite:"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (with a stable artifact location) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(client.tracking_uri))
    except Exception:  # noqa: BLE001 - another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def client_for(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def git_commit(cwd: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the repository at ``cwd``, or ``{}`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": sha, "dirty": bool(status.strip())}


@contextmanager
def tracking_uri_scope(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri`` for the block only.

    ``mlflow.set_tracking_uri`` also writes ``$MLFLOW_TRACKING_URI``, which every later
    subprocess would inherit; both are put back on exit.
    """
    import mlflow

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if previous_env else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None: back to MLflow's own default
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar for the block: small JSON artifacts read on every monitor check would
    otherwise print one each time."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
