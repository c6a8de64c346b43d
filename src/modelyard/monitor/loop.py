"""The closed loop: check -> incident -> new data window -> train -> export -> canary -> rollout.

:class:`Monitor` runs checks (:func:`~modelyard.monitor.check.evaluate`), keeps the timeline and the
incidents (:class:`~modelyard.monitor.incidents.IncidentStore`), and drives an open incident through
the steps of a :class:`RetrainPipeline`, each step's result saved before the next starts, so a
monitor restarted after a crash resumes the incident where it stopped instead of retraining twice.
A cooldown after every incident keeps one incident to one retraining however many checks still see
the drift.

The steps reuse the stages as their users run them: the data stage validates the new window against
the champion's schema (bad rows are quarantined, never lost), training is the ``modelyard train``
command with the champion's config (a subprocess, so DDP launches work as on the command line),
export keeps its parity gate and registers ``challenger``, and the rollout is the rollout stage with
live accuracy from the feedback labels. Data, export and rollout are called in this process through
their typed entry points (``run(cfg) -> result``): each stage's config is read from its YAML file
(plus the ``retrain.*_args`` overrides, command-line arguments by definition) and the loop sets its
own values (run id, version, URL) on the config object.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from modelyard.config import load_config, parse_config
from modelyard.data.config import DataConfig, SplitConfig
from modelyard.data.run import run as data_run
from modelyard.data.store import Snapshot, write_snapshot
from modelyard.errors import ModelyardError
from modelyard.export.config import ExportConfig
from modelyard.export.run import run as export_run
from modelyard.monitor.check import CheckResult, Reference, Trigger, evaluate, load_reference
from modelyard.monitor.config import MonitorConfig
from modelyard.monitor.drift import decode_features
from modelyard.monitor.hook import BUILTIN_HOOKS, HookError, call_hook, hook_name
from modelyard.monitor.incidents import Incident, IncidentStore, local_time
from modelyard.monitor.report import write_report
from modelyard.monitor.store import MonitorStore, RolloutLabels
from modelyard.rollout.config import RolloutConfig, expand_spellings
from modelyard.rollout.controller import Clock
from modelyard.rollout.run import run as rollout_run
from modelyard.rollout.traffic import TrafficControl
from modelyard.serve.ray.app import control_url, deploy
from modelyard.serve.ray.config import RayServeConfig
from modelyard.serve.triton.repository import write_model_version
from modelyard.tracking import client_for, ensure_experiment, quiet_downloads, resolve_tracking_uri

__all__ = ["CanaryDeployer", "Monitor", "NotEnoughLabels", "RayServeDeployer", "RetrainPipeline"]

logger = logging.getLogger(__name__)


class NotEnoughLabels(ModelyardError, RuntimeError):
    """Too few labelled rows to retrain on yet; the incident waits for feedback."""


class CanaryDeployer(Protocol):
    def deploy_canary(self, version: str) -> str:
        """Serve ``version`` as the canary at 0% beside the champion; return the base URL of the
        ingress's control routes (the rollout's ``serve_url``)."""
        ...


class RayServeDeployer:
    """Redeploys the ``modelyard serve ray`` application with ``stable=@champion`` and the new canary.

    Ray Serve replaces only what changed: the champion's model deployment keeps serving, the ingress
    replica is swapped after the new one is ready (the old one drains and flushes its inference
    log), and the new version's deployment starts warm at 0% traffic.
    """

    def __init__(self, serve_config: RayServeConfig, app_name: str = "modelyard") -> None:
        self.serve_config = serve_config
        self.app_name = app_name

    @classmethod
    def from_file(cls, path: str, tracking_uri: str | None = None) -> RayServeDeployer:
        cfg = _load_serve_config(path)
        return cls(replace(cfg, tracking_uri=cfg.tracking_uri or tracking_uri))

    def deploy_canary(self, version: str) -> str:
        import ray

        if not ray.is_initialized():  # the cluster where `modelyard serve ray` runs
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
        cfg = replace(self.serve_config, stable="@champion", canary=str(version), canary_weight=0.0,
                      shadow_weight=0.0, canary_fault_error_rate=0.0, canary_fault_delay_ms=0.0)
        deploy(cfg, self.app_name)
        return control_url(cfg)


class RetrainPipeline:
    """The default steps of an incident; each returns what the next one needs (saved in the incident).

    Args:
        cfg: the monitor configuration (``cfg.retrain`` above all).
        deployer: puts the new version behind the ingress as canary; default: :class:`RayServeDeployer`
            from ``cfg.retrain.serve_config``.
        serve_url: the ingress the rollout drives; default ``cfg.retrain.serve_url`` or the serve config's
            host and port.
        echo: where subprocess output and progress lines go (default: stdout).
        control: the rollout's traffic control; default: the HTTP control routes at the serve URL.
        clock: the rollout's clock (``time`` by default; tests pass a fake).
    """

    def __init__(self, cfg: MonitorConfig, deployer: CanaryDeployer | None = None, serve_url: str | None = None,
                 echo: Callable[[str], None] | None = None, control: TrafficControl | None = None,
                 clock: Clock | None = None) -> None:
        self.cfg = cfg
        self._deployer = deployer
        self._serve_url = serve_url or cfg.retrain.serve_url
        self.echo = echo or (lambda line: print(line, flush=True))
        self._control = control
        self._clock = clock

    # -- 1. a fresh data window --------------------------------------------------------------------
    def snapshot(self, incident: Incident, ref: Reference, store: Any, folder: Path) -> dict[str, Any]:
        """Recent labelled rows (decoded to raw values) + a sample of the champion's own data -> a
        validated snapshot ``<model>-incident-<id>``; the part of the recent rows the new model's
        reference profile describes (``retrain.profile_window``) -> ``<model>-incident-<id>-profile``,
        its rows keeping the splits they have in the training snapshot (so its val and test rows are
        held out from training).

        Raises:
            NotEnoughLabels: fewer than ``retrain.min_labelled_rows`` labelled rows since the champion went
                live, or in the profile window.
        """
        r = self.cfg.retrain
        labelled = store.labelled(since=ref.since).sort_values("ts").tail(r.recent_rows).reset_index(drop=True)
        if len(labelled) < r.min_labelled_rows:
            raise NotEnoughLabels(f"{len(labelled)} labelled rows since {self.cfg.model} v{ref.version} went live; "
                                  f"retraining needs retrain.min_labelled_rows={r.min_labelled_rows}")
        n_profile, window = self._profile_window(incident, labelled)
        if n_profile is not None and n_profile < r.min_labelled_rows:
            raise NotEnoughLabels(f"{n_profile} labelled rows {window}; the new reference profile "
                                  f"(retrain.profile_window={r.profile_window}) needs retrain.min_labelled_rows="
                                  f"{r.min_labelled_rows}")
        if n_profile is not None:  # the profile rows (the newest) first: they are the snapshot's first rows
            cut = len(labelled) - n_profile
            labelled = pd.concat([labelled.iloc[cut:], labelled.iloc[:cut]], ignore_index=True)
        base = Snapshot.open(ref.data_digest, r.store, allow_path=False)  # a digest from a run tag
        schema = base.schema
        recent = decode_features(store.features_matrix(labelled), ref.spec)
        reference = pd.concat([base.split("train"), base.split("val")], ignore_index=True)
        label_values = np.asarray(ref.spec.classes, dtype=object)[labelled["label_index"].to_numpy(dtype=int)]
        recent[schema.label] = pd.Series(label_values).astype(reference[schema.label].dtype).to_numpy()
        n_ref = min(len(reference), round(len(recent) * r.reference_fraction / (1 - r.reference_fraction)))
        sample = reference.sample(n=n_ref, random_state=r.seed) if n_ref else reference.iloc[:0]
        columns = [c.name for c in schema.columns]
        frame = pd.concat([recent[columns], sample[columns]], ignore_index=True)
        folder.mkdir(parents=True, exist_ok=True)
        source, schema_file = folder / "training_window.parquet", folder / "schema.yaml"
        frame.to_parquet(source, index=False)
        schema.to_yaml(schema_file)
        result = data_run(DataConfig(dataset="file", source=str(source), schema=str(schema_file),
                                     name=f"{self.cfg.model}-incident-{incident.id}", policy="quarantine",
                                     store=r.store, split=base_split(base, r.seed)))
        self.echo(f"  snapshot {result.short_digest} ({result.name}): {len(recent)} recent labelled rows + "
                  f"{n_ref} rows of the champion's data; {result.n_rows} accepted, {result.n_quarantined} quarantined")
        out = {"name": result.name, "digest": result.digest, "reference_run": ref.run_id, "recent_rows": len(recent),
               "reference_rows": int(n_ref), "accepted": result.n_rows, "quarantined": result.n_quarantined}
        if n_profile is not None:
            out["profile"] = self._profile_snapshot(incident, result, n_profile, window)
        return out

    def _profile_window(self, incident: Incident, labelled: pd.DataFrame) -> tuple[int | None, str]:
        """How many of the newest ``labelled`` rows the new reference profile describes (None: its whole
        training data), and those rows in words."""
        r = self.cfg.retrain
        if r.profile_window == "training":
            return None, "of the training window"
        if r.profile_window == "last_rows":
            return min(r.profile_rows, len(labelled)), f"(the last retrain.profile_rows={r.profile_rows})"
        if incident.drift_since is None:
            return len(labelled), "since the champion went live (no quiet check before the drift)"
        n = int((labelled["ts"].to_numpy() >= incident.drift_since).sum())
        return n, f"since drift began (after the quiet check of {local_time(incident.drift_since)})"

    def _profile_snapshot(self, incident: Incident, training: Any, n_profile: int, window: str) -> dict[str, Any]:
        """The first rows of the training snapshot that came from the profile window, with their splits."""
        accepted = int(n_profile - training.report.bad_mask[:n_profile].sum())  # accepted rows keep their order
        snap = Snapshot(training.path)
        written = write_snapshot(snap.frame().iloc[:accepted], snap.schema, name=f"{training.name}-profile",
                                 store=self.cfg.retrain.store, splits=snap.splits()[:accepted],
                                 source={"profile_of": training.digest, "incident": incident.id,
                                         "window": f"labelled rows {window}",
                                         "profile_window": self.cfg.retrain.profile_window})
        counts = written.manifest["splits"]
        self.echo(f"  reference profile data {written.short_digest} ({written.name}): {accepted} labelled rows "
                  f"{window}; {counts.get('val', 0) + counts.get('test', 0)} of them held out from training")
        return {"name": written.name, "digest": written.digest, "rows": accepted, "window": window}

    # -- 1'. or the user's hook builds the data ------------------------------------------------------
    def hook(self, incident: Incident, ref: Reference, store: Any, folder: Path) -> dict[str, Any]:
        """Call ``retrain.hook`` (or ``retrain.hook_command``) with the incident's window
        (:mod:`modelyard.monitor.hook`); its answer: ``{"datamodule": {...}}`` or ``{"run_id": ...}``.

        Raises:
            HookError: the hook failed or answered something else.
        """
        r = self.cfg.retrain
        tracking_uri = resolve_tracking_uri(self.cfg.tracking_uri)
        hook, command = (r.hook, r.hook_command) if r.hook or r.hook_command else (
            self._builtin_hook(ref, tracking_uri), None)
        folder.mkdir(parents=True, exist_ok=True)
        labelled = store.labelled(since=ref.since).sort_values(["ts", "request_id", "row"]).reset_index(drop=True)
        feedback = folder / "labelled.parquet"
        keep = [c for c in ("ts", "request_id", "row", "version", "features", "outputs", "predicted", "label",
                            "label_index", "label_ts") if c in labelled.columns]
        labelled[keep].to_parquet(feedback, index=False)
        until, (n_profile, _) = time.time(), self._profile_window(incident, labelled)
        if n_profile is None:  # profile_window: training, the hook's whole mix
            profile_since = None
        elif n_profile:  # the first of the profile's rows
            profile_since = float(labelled["ts"].iloc[len(labelled) - n_profile])
        else:  # no labelled row in the profile window yet
            profile_since = incident.drift_since if incident.drift_since is not None else until
        window = {"model": self.cfg.model, "incident": incident.id, "triggers": incident.triggers,
                  "champion_version": ref.version, "champion_run": ref.run_id, "since": ref.since,
                  "drift_since": incident.drift_since, "until": until, "feedback": str(feedback.resolve()),
                  "labelled_rows": len(labelled), "profile_window": r.profile_window, "profile_since": profile_since,
                  "reference_fraction": r.reference_fraction, "seed": r.seed, "log_dir": self.cfg.log_dir,
                  "folder": str(folder.resolve()), "tracking_uri": tracking_uri}
        what = hook_name(hook, command)
        self.echo(f"  {what}: {len(labelled)} labelled rows since v{ref.version} went live")
        result = call_hook(hook, command, window, r.hook_timeout_s)
        for line in result.log:
            self.echo(f"    {line}")
        return {**result.to_dict(), "hook": hook or command, "reference_run": ref.run_id,
                "labelled_rows": len(labelled)}

    def _builtin_hook(self, ref: Reference, tracking_uri: str) -> str:
        """The retraining hook of the champion's built-in datamodule (text, images), named by its run."""
        try:
            datamodule = client_for(tracking_uri).get_run(ref.run_id).data.tags.get("modelyard.datamodule", "")
        except Exception as err:  # noqa: BLE001 - MlflowException: the run is gone or the store unreachable
            raise HookError(f"{self.cfg.model} v{ref.version}: its run {ref.run_id} cannot be read ({err}); "
                            "set retrain.hook") from None
        if datamodule not in BUILTIN_HOOKS:
            raise HookError(f"{self.cfg.model} v{ref.version} trains on {datamodule or 'an unrecorded datamodule'}, "
                            "not a snapshot, and has no built-in retraining: set retrain.hook to a "
                            "'package.module:function' that turns the incident's window into its training data")
        return BUILTIN_HOOKS[datamodule]

    # -- 2. train with the champion's config -----------------------------------------------------
    def train(self, incident: Incident, data: dict[str, Any], tracking_uri: str) -> str:
        """``modelyard train`` with the champion's config on the new data (a snapshot, or the hook's
        datamodule); a run the hook trained itself is checked to be finished. The run id."""
        r = self.cfg.retrain
        if data.get("run_id"):
            return _finished_run(tracking_uri, str(data["run_id"]))
        config = r.train_config or self._champion_config(data["reference_run"], tracking_uri, incident)
        name = f"{self.cfg.model}-incident-{incident.id}"
        if data.get("datamodule"):
            datamodule = data["datamodule"]
            chosen = ["--data.class_path", datamodule["class_path"], "--data.init_args",
                      json.dumps(datamodule.get("init_args") or {}), "--data.batch_adapter",
                      datamodule.get("batch_adapter") or "null", "--data.profile", "null"]
        else:  # the profile snapshot, or none: never the one the champion's own config may name
            chosen = ["--data.snapshot", data["name"], "--data.store", r.store,
                      "--data.profile", data["profile"]["name"] if data.get("profile") else "null"]
        argv = [sys.executable, "-m", "modelyard", "train", "--config", config, *chosen,
                "--mlflow.run_name", name, *r.train_args]
        self.echo("  $ " + " ".join(argv[2:]))
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
        for var in ("MODELYARD_JOB_DIR", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)  # a fresh job, not a rank of ours
        started = int(time.time() * 1000)
        proc = subprocess.run(argv, check=False, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail = proc.stdout.strip().splitlines()[-15:]
        if proc.returncode != 0:
            raise ModelyardError(f"retraining failed (exit {proc.returncode}):\n" + "\n".join(tail))
        run_id = (_run_named(tracking_uri, name, started) if data.get("datamodule")
                  else _run_of_snapshot(tracking_uri, data["digest"]))
        self.echo(f"  trained run {run_id}")
        return run_id

    def _champion_config(self, run_id: str, tracking_uri: str, incident: Incident) -> str:
        """The champion run's own resolved training config (its ``config.yaml`` artifact, overrides included)."""
        folder = IncidentStore(self.cfg.state_dir, self.cfg.model).incident_dir(incident)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with quiet_downloads():
                return client_for(tracking_uri).download_artifacts(run_id, "config.yaml", str(folder))
        except Exception as err:  # noqa: BLE001 - MlflowException for a missing artifact
            raise ModelyardError(f"the champion's run {run_id} has no config.yaml artifact ({err}); set "
                                 "retrain.train_config to the training config to reuse") from None

    # -- 3. export behind the parity gate, registered as challenger -------------------------------
    def export(self, incident: Incident, run_id: str, tracking_uri: str) -> str:
        result = export_run(self.export_config(run_id, tracking_uri), write_model_version=write_model_version)
        fp32 = result.reports.get("fp32")
        self.echo(f"  exported {result.name} v{result.model_version} (parity {fp32.status if fp32 else '?'}), "
                  "alias challenger")
        return str(result.model_version)

    # -- 4. the canary ----------------------------------------------------------------------------
    def deploy_canary(self, incident: Incident, version: str) -> str:
        deployer = self._deployer
        if deployer is None:
            if not self.cfg.retrain.serve_config:
                raise ModelyardError("no retrain.serve_config: cannot deploy the canary")
            deployer = RayServeDeployer.from_file(self.cfg.retrain.serve_config, self.cfg.tracking_uri)
        url = deployer.deploy_canary(version)
        self._serve_url = self._serve_url or url
        self.echo(f"  canary v{version} deployed at 0% (control routes: {url})")
        return url

    # -- 5. the rollout decides -------------------------------------------------------------------
    def rollout(self, incident: Incident, version: str, store: Any, tracking_uri: str,
                on_decision: Callable[[Any], None]) -> str:
        url = self._serve_url or _serve_url_of(self.cfg.retrain.serve_config)
        state = rollout_run(self.rollout_config(version, url, tracking_uri), self._control, clock=self._clock,
                            labels=RolloutLabels(store, since=time.time()), on_decision=on_decision)
        return state.state

    # -- the stage configs ------------------------------------------------------------------------
    def export_config(self, run_id: str, tracking_uri: str) -> ExportConfig:
        """``retrain.export_config`` (+ ``retrain.export_args``) for ``run_id``, registered as ``challenger``."""
        r = self.cfg.retrain
        # the file and the user's extra arguments are parsed as the command line would; the loop's own
        # values then replace theirs (a config is checked again whenever it is built or replaced)
        base = parse_config(ExportConfig, ["--config", r.export_config, *r.export_args, "--run", run_id],
                            source="export configuration")
        return replace(base, name=self.cfg.model, tracking_uri=tracking_uri, alias="challenger")

    def rollout_config(self, version: str, serve_url: str, tracking_uri: str) -> RolloutConfig:
        """``retrain.rollout_config`` (+ ``retrain.rollout_args``) rolling out ``version`` behind ``serve_url``."""
        r = self.cfg.retrain
        base = parse_config(RolloutConfig, expand_spellings(["--config", r.rollout_config, *r.rollout_args,
                                                             "--model", self.cfg.model]),
                            source="rollout configuration")
        return replace(base, candidate=str(version), serve_url=serve_url, tracking_uri=tracking_uri)


def _load_serve_config(path: str) -> RayServeConfig:
    """The ``modelyard serve ray`` config file at ``path``."""
    return load_config(RayServeConfig, path)


def base_split(snapshot: Any, seed: int = 0) -> SplitConfig:
    """The split fractions of ``snapshot`` (the new window is split the same way)."""
    splits = snapshot.splits()
    counts = {name: int((splits == name).sum()) for name in ("train", "val", "test")}
    total = max(sum(counts.values()), 1)
    fractions = {k: round(v / total, 2) for k, v in counts.items()}
    fractions["train"] = round(1.0 - fractions["val"] - fractions["test"], 2)
    return SplitConfig(**fractions, seed=seed)


def _serve_url_of(serve_config: str | None) -> str:
    if not serve_config:
        raise ModelyardError("set retrain.serve_url or retrain.serve_config: the rollout needs the ingress URL")
    return control_url(_load_serve_config(serve_config))


def _run_of_snapshot(tracking_uri: str, digest: str) -> str:
    """The newest finished training run on snapshot ``digest`` (the lineage tag every run carries)."""
    client = client_for(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.`modelyard.data_digest` = '{digest}' and attributes.status = 'FINISHED'"
    runs = client.search_runs(experiments, query,
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ModelyardError(f"training exited 0 but no finished run on snapshot {digest[:12]} is in {tracking_uri}")
    return runs[0].info.run_id


def _hook_of(data: dict[str, Any]) -> tuple[str | None, list[str] | None]:
    """The hook that answered ``data`` as ``(callable, command)``."""
    hook = data.get("hook")
    return (hook, None) if isinstance(hook, str) else (None, hook)


def _run_named(tracking_uri: str, name: str, started_ms: int) -> str:
    """The newest finished ``modelyard train`` run called ``name`` that started after ``started_ms``."""
    client = client_for(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = (f"tags.`mlflow.runName` = '{name}' and tags.`mlflow.source.name` = 'modelyard train' and "
             f"attributes.status = 'FINISHED' and attributes.start_time >= {started_ms}")
    runs = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ModelyardError(f"training exited 0 but no finished run named {name} is in {tracking_uri}")
    return runs[0].info.run_id


def _finished_run(tracking_uri: str, run_id: str) -> str:
    """``run_id``, checked to be a finished run in the tracking store (a run the hook trained)."""
    try:
        run = client_for(tracking_uri).get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MlflowException for an unknown or malformed id
        raise ModelyardError(f"retrain.hook answered run {run_id!r:.100}, which is not a run in {tracking_uri}: "
                             f"{str(err)[:300]}") from None
    if run.info.status != "FINISHED":
        raise ModelyardError(f"retrain.hook answered run {run_id}, whose status is {run.info.status}; expected "
                             "FINISHED")
    return run.info.run_id


class Monitor:
    """Checks, incidents and the loop for one model; see the module docstring.

    Args:
        cfg: the monitor configuration.
        pipeline: the retraining steps (default :class:`RetrainPipeline`; tests pass fakes).
        clock: ``time`` or a fake with ``time()``.
        echo: where the timeline is printed as it happens.
        gauges: a :class:`~modelyard.monitor.report.DriftGauges` to update after each check.
        reference_loader: returns the current :class:`~modelyard.monitor.check.Reference`; default: the
            registry's ``cfg.reference`` version and its run's profile (re-read every check, so a
            promotion changes the baseline at once).
    """

    def __init__(self, cfg: MonitorConfig, pipeline: Any | None = None, clock: Any = time,
                 echo: Callable[[str], None] | None = None, gauges: Any | None = None,
                 reference_loader: Callable[[], Reference] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.echo = echo or (lambda line: print(line, flush=True))
        self.pipeline = pipeline if pipeline is not None else RetrainPipeline(cfg, echo=self.echo)
        self.tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
        self.incidents = IncidentStore(cfg.state_dir, cfg.model)
        self.gauges = gauges
        self._load_reference = reference_loader or (lambda: load_reference(cfg.model, cfg.reference,
                                                                           self.tracking_uri))

    # -- one check --------------------------------------------------------------------------------
    def check(self) -> CheckResult:
        """Evaluate the current window; open or advance an incident when the policy says so."""
        now = self.clock.time()
        ref = self._load_reference()
        store = MonitorStore(self.cfg.log_dir, self.cfg.model, classes=ref.spec.classes if ref.spec else None)
        result = evaluate(self.cfg, store, ref, now=now, last_retrain=self.incidents.last_retrain())
        report_dir = self.incidents.latest_report_dir
        if result.drift is not None:
            write_report(result.drift, report_dir, result.performance, title=f"{self.cfg.model} v{ref.version}")
            self.incidents.publish_report()
        self._gauges(result)
        self.incidents.record_check({"time": now, "summary": result.summary(), "fired": result.fired,
                                     "triggers": [asdict(t) for t in result.triggers],
                                     "drifted": result.drift.drifted if result.drift else [],
                                     "rows": result.window["rows"], "reference_version": ref.version,
                                     "accuracy": result.performance.accuracy if result.performance else None})
        self.echo(f"check: {result.summary()}")

        current = self.incidents.current()
        if current is not None:
            if result.fired:
                current.suppressed_checks += 1
                self.incidents.save(current)
                self.incidents.event("suppressed", f"check fired again; incident {current.id} is already "
                                     f"{current.state}", current, now)
            self._advance(current, ref, store)
            return result
        if not result.fired:
            return result
        until = self.incidents.cooldown_until(self.cfg.cooldown_s)
        if until is not None and now < until:
            self.incidents.event("suppressed", f"check fired during the cooldown (until {local_time(until)}): "
                                 + "; ".join(t.detail for t in result.triggers), None, now)
            last = self.incidents.last_closed()
            self.echo(f"  suppressed: cooldown after incident {last.id if last else '?'} until {local_time(until)}")
            return result
        self._open(result, ref, store, report_dir)
        return result

    def retrain_now(self, reason: str) -> Incident:
        """Open an incident at once (an operator's request: new labels arrived, a known change), whatever
        the checks say and however recent the last one; it runs like any other. The incident.

        Raises:
            ModelyardError: an incident is still open (it is the one to follow).
        """
        current = self.incidents.current()
        if current is not None:
            raise ModelyardError(f"incident {current.id} of {self.cfg.model} is still open ({current.state}); "
                                 "a check resumes it")
        now = self.clock.time()
        ref = self._load_reference()
        store = MonitorStore(self.cfg.log_dir, self.cfg.model, classes=ref.spec.classes if ref.spec else None)
        result = CheckResult(time=now, model=self.cfg.model, reference_version=ref.version, reference_run=ref.run_id,
                             window={"rows": 0}, drift=None, performance=None,
                             triggers=[Trigger("manual", f"retraining requested: {reason}")])
        return self._open(result, ref, store, None)

    def _open(self, result: CheckResult, ref: Reference, store: Any, report_dir: Path | None) -> Incident:
        """Open the incident ``result``'s triggers call for, and run it."""
        now = result.time
        incident = self.incidents.open(ref.version, [asdict(t) for t in result.triggers], now)
        incident.drift_since = self._drift_since(ref, now)
        self.incidents.save(incident)
        folder = self.incidents.incident_dir(incident)
        if result.drift is not None and report_dir is not None:
            shutil.copytree(report_dir, folder / "report", dirs_exist_ok=True)
        since = f"; no drift seen before {local_time(incident.drift_since)}" if incident.drift_since else ""
        self.incidents.event("incident", "opened: " + "; ".join(t.detail for t in result.triggers) + since, incident,
                             now, reference_version=ref.version, drift_since=incident.drift_since)
        self.echo(f"incident {incident.id} opened: " + "; ".join(t.detail for t in result.triggers))
        incident.mlflow_run = self._mlflow_open(incident, result, folder)
        self.incidents.save(incident)
        self._advance(incident, ref, store)
        return incident

    def _drift_since(self, ref: Reference, now: float) -> float | None:
        """When the last check of ``ref`` before ``now`` ran that judged enough rows and found no drift."""
        quiet = [float(c["time"]) for c in self.incidents.checks()
                 if c.get("reference_version") == ref.version and not c.get("fired") and not c.get("drifted")
                 and int(c.get("rows") or 0) >= self.cfg.drift.min_samples and float(c["time"]) < now
                 and (ref.since is None or float(c["time"]) >= ref.since)]
        return max(quiet) if quiet else None

    def watch(self, stop: threading.Event | None = None, max_checks: int | None = None) -> int:
        """Check every ``interval_s`` until ``stop`` is set (or ``max_checks`` ran); the checks run.

        A failing check (registry unreachable, no champion yet) is reported and retried next time.
        """
        stop = stop or threading.Event()
        done = 0
        while not stop.is_set() and (max_checks is None or done < max_checks):
            try:
                self.check()
            except ModelyardError as err:
                self.echo(f"check failed: {err}")
                logger.warning("check failed: %s", err)
            done += 1
            if max_checks is not None and done >= max_checks:
                break
            stop.wait(self.cfg.interval_s)
        return done

    # -- incidents ----------------------------------------------------------------------------------
    def _advance(self, incident: Incident, ref: Reference, store: Any) -> None:
        """Run the incident's remaining steps; each result is saved before the next step starts."""
        if not self.cfg.retrain.enabled:
            self._close(incident, "reported", "retraining is disabled (retrain.enabled: false)")
            return
        steps = incident.steps
        r = self.cfg.retrain
        # a model whose data is not a snapshot: no data spec, or the one load_reference builds from the
        # profile of a run on a datamodule (no features)
        hooked = bool(r.hook or r.hook_command) or ref.spec is None or not ref.spec.features
        try:
            if "snapshot" not in steps and "data" not in steps:
                folder = self.incidents.incident_dir(incident)
                try:
                    if hooked:  # the user's code builds the data (a datamodule) or trains itself
                        steps["data"] = self.pipeline.hook(incident, ref, store, folder)
                    else:
                        steps["snapshot"] = self.pipeline.snapshot(incident, ref, store, folder)
                except NotEnoughLabels as err:
                    if incident.state != "waiting_for_labels":
                        incident.state = "waiting_for_labels"
                        self.incidents.save(incident)
                        self.incidents.event("waiting", str(err), incident)
                        self.echo(f"  incident {incident.id} waits for feedback: {err}")
                    return
                if hooked:
                    data = steps["data"]
                    answer = (f"datamodule {data['datamodule']['class_path']}" if data.get("datamodule")
                              else f"run {data['run_id']}, trained by the hook")
                    self._step(incident, "data", f"{hook_name(*_hook_of(data))} answered {answer}",
                               **{k: v for k, v in data.items() if k in ("datamodule", "run_id")})
                else:
                    snap = steps["snapshot"]
                    profile = snap.get("profile")
                    described = (f"; reference profile: {profile['rows']} rows {profile['window']} ({profile['name']})"
                                 if profile else "; reference profile: the training data")
                    self._step(incident, "snapshot", f"snapshot {snap['name']}: {snap['recent_rows']} recent + "
                               f"{snap['reference_rows']} reference rows{described}")
            if "run_id" not in steps:
                steps["run_id"] = self.pipeline.train(incident, steps.get("data") or steps["snapshot"],
                                                      self.tracking_uri)
                self._step(incident, "trained", f"retrained: run {steps['run_id']}", run_id=steps["run_id"])
                self._mlflow_tag(incident, "modelyard.incident.retrain_run", steps["run_id"])
                self._tag_run(steps["run_id"], incident)
            if "version" not in steps:
                steps["version"] = self.pipeline.export(incident, steps["run_id"], self.tracking_uri)
                self._step(incident, "exported", f"exported and registered v{steps['version']} as challenger",
                           version=steps["version"])
                self._mlflow_tag(incident, "modelyard.incident.version", steps["version"])
            if "canary" not in steps:
                steps["canary"] = self.pipeline.deploy_canary(incident, steps["version"])
                self._step(incident, "canary", f"v{steps['version']} deployed as canary at 0%")

            def on_decision(decision: Any) -> None:
                self.incidents.event("rollout", decision.summary(), incident, action=decision.action)
                self.echo(f"  rollout: {decision.summary()}")

            outcome = self.pipeline.rollout(incident, steps["version"], store, self.tracking_uri, on_decision)
            steps["rollout"] = outcome
            self._mlflow_tag(incident, "modelyard.incident.rollout", outcome)
            self._close(incident, "promoted" if outcome == "promoted" else "rolled_back",
                        f"rollout of v{steps['version']} ended {outcome}")
        except Exception as err:  # noqa: BLE001 - any failed step closes the incident, recorded
            logger.exception("incident %d failed", incident.id)
            incident.error = f"{type(err).__name__}: {err}"
            self._close(incident, "failed", f"step failed: {incident.error}")

    def _step(self, incident: Incident, state: str, message: str, **detail: Any) -> None:
        incident.state = state
        self.incidents.save(incident)
        self.incidents.event(state, message, incident, **detail)
        self.echo(f"  incident {incident.id}: {message}")

    def _close(self, incident: Incident, state: str, message: str) -> None:
        incident.state, incident.closed = state, self.clock.time()
        self.incidents.save(incident)
        self.incidents.event("closed", f"{state}: {message}", incident)
        self.echo(f"incident {incident.id} closed: {state} ({message}); cooldown {self.cfg.cooldown_s:.0f}s")
        if incident.mlflow_run:
            self._set_tags(incident.mlflow_run, {"modelyard.incident.state": state})
            try:
                client = client_for(self.tracking_uri)
                client.log_artifact(incident.mlflow_run, str(self.incidents.index_file()))
                client.set_terminated(incident.mlflow_run, "FAILED" if state == "failed" else "FINISHED")
            except Exception as err:  # noqa: BLE001 - the record on disk is complete already
                logger.warning("incident %d: MLflow run not closed: %s", incident.id, err)

    # -- MLflow: one run per incident -------------------------------------------------------------
    def _mlflow_open(self, incident: Incident, result: CheckResult, folder: Path) -> str | None:
        try:
            client = client_for(self.tracking_uri)
            run = client.create_run(ensure_experiment(client, self.cfg.experiment),
                                    run_name=f"{self.cfg.model}-incident-{incident.id}",
                                    tags={"modelyard.model": self.cfg.model, "modelyard.incident": str(incident.id),
                                          "modelyard.incident.reference_version": incident.reference_version,
                                          "modelyard.incident.triggers": ", ".join(t.name for t in result.triggers)})
            run_id = run.info.run_id
            client.log_param(run_id, "window_rows", result.window["rows"])
            for t in result.triggers:
                client.log_param(run_id, f"trigger.{t.name}", t.detail[:500])
            if result.drift is not None:
                for f in result.drift.features:
                    client.log_metric(run_id, f"psi.{f.name}", float(f.psi))
                    client.log_metric(run_id, f"p_adjusted.{f.name}", float(f.p_adjusted))
                client.log_metric(run_id, "drifted_features", len(result.drift.drifted))
            if result.performance is not None and result.performance.accuracy is not None:
                client.log_metric(run_id, "live_accuracy", float(result.performance.accuracy))
            if (folder / "report").is_dir():
                client.log_artifacts(run_id, str(folder / "report"), "drift_report")
            return run_id
        except Exception as err:  # noqa: BLE001 - the loop goes on without its MLflow record
            logger.warning("incident %d: MLflow run not created: %s", incident.id, err)
            return None

    # The incident's own record (incidents.json, events.jsonl) is the source of truth; MLflow tags
    # mirror it, so a tracking hiccup is logged and never fails a step that already succeeded.
    def _mlflow_tag(self, incident: Incident, key: str, value: str) -> None:
        if incident.mlflow_run:
            self._set_tags(incident.mlflow_run, {key: str(value)})

    def _tag_run(self, run_id: str, incident: Incident) -> None:
        tags = {"modelyard.incident": str(incident.id)}
        if incident.mlflow_run:
            tags["modelyard.incident_run"] = incident.mlflow_run
        self._set_tags(run_id, tags)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        try:
            client = client_for(self.tracking_uri)
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
        except Exception as err:  # noqa: BLE001 - see above
            logger.warning("MLflow run %s: tags %s not set: %s", run_id, sorted(tags), err)

    def _gauges(self, result: CheckResult) -> None:
        if self.gauges is None or result.drift is None:
            return
        self.gauges.update(self.cfg.model, result.drift, result.performance)
        if self.cfg.metrics_file:
            self.gauges.write_textfile(self.cfg.metrics_file)
