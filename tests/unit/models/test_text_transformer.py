"""The text transformer: ids inside the graph, FLOP count, configuration errors, a training step."""

from __future__ import annotations

import pytest
import torch

from modelyard.models import DataSpec, FeatureSpec, TextTransformer
from modelyard.models.text import transformer_flops_per_token

SPEC = DataSpec(features=tuple(FeatureSpec(f"tok_{i:03d}", "numeric") for i in range(16)), label="label",
                classes=("0", "1"))


def _model(**kwargs) -> TextTransformer:
    torch.manual_seed(0)
    return TextTransformer(SPEC, vocab_size=50, d_model=32, n_layers=2, n_heads=4, **kwargs).eval()


def test_forward_takes_float_ids_and_clamps_what_is_out_of_range():
    model = _model()
    ids = torch.randint(1, 50, (3, 16)).float()  # (B, T)
    logits = model(ids)
    assert logits.shape == (3, 2) and logits.dtype == torch.float32
    wild = ids.clone()
    wild[0, 0], wild[1, 1] = 10_000.0, float("nan")
    clamped = ids.clone()
    clamped[0, 0], clamped[1, 1] = 49.0, 0.0
    torch.testing.assert_close(model(wild), model(clamped))


def test_padding_is_left_out_of_the_pooling_but_not_of_attention():
    model = _model()
    ids = torch.randint(1, 50, (1, 16)).float()
    padded = ids.clone()
    padded[0, 12:] = 0.0
    assert not torch.allclose(model(ids), model(padded))


def test_flops_per_token_counts_the_dense_weights_and_attention():
    model = _model()
    dense = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("tokens.", "positions.")))
    assert model.flops_per_token() == 6 * dense + 12 * 2 * 32 * 16
    assert transformer_flops_per_token(100, 1, 8, 4) == 600 + 384


def test_width_must_divide_into_heads():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be a multiple of n_heads \(4\)"):
        TextTransformer(SPEC, d_model=30, n_heads=4)


def test_a_training_step_lowers_the_loss_on_a_fixed_batch():
    model = _model().train()
    ids, y = torch.randint(1, 50, (8, 16)).float(), torch.randint(0, 2, (8,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(ids), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2
