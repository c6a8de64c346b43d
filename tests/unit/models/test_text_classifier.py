"""The text classifier's FLOP count (the GPU benchmark's MFU) and its configuration errors."""

from __future__ import annotations

import pytest
import torch

from modelyard.models import TextClassifier
from modelyard.models.text import transformer_flops_per_token


def test_flops_per_token_counts_the_dense_weights_and_the_attention_of_the_batch_width():
    with torch.device("meta"):  # no memory, no initialisation: as the benchmark counts a 200M model
        model = TextClassifier(vocab_size=50, max_length=16, d_model=32, n_layers=2, n_heads=4)
    embeddings = 50 * 32 + 16 * 32  # lookups, not matrix products
    dense = sum(p.numel() for p in model.parameters()) - embeddings
    assert model.flops_per_token(16) == 6 * dense + 12 * 2 * 32 * 16
    assert model.flops_per_token(8) == 6 * dense + 12 * 2 * 32 * 8
    assert transformer_flops_per_token(100, 1, 8, 4) == 600 + 384


def test_width_must_divide_into_heads():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be a multiple of n_heads \(4\)"):
        TextClassifier(d_model=30, n_heads=4)
