"""Training killed in the middle of a checkpoint write, and SIGTERM to a 2-process DDP job."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from train_fault_helpers import (
    TRAIN_CONFIG,
    alive,
    cli_env,
    descendants,
    kill_group,
    make_store,
    run_cli,
    slow_write_env,
    start_cli,
    wait_for_file,
    wait_glob,
)

pytestmark = pytest.mark.slow

COMPLETE_KEYS = {"state_dict", "epoch", "global_step", "optimizer_states", "loops"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("train-faults") / "store", rows=3000)


def _args(store: Path, experiment: str, *extra: str) -> list[str]:
    return ["train", "--config", str(TRAIN_CONFIG), "--data.store", str(store), "--trainer.enable_progress_bar",
            "false", "--data.batch_size", "128", "--mlflow.experiment", experiment, *extra]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_intact(store, tmp_path, figures):
    """A training job SIGKILLed while it writes a checkpoint loses nothing it had saved: every file
    under a checkpoint's final name loads completely, the previous ``last.ckpt`` is the one of the
    epoch before, only a hidden temp file is left over, and ``--resume`` removes it and continues.

    The write is made slow by a hook in the training process (half the bytes, then a pause), so the
    kill lands while the second ``last.ckpt`` is being written, not before or after it."""
    env, marker = slow_write_env(tmp_path / "inject", match=r"last\.ckpt", nth=2, hooks="torch")
    log = tmp_path / "train.log"
    args = _args(store, "killed", "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_epochs", "3")
    proc = start_cli(args, tmp_path, env, log)
    try:
        wait_for_file(marker, proc, log, timeout_s=240)
        writing = marker.read_text().split()[1]
        t_kill = time.monotonic()
        kill_group(proc)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    figures.record("seconds from SIGKILL to exit", round(time.monotonic() - t_kill, 2), "s")
    [job] = (tmp_path / "runs" / "killed").iterdir()
    ckpts = job / "checkpoints"
    final = sorted(p for p in ckpts.iterdir() if not p.name.startswith("."))
    leftovers = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("."))
    incomplete = []
    for path in final:
        try:
            if not COMPLETE_KEYS <= set(_load(path)):
                incomplete.append(f"{path.name}: keys {sorted(_load(path))}")
        except Exception as err:  # noqa: BLE001 - a truncated file raises anything from pickle to zip errors
            incomplete.append(f"{path.name}: {type(err).__name__}: {err}")
    figures.record("checkpoint files under a final name", len(final))
    figures.record("of them incomplete or unreadable", len(incomplete), bound="0")
    figures.record("leftover temp files after the kill", len(leftovers), note=", ".join(leftovers))
    assert not incomplete, f"files under final names do not load: {incomplete}"
    assert Path(writing).parent == ckpts and Path(writing).name.startswith(".last.ckpt."), (
        f"the slow write went to {writing}; expected a temp file beside last.ckpt in {ckpts}, so the "
        "checkpoint is written atomically")

    last = _load(ckpts / "last.ckpt")
    assert last["epoch"] == 0, f"last.ckpt should still be the epoch-0 checkpoint, it is epoch {last['epoch']}"
    assert leftovers and all(name.endswith(".tmp") for name in leftovers), leftovers
    assert json.loads((job / "job.json").read_text())["status"] == "running"

    resumed = run_cli([*args, "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming job" in resumed.stderr and "unfinished write" in resumed.stderr
    figures.record("leftover temp files after --resume", len([p for p in ckpts.iterdir() if p.name.startswith(".")]),
                   bound="0 (--resume removes them)")
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]
    final_last = _load(ckpts / "last.ckpt")
    assert final_last["epoch"] == 2 and final_last["global_step"] > last["global_step"]
    assert json.loads((job / "job.json").read_text())["status"] == "finished"


def test_sigterm_to_a_ddp_job_checkpoints_and_every_rank_exits(store, tmp_path, figures):
    """SIGTERM to the launcher of a 2-process DDP job (gloo, CPU), as a scheduler's preemption sends it:
    the job writes ``last.ckpt`` at the signal, says it was preempted, and every rank exits within 60 s
    with no process left behind; ``--resume`` continues from that checkpoint."""
    log = tmp_path / "ddp.log"
    args = _args(store, "ddp-term", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                 "--trainer.max_epochs", "200", "--data.batch_size", "32")
    proc = start_cli(args, tmp_path, cli_env(), log)
    try:
        last = wait_glob(tmp_path, "runs/ddp-term/*/checkpoints/last.ckpt", proc, log, timeout_s=240)
        epoch_end_step = _load(last)["global_step"]
        ranks = [proc.pid, *descendants(proc.pid)]
        python_ranks = [pid for pid in ranks if "modelyard.cli" in _cmdline(pid)]
        assert len(python_ranks) >= 2, f"expected 2 training processes, found {[(p, _cmdline(p)) for p in ranks]}"
        time.sleep(0.5)  # mid-epoch
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except Exception:  # noqa: BLE001 - a hang is the failure this test looks for
            raise AssertionError(
                f"the launcher did not exit within 60 s of SIGTERM:\n{log.read_text()[-4000:]}") from None
        exit_s = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        all_gone_s = time.monotonic() - t0
        left = [pid for pid in ranks if alive(pid)]
    finally:
        if proc.poll() is None:
            kill_group(proc)
    output = log.read_text()
    figures.record("processes in the job (launcher, ranks, helpers)", len(ranks))
    figures.record("seconds from SIGTERM to launcher exit", round(exit_s, 2), "s", bound="< 60")
    figures.record("seconds until every process of the job is gone", round(all_gone_s, 2), "s", bound="< 90")
    figures.record("processes left behind", len(left), bound="0")
    assert not left, f"still running after SIGTERM: {[(p, _cmdline(p)) for p in left]}"
    print(output[-4000:])
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{output[-4000:]}"
    assert "preempted: checkpoint saved" in output and "SIGTERM received: checkpoint written" in output
    job = last.parents[1]
    assert json.loads((job / "job.json").read_text())["status"] == "preempted"
    preempted = _load(last)
    figures.record("steps past the last epoch end saved by the SIGTERM checkpoint",
                   preempted["global_step"] - epoch_end_step, bound="> 0")
    assert preempted["global_step"] > epoch_end_step, "the checkpoint is the epoch-end one, not the one at the signal"

    stop_at = preempted["epoch"] + 2
    resumed = run_cli([*args, "--trainer.max_epochs", str(stop_at), "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = _load(last)
    assert final["epoch"] == stop_at - 1 and final["global_step"] > preempted["global_step"]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""

