"""Promote a model version from one environment's registry to another's (``staging`` -> ``prod``).

The version arrives whole: its ONNX model (the exact bytes exported, checked against the checksum
recorded at export), its model card, parity verdict and figures, data digest and lineage tags, and a
copy of its training run (params, metric histories, config, reference profile, export files), so the
target environment serves, rolls out, monitors and retrains it without reaching back into the source.
Both registries audit the move (``registry history`` shows it in each).

MLflow's ``copy_model_version`` copies within one registry only; two environments are two tracking
stores (two SQLite files, two servers), so the copy is made here through the client API of each.
The target version is created last, by one request carrying all its tags and its card: a promotion
killed on the way leaves at most an unregistered run in the target, never a version without its
verdict, and it can simply be run again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard._io import file_sha256
from modelyard.environments import Environment
from modelyard.registry.register import _ensure_registered_model
from modelyard.registry.store import (
    ALIASES,
    PARITY_TAG,
    SHA256_TAG,
    PromotionRefused,
    _version,
    move_alias,
    record_move,
)
from modelyard.safety import check_name, check_version
from modelyard.tracking import client_for, ensure_experiment, quiet_downloads, tracking_uri_scope

__all__ = ["PROMOTED_FROM_TAG", "Promotion", "promote_version"]

logger = logging.getLogger(__name__)

PROMOTED_FROM_TAG = "modelyard.promoted_from"  # "<env>/<model>/<version>" on the target version and run
# Paths in the source environment's Triton repository: meaningless in the target, which writes its own.
_LOCAL_TAGS = ("modelyard.triton_repo", "modelyard.triton_version")
_METRIC_BATCH, _PARAM_BATCH = 1000, 100  # MLflow's limits per log_batch request


@dataclass(frozen=True)
class Promotion:
    """A version copied between environments."""

    model: str
    source_env: str
    source_version: str
    target_env: str
    target_version: str
    target_run_id: str
    alias: str | None = None

    def line(self) -> str:
        alias = f", alias {self.alias}" if self.alias else ""
        return (f"{self.model}: {self.source_env} v{self.source_version} -> {self.target_env} v{self.target_version} "
                f"(run {self.target_run_id}{alias})")


def _refusals(mv: Any, card: str | None) -> list[str]:
    tags = mv.tags or {}
    problems = []
    if tags.get(PARITY_TAG) != "passed":
        problems.append(f"its parity report is {tags.get(PARITY_TAG, 'missing')} (expected passed)")
    if not tags.get(SHA256_TAG):
        problems.append(f"it has no checksum ({SHA256_TAG} tag), so the copy could not be verified")
    if not (mv.description or "").strip() or card is None:
        problems.append("it has no model card")
    if not tags.get("modelyard.data_digest"):
        problems.append("it has no data digest (modelyard.data_digest tag): its lineage is incomplete")
    if not mv.run_id:
        problems.append("it has no source run: its lineage is incomplete")
    return problems


def _card(client: Any, mv: Any, name: str) -> str | None:
    if not mv.run_id:
        return None
    listed = {a.path for a in client.list_artifacts(mv.run_id, "model_card")}
    return mv.description if f"model_card/{name}.md" in listed else None


def _exported_file(run_dir: Path, name: str, sha256: str) -> Path | None:
    """The file of the run's ``export/<name>/`` whose checksum is the one recorded at export."""
    folder = run_dir / "export" / name
    return next((f for f in sorted(folder.glob("*.onnx")) if file_sha256(f) == sha256.lower()), None)


def _copy_run(src: Any, dst: Any, run_id: str, run_dir: Path, origin: str) -> str:
    """A run in ``dst`` with the source run's name, tags, params, metric histories and artifacts."""
    from mlflow.entities import Metric, Param

    run = src.get_run(run_id)
    experiment = src.get_experiment(run.info.experiment_id).name
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"}
    tags |= {PROMOTED_FROM_TAG: origin, "modelyard.source_run_id": run_id}
    copied = dst.create_run(ensure_experiment(dst, experiment), run_name=run.info.run_name, tags=tags)
    new_id = copied.info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
               for m in src.get_metric_history(run_id, key)]
    for start in range(0, len(params), _PARAM_BATCH):
        dst.log_batch(new_id, params=params[start:start + _PARAM_BATCH])
    for start in range(0, len(metrics), _METRIC_BATCH):
        dst.log_batch(new_id, metrics=metrics[start:start + _METRIC_BATCH])
    dst.log_artifacts(new_id, str(run_dir))
    dst.set_terminated(new_id, run.info.status if run.info.status in ("FINISHED", "FAILED", "KILLED") else "FINISHED")
    return new_id


def promote_version(name: str, version: str | int, source: Environment, target: Environment, *, reason: str,
                    who: str | None = None, alias: str | None = None) -> Promotion:
    """Copy ``name`` ``version`` from ``source``'s registry into ``target``'s as a new version.

    Args:
        alias: also point this alias (``champion``/``challenger``) of the target at the new version
            (audited as every move); default none: the target's rollout decides when it serves.

    Raises:
        PromotionRefused: same environment, a source the target does not take versions from, no
            reason, or a version without passed parity, checksum, model card or lineage; or one whose
            exported file no longer matches its checksum. Nothing is written to the target then.
        LookupError: no such model or version in the source (the message lists what exists).
    """
    check_name(name, "registered model name")
    version = str(version)
    check_version(version, f"{name} version")
    if not reason.strip():
        raise PromotionRefused("every promotion needs a reason (--reason '...'): it is the audit trail")
    if source.name == target.name or source.tracking_uri == target.tracking_uri:
        raise PromotionRefused(f"--from {source.name} and --to {target.name} are the same registry; use "
                               "`registry promote NAME --version V --alias champion` to move an alias")
    if target.promote_from and source.name not in target.promote_from:
        raise PromotionRefused(f"{target.name} takes versions from {', '.join(target.promote_from)} only, not from "
                               f"{source.name}")
    if alias is not None and alias not in ALIASES:
        raise PromotionRefused(f"alias {alias!r:.140} is not managed by modelyard; use one of {', '.join(ALIASES)}")
    src, dst = client_for(source.tracking_uri), client_for(target.tracking_uri)
    mv = _version(src, name, version)
    problems = _refusals(mv, _card(src, mv, name))
    if problems:
        raise PromotionRefused(f"{name} v{version} of {source.name} cannot be promoted to {target.name}: "
                               + "; ".join(problems))
    origin = f"{source.name}/{name}/{version}"
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix=f"modelyard-promote-{name}-") as tmp, quiet_downloads():
        with tracking_uri_scope(source.tracking_uri):  # models:/m-... resolves through the global URI
            model_dir = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=str(Path(tmp) / "model"), tracking_uri=source.tracking_uri))
            run_dir = Path(mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path="", dst_path=str(Path(tmp) / "run"), tracking_uri=source.tracking_uri))
        exported = _exported_file(run_dir, name, mv.tags[SHA256_TAG])
        if exported is None:
            raise PromotionRefused(f"{name} v{version} of {source.name}: no file in its run's export/{name}/ has the "
                                   f"checksum {mv.tags[SHA256_TAG]} recorded at export; the files changed after "
                                   "export, nothing was promoted")
        with tracking_uri_scope(target.tracking_uri):
            run_id = _copy_run(src, dst, mv.run_id, run_dir, origin)
            logged = dst.create_logged_model(dst.get_run(run_id).info.experiment_id, name=f"onnx-{name}",
                                             source_run_id=run_id, tags={PROMOTED_FROM_TAG: origin})
            dst.log_model_artifacts(logged.model_id, str(model_dir))
            dst.finalize_logged_model(logged.model_id, "READY")
            _ensure_registered_model(dst, name)
            tags = {k: v for k, v in (mv.tags or {}).items() if k not in _LOCAL_TAGS}
            tags |= {PROMOTED_FROM_TAG: origin, "modelyard.run_id": run_id, "modelyard.source_run_id": mv.run_id}
            new = dst.create_model_version(name, source=f"models:/{logged.model_id}", run_id=run_id,
                                           model_id=logged.model_id, tags=tags, description=mv.description,
                                           await_creation_for=60)
    new_version = str(new.version)
    record_move(src, name, "promoted", version, f"{target.name} v{new_version}", reason=reason, who=who)
    record_move(dst, name, "promoted", f"{source.name} v{version}", new_version, reason=reason, who=who)
    if alias is not None:
        move_alias(dst, name, alias, new_version, reason=reason, who=who)
    promotion = Promotion(name, source.name, version, target.name, new_version, run_id, alias)
    logger.info("promoted %s", promotion.line())
    return promotion
