"""Job folders, atomic checkpoint writes and the reference profile, without training."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from modelyard.models import DataSpec, FeatureSpec
from modelyard.train.callbacks import AtomicCheckpointIO
from modelyard.train.job import JOB_DIR_ENV, JobNotFoundError, create_job, find_job
from modelyard.train.profile import build_reference_profile


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    def dies_midway(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_resume_finds_the_latest_job_and_says_what_exists(tmp_path, monkeypatch):
    monkeypatch.delenv(JOB_DIR_ENV, raising=False)
    root = tmp_path / "runs" / "exp"
    with pytest.raises(JobNotFoundError, match="no job to resume"):
        find_job(root, "latest")
    first = create_job(root)
    first.update(run_id="a")
    second = create_job(root)
    second.update(run_id="b")
    assert find_job(root, "latest").run_id == "b"
    assert find_job(root, str(first.dir)).run_id == "a"
    with pytest.raises(JobNotFoundError, match=first.dir.name):
        find_job(root, str(tmp_path / "elsewhere"))


def test_ranks_started_for_a_job_join_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(JOB_DIR_ENV, str(tmp_path / "the-job"))
    assert create_job(tmp_path / "runs").dir == tmp_path / "the-job"


def test_job_ids_follow_the_scheduler(tmp_path, monkeypatch):
    monkeypatch.delenv(JOB_DIR_ENV, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert create_job(tmp_path).dir.name == "slurm-4242"


def test_reference_profile_describes_features_and_predictions():
    spec = DataSpec(features=(FeatureSpec("x", "numeric"), FeatureSpec("c", "categorical", categories=("a", "b"))),
                    label="y", classes=("0", "1"), digest="d" * 64)
    frame = pd.DataFrame({"x": [float(i) for i in range(100)], "c": ["a"] * 70 + ["b"] * 30, "y": [0] * 100})
    logits = torch.tensor([[2.0, 0.0]] * 30 + [[0.0, 2.0]] * 10)  # 30 predicted "0", 10 predicted "1"
    profile = build_reference_profile(frame, logits, spec)
    json.dumps(profile)  # JSON-serialisable
    x = profile["features"]["x"]
    assert x["quantiles"]["0.5"] == pytest.approx(49.5) and sum(x["histogram"]["counts"]) == 100
    assert profile["features"]["c"]["frequencies"] == {"a": 70, "b": 30}
    assert profile["predictions"]["class_frequencies"] == {"0": 30, "1": 10}
    assert sum(profile["predictions"]["score_histogram"]["counts"]) == 40
    assert profile["data_digest"] == "d" * 64
