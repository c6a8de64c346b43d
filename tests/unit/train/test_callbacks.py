"""Training callbacks: the throughput count of every batch layout."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from modelyard.train.callbacks import ThroughputCallback, batch_rows


def test_throughput_counts_the_rows_of_every_batch_layout():
    tensors = (torch.zeros(8, 3), torch.zeros(8))
    named = ({"input_ids": torch.zeros(5, 7), "attention_mask": torch.zeros(5, 7)}, torch.zeros(5))
    positional = ((torch.zeros(4, 6), torch.zeros(4, 3)), torch.zeros(4))
    assert [batch_rows(b) for b in (tensors, named, positional)] == [8, 5, 4]
    assert batch_rows({"x": [torch.zeros(3, 2)], "y": torch.zeros(3)}) == 3 and batch_rows(("no tensor",)) == 0

    callback = ThroughputCallback(log_every_n_steps=100)  # no logging in the 3 batches below
    trainer = SimpleNamespace(world_size=2)
    callback.on_train_epoch_start(trainer, None)
    for batch in (tensors, named, positional):
        callback.on_train_batch_end(trainer, None, None, batch, 0)
    assert callback._samples == (8 + 5 + 4) * 2  # rows x processes, not the number of inputs


def test_ranks_agree_on_sigterm_in_the_collective_lightning_already_makes_every_batch(tmp_path):
    """With several ranks the SIGTERM agreement replaces the epoch loop's per-batch broadcast (no
    collective of its own in on_train_batch_start); after training the loop's method is back."""
    import signal

    import pytest
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from modelyard.train.callbacks import PreemptionCheckpoint

    decisions = []

    class Strategy:
        launcher = None

        def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
            decisions.append(decision)
            return decision  # one rank here: any == its own flag

    loop = SimpleNamespace(_broadcast_sigterm_tensor=lambda: decisions.append("lightning"))
    trainer = SimpleNamespace(world_size=2, global_rank=0, strategy=Strategy(),
                              fit_loop=SimpleNamespace(epoch_loop=loop))
    callback = PreemptionCheckpoint(tmp_path / "last.ckpt")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        callback.on_train_start(trainer, None)
        callback.on_train_batch_start(trainer, None, None, 0)  # nothing here: the loop's call agrees
        loop._broadcast_sigterm_tensor()
        assert decisions == [False]
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # the handler only notes the signal
        with pytest.raises(SIGTERMException):
            loop._broadcast_sigterm_tensor()
        assert decisions == [False, True]
        real = _TrainingEpochLoop.__new__(_TrainingEpochLoop)  # Lightning's own loop still has the method
        trainer.fit_loop.epoch_loop = real
        callback.on_train_start(trainer, None)
        assert real._broadcast_sigterm_tensor.__name__ == "<lambda>"
        callback.on_train_end(trainer, None)
        assert real._broadcast_sigterm_tensor.__func__ is _TrainingEpochLoop._broadcast_sigterm_tensor
    finally:
        signal.signal(signal.SIGTERM, previous)
