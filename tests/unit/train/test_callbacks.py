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
