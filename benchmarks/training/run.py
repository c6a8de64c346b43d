"""Training speed: a plain PyTorch loop against modelyard's Lightning training, and DDP on 1 and 2 CPUs.

Every variant trains the same model (``modelyard.models.TabularMLP`` with the init args of
``configs/train/transactions.yaml``, built from the data spec of one generated ``transactions``
snapshot) on the same encoded training split, for the same number of optimizer steps at the same
per-process batch size, in the same shuffle order (a seeded ``DistributedSampler``, reshuffled
per epoch):

plain      plain PyTorch in this process: DataLoader, AdamW, the model's weighted cross-entropy.
lightning  ``modelyard.train.run.run(cfg)`` in this process (1 device, strategy ``auto``): the real
           stage with its callbacks, checkpoints and MLflow logging on (embedded SQLite store in a
           temporary folder).
ddp1/ddp2  ``modelyard train --trainer.strategy ddp --trainer.devices 1|2`` in a subprocess (gloo on
           CPU), the way a user runs it.

What is timed. The Lightning figures are the stage's own ``samples_per_sec`` metric (the project's
``ThroughputCallback``), read back from the MLflow run: samples of all ranks over the wall time from
the start of a training epoch to its last logged step, so process start-up, MLflow set-up,
validation, checkpoints and the end-of-run profile are excluded. The plain loop is timed the same
way (from creating the epoch's DataLoader iterator to the end of its last step). Every job runs
``epochs`` epochs of exactly ``steps_per_epoch`` batches (``limit_train_batches``, a multiple of the
logging interval, so an epoch's last logged figure covers all its steps). The first epoch is a
warm-up (a fresh process's first steps pay one-time costs: kernel selection, lazy initialisation,
DDP's bucket set-up) and is not counted; a variant's figure is the median over the other epochs
(and over repeats). The whole job's wall time is reported too, never gated.

Noise. Timed epochs of one job agree within a few % on a quiet machine; another process taking the
CPUs makes them scatter. A job whose timed epochs (less the slowest) differ by more than
``MAX_SPREAD`` is measured again, up to ``RETRIES`` times; the steadiest attempt is kept and
the results say how many attempts it took and whether it was steady. The gate still decides on the
ratio: a CI machine shared with other work gives figures no bound can judge.

Ratios (same run, same machine): ``lightning_over_plain_throughput`` (lightning / plain),
``ddp2_over_ddp1_throughput`` and, reported only, ``ddp1_over_lightning_throughput``.

Run: ``python benchmarks/training/run.py --profile ci|full [--out benchmarks/results]``. Writes
``training.json`` and ``training.md`` into ``--out``. ``ci`` takes about a minute on 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "configs" / "train" / "transactions.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results"

LOG_EVERY = 10  # trainer.log_every_n_steps: the ThroughputCallback logs every LOG_EVERY steps
BATCH_SIZE = 256  # per process, as in configs/train/transactions.yaml
MAX_PROCESSES = 2  # the widest DDP variant; the data must give it `steps_per_epoch` batches per process
TRAIN_FRACTION = 0.7  # the data stage's default train split
ROW_MARGIN = 1.03  # stratified splitting rounds per class; a few % more rows than the exact need
SUBPROCESS_TIMEOUT_S = 600
VARIANTS = ("plain", "lightning", "ddp1", "ddp2")
MAX_SPREAD = 1.25  # fastest / slowest timed epoch, less the slowest, of a steady job (quiet 2 CPUs: under 1.1)
RETRIES = 2  # extra attempts at a job whose epochs scatter more than that

# Lightning overrides common to every Lightning job of the benchmark (see the module docstring).
LIGHTNING_ARGS = [
    "--trainer.log_every_n_steps", str(LOG_EVERY),
    "--trainer.limit_val_batches", "2",  # validation is outside the timed window; keep it short
    "--trainer.enable_progress_bar", "false",  # a terminal nicety, off in CI logs
    "--data.batch_size", str(BATCH_SIZE),
]

logger = logging.getLogger("benchmarks.training")


@dataclass(frozen=True)
class Profile:
    """How big a run is: every job trains ``epochs`` x ``steps_per_epoch`` optimizer steps (the first
    epoch untimed), ``repeats`` times per variant. ``steps_per_epoch`` is a multiple of ``LOG_EVERY``."""

    steps_per_epoch: int
    epochs: int
    repeats: int


PROFILES: dict[str, Profile] = {
    "ci": Profile(steps_per_epoch=200, epochs=5, repeats=1),  # about a minute on 2 CPUs, mostly start-up
    "full": Profile(steps_per_epoch=200, epochs=10, repeats=3),
}


@dataclass
class Measurement:
    """One timed job of one variant: samples/s of each epoch, the warm-up epoch first."""

    variant: str
    processes: int
    steps: int  # optimizer steps of the whole job
    epoch_samples_per_sec: list[float]
    job_wall_s: float  # the whole job: start-up, data, MLflow, validation, profile (reported only)
    repeat: int
    attempts: int = 1

    @property
    def timed(self) -> list[float]:
        """The epochs that count: all but the warm-up."""
        return self.epoch_samples_per_sec[1:]


def rows_needed(steps: int, batch_size: int = BATCH_SIZE, processes: int = MAX_PROCESSES,
                train_fraction: float = TRAIN_FRACTION) -> int:
    """Rows to generate so that an epoch gives every one of ``processes`` ranks ``steps`` full batches."""
    if steps < 1 or batch_size < 1 or processes < 1 or not 0 < train_fraction <= 1:
        raise ValueError(f"steps, batch_size, processes must be >= 1 and 0 < train_fraction <= 1; got "
                         f"{steps}, {batch_size}, {processes}, {train_fraction}")
    return math.ceil(steps * batch_size * processes / train_fraction * ROW_MARGIN)


def epoch_figures(history: Sequence[tuple[int, float]], epochs: int, steps_per_epoch: int) -> list[float]:
    """Each epoch's last ``samples_per_sec`` from a metric history of ``(step, value)`` pairs.

    The ThroughputCallback restarts its clock every epoch and logs its running figure every
    ``LOG_EVERY`` steps, so an epoch's last point covers the whole epoch.

    Raises:
        ValueError: when the history does not have one point per ``LOG_EVERY`` steps of every epoch:
            the points could not be assigned to epochs (the job stopped early, or the logging
            interval changed).
    """
    per_epoch = steps_per_epoch // LOG_EVERY
    if len(history) != epochs * per_epoch:
        raise ValueError(f"samples_per_sec was logged {len(history)} times, expected {epochs * per_epoch} "
                         f"({epochs} epochs x {steps_per_epoch} steps, once every {LOG_EVERY} steps)")
    ordered = [value for _, value in sorted(history, key=lambda point: point[0])]
    return ordered[per_epoch - 1::per_epoch]


def spread(values: Sequence[float]) -> float:
    """Fastest over slowest of ``values``, the slowest set aside when there are 3 or more.

    Disturbances only slow an epoch down, so the fast side is the truth; one slow epoch (the plain
    loop's last epoch regularly meets a full garbage collection) is what the median absorbs, two or
    more mean the job ran beside something else.
    """
    if not values:
        raise ValueError("no timed epochs: a profile needs at least 2 epochs (the first is a warm-up)")
    kept = sorted(values)[1:] if len(values) >= 3 else sorted(values)
    return kept[-1] / kept[0]


def steady(measure: Callable[[int], Measurement]) -> Measurement:
    """``measure(attempt)`` until its timed epochs agree within ``MAX_SPREAD`` (at most ``RETRIES``
    extra attempts); the steadiest attempt, with ``attempts`` set."""
    attempts = [measure(0)]
    while spread(attempts[-1].timed) > MAX_SPREAD and len(attempts) <= RETRIES:
        last = attempts[-1]
        logger.warning("%s: timed epochs scatter by %.2fx (%s samples/s); is another process using the CPUs? "
                       "measuring again", last.variant, spread(last.timed),
                       " ".join(f"{v:,.0f}" for v in last.timed))
        attempts.append(measure(len(attempts)))
    best = min(attempts, key=lambda m: spread(m.timed))
    best.attempts = len(attempts)
    return best


def summarize(measurements: Sequence[Measurement]) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """Per variant the median over the timed epochs of every repeat, and the ratios of those medians
    (None where a side is missing)."""
    results = []
    median: dict[str, float] = {}
    for variant in VARIANTS:
        rows = [m for m in measurements if m.variant == variant]
        if not rows:
            continue
        median[variant] = statistics.median(value for m in rows for value in m.timed)
        results.append({
            "variant": variant, "processes": rows[0].processes, "steps": rows[0].steps,
            "batch_size_per_process": BATCH_SIZE, "samples_per_sec": median[variant],
            "epoch_samples_per_sec": [m.epoch_samples_per_sec for m in rows],  # per repeat, warm-up first
            "attempts": [m.attempts for m in rows],
            "steady": all(spread(m.timed) <= MAX_SPREAD for m in rows),
            "job_wall_s": statistics.median(m.job_wall_s for m in rows),
        })

    def ratio(top: str, bottom: str) -> float | None:
        return median[top] / median[bottom] if top in median and bottom in median else None

    return results, {
        "lightning_over_plain_throughput": ratio("lightning", "plain"),
        "ddp2_over_ddp1_throughput": ratio("ddp2", "ddp1"),
        "ddp1_over_lightning_throughput": ratio("ddp1", "lightning"),  # reported, not gated
    }


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table (what benchmarks/README.md quotes)."""
    title = (f"# Training throughput ({report['profile']} profile, {report['time']}, "
             f"{report['machine']['cpus']} CPUs, torch {report['versions'].get('torch', '?')}, "
             f"lightning {report['versions'].get('lightning', '?')})")
    c = report.get("constants", {})
    lines = [
        title,
        "",
        (f"Every job: {c.get('epochs', '?')} epochs x {c.get('steps_per_epoch', '?')} steps; samples/s is the "
         "median over the epochs after the first (a warm-up) and over repeats. Job wall time includes "
         "start-up, validation and tracking; it is reported, never gated."
         + (f" 1-min load average {load['before'][0]} before, {load['after'][0]} after."
            if (load := report["machine"].get("load_avg")) else "")),
        "",
        "| variant | processes | steps | batch / process | samples/s (median) | job wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['variant']} | {r['processes']} | {r['steps']} | {r['batch_size_per_process']} | "
                     f"{r['samples_per_sec']:,.0f} | {r['job_wall_s']:.1f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    for name, value in report["ratios"].items():
        lines.append(f"| `{name}` | {'n/a' if value is None else f'{value:.3f}'} |")
    return "\n".join(lines) + "\n"


# --- the variants ---------------------------------------------------------------------------------


def make_snapshot(store: Path, rows: int) -> None:
    from modelyard.data import DataConfig
    from modelyard.data import run as data_run

    result = data_run(DataConfig(dataset="transactions", rows=rows, store=str(store)))
    logger.info("snapshot %s: %s", result.short_digest, result.splits)


def train_config_args(store: Path, work: Path, experiment: str, profile: Profile, devices: int,
                      strategy: str) -> list[str]:
    return ["--config", str(TRAIN_CONFIG), *LIGHTNING_ARGS, "--trainer.max_epochs", str(profile.epochs),
            "--trainer.limit_train_batches", str(profile.steps_per_epoch),
            "--trainer.devices", str(devices), "--trainer.strategy", strategy,
            "--data.store", str(store), "--output_dir", str(work / "runs"),
            "--mlflow.tracking_uri", f"sqlite:///{work / 'mlflow.db'}", "--mlflow.experiment", experiment]


def measure_plain(store: Path, profile: Profile, repeat: int) -> Measurement:
    """The plain loop on the tensors, model and seed the Lightning job builds (same shuffle order)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, DistributedSampler

    from modelyard.train.config import parse_train_config
    from modelyard.train.datamodule import SnapshotDataModule
    from modelyard.train.run import instantiate_model

    started = time.perf_counter()
    cfg = parse_train_config(train_config_args(store, store.parent, "unused", profile, 1, "auto"))
    torch.manual_seed(cfg.seed_everything)
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic")))  # as the Trainer does
    datamodule = SnapshotDataModule(**cfg.data.snapshot_args(), seed=cfg.seed_everything)
    model = instantiate_model(cfg.model, datamodule.prepare())
    model.train()
    data = datamodule.dataset("train")
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed_everything)
    loader = DataLoader(data, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, sampler=sampler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=model.hparams.lr, weight_decay=model.hparams.weight_decay)
    figures = []
    for epoch in range(profile.epochs):
        sampler.set_epoch(epoch)  # as Lightning does
        done = samples = 0
        t0 = time.perf_counter()
        for x, y in loader:  # (B, F), (B,)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y, weight=model.class_weight)
            loss.backward()
            optimizer.step()
            done, samples = done + 1, samples + len(y)
            if done == profile.steps_per_epoch:
                break
        figures.append(samples / (time.perf_counter() - t0))
        if done < profile.steps_per_epoch:
            raise RuntimeError(f"the training split gave {done} batches, {profile.steps_per_epoch} needed; "
                               "raise the row count")
    torch.use_deterministic_algorithms(False)
    return Measurement("plain", 1, profile.epochs * profile.steps_per_epoch, figures,
                       time.perf_counter() - started, repeat)


def measure_lightning(store: Path, work: Path, profile: Profile, repeat: int, attempt: int = 0) -> Measurement:
    """``modelyard.train.run.run`` in this process, one device."""
    from modelyard.train.config import parse_train_config
    from modelyard.train.run import run

    experiment = f"bench-lightning-{repeat}-{attempt}"
    cfg = parse_train_config(train_config_args(store, work, experiment, profile, 1, "auto"))
    started = time.perf_counter()
    result = run(cfg)
    wall = time.perf_counter() - started
    if result.status != "finished" or not result.run_id:
        raise RuntimeError(f"the Lightning job ended with status {result.status!r} (job folder {result.job_dir})")
    return Measurement("lightning", 1, profile.epochs * profile.steps_per_epoch,
                       throughput_of_run(work, experiment, profile, 1), wall, repeat)


def measure_ddp(store: Path, work: Path, profile: Profile, processes: int, repeat: int,
                attempt: int = 0) -> Measurement:
    """``modelyard train`` with DDP on ``processes`` CPU processes, in a subprocess."""
    experiment = f"bench-ddp{processes}-{repeat}-{attempt}"
    cmd = [sys.executable, "-m", "modelyard.cli", "train",
           *train_config_args(store, work, experiment, profile, processes, "ddp")]
    # a clean environment: no tracking server, no job of ours, no seed Lightning exported in this process
    env = {k: v for k, v in os.environ.items() if not k.startswith("PL_") and k not in
           ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MODELYARD_JOB_DIR", "MODELYARD_MLFLOW_RUN_ID")}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                          check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"`modelyard train` with {processes} DDP process(es) exited {proc.returncode}:\n"
                           f"{proc.stderr[-4000:]}")
    return Measurement(f"ddp{processes}", processes, profile.epochs * profile.steps_per_epoch,
                       throughput_of_run(work, experiment, profile, processes), wall, repeat)


def throughput_of_run(work: Path, experiment: str, profile: Profile, processes: int) -> list[float]:
    """Per epoch the ``samples_per_sec`` the ThroughputCallback logged to the experiment's only run,
    after checking that the run trained on ``processes`` processes."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    if len(runs) != 1:
        raise RuntimeError(f"expected one MLflow run in experiment {experiment!r}, found {len(runs)}")
    run = runs[0]
    world = run.data.tags.get("modelyard.world_size")
    if world != str(processes):
        raise RuntimeError(f"run {run.info.run_id} trained with world size {world}, expected {processes}")
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "samples_per_sec")]
    return epoch_figures(history, profile.epochs, profile.steps_per_epoch)


# --- the program ----------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """``machine``, ``versions`` and ``commit`` (sha and dirty flag), as serving.json has them."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "lightning", "mlflow", "modelyard"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "processor": platform.machine()}
    return {"machine": machine, "versions": versions,
            "commit": {"sha": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}}


SETTLE_MAX_S = 90  # the longest wait for the 1-minute load average to fall below the gate's busy line
BUSY_LOAD_PER_CPU = 1.5  # benchmarks/gate.py's busy line (BUSY_LOAD_PER_CPU there)


def wait_for_settled_load(max_s: float = SETTLE_MAX_S, poll_s: float = 5.0) -> float:
    """Wait (at most ``max_s``) until the 1-minute load average is under the gate's busy line; the
    seconds waited. A machine still busy then is measured anyway, and the gate says so if a ratio fails."""
    busy_at = BUSY_LOAD_PER_CPU * (os.cpu_count() or 1)
    started = time.monotonic()
    while os.getloadavg()[0] >= busy_at and time.monotonic() - started < max_s:
        time.sleep(poll_s)
    waited = round(time.monotonic() - started, 1)
    if waited:
        logger.info("waited %.0f s for the 1-minute load average to settle (now %.2f, busy at %.2f)", waited,
                    os.getloadavg()[0], busy_at)
    return waited


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci",
                        help="ci: about a minute on 2 CPUs; full: more epochs, 3 repeats")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for training.json and training.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "modelyard", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    profile = PROFILES[args.profile]
    if profile.steps_per_epoch % LOG_EVERY or profile.epochs < 2:
        raise ValueError(f"profile {args.profile}: steps_per_epoch ({profile.steps_per_epoch}) must be a multiple "
                         f"of LOG_EVERY={LOG_EVERY} and epochs ({profile.epochs}) at least 2 (one is a warm-up)")

    # other work on the machine shows here: benchmarks/gate.py judges a failed ratio by it. `make bench`
    # starts this right after the serving harness, whose own load the 1-minute average still carries
    # for a minute: let it decay first (bounded), so the figure names other work, not the last harness.
    settle_s = wait_for_settled_load()
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "training", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              **environment(), "profile": args.profile,
                              "constants": asdict(profile) | {"batch_size_per_process": BATCH_SIZE,
                                                             "log_every_n_steps": LOG_EVERY}}
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="modelyard-train-bench-") as tmp:
        work = Path(tmp)
        rows = rows_needed(profile.steps_per_epoch)
        make_snapshot(work / "store", rows)
        report["constants"]["rows"] = rows
        store = work / "store"
        for repeat in range(profile.repeats):  # variants interleaved, so slow drift hits all alike
            measurements += [
                steady(lambda attempt, r=repeat: measure_plain(store, profile, r)),
                steady(lambda attempt, r=repeat: measure_lightning(store, work, profile, r, attempt)),
                *(steady(lambda attempt, r=repeat, n=n: measure_ddp(store, work, profile, n, r, attempt))
                  for n in (1, 2)),
            ]
            for m in measurements[-4:]:
                logger.info("repeat %d %-9s samples/s per epoch %s (job %.1f s, attempt %d)", repeat, m.variant,
                            " ".join(f"{v:,.0f}" for v in m.epoch_samples_per_sec), m.job_wall_s, m.attempts)
    report["results"], report["ratios"] = summarize(measurements)
    report["wall_s"] = time.perf_counter() - started
    report["machine"]["load_avg"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()],
                                     "waited_to_settle_s": settle_s}

    from modelyard._io import atomic_write_text  # a killed run leaves the old file, never half a JSON

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "training.json", json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    atomic_write_text(args.out / "training.md", table)
    print(table + f"\nwall {report['wall_s']:.0f} s; wrote {args.out / 'training.json'} and training.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
