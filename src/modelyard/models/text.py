"""A pre-norm transformer encoder over token ids with a padding mask (the ``text`` workload's model).

``forward(input_ids, attention_mask)`` takes the batches of :class:`modelyard.workloads.TextDataModule`
(any sequence length up to ``max_length``) and returns ``logits`` and a pooled ``embedding``.
Attention runs through ``F.scaled_dot_product_attention`` with the padding mask as its boolean
``attn_mask`` (a fused attention kernel on a GPU).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn

from modelyard.models._classification import build_metrics, log_train_loss_epoch, named_classification_step

__all__ = ["TextClassifier", "transformer_flops_per_token"]


def transformer_flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> int:
    """Model FLOPs of one training token (forward + backward): ``6 N + 12 L d T``.

    ``N`` counts the weights a token passes through (the token and position embeddings are
    lookups, not matrix products, and are left out); ``12 L d T`` is the attention score and value
    products (PaLM, appendix B). This is the "model FLOPs" of MFU: recomputation is not counted.
    """
    return 6 * n_params + 12 * n_layers * d_model * seq_len


class _Block(nn.Module):
    """A pre-norm block whose attention skips padding keys."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # keep: (B, 1, 1, T) bool
        b, t, d = x.shape  # (B, T, D)
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        # (B, H, T, D/H) each
        q, k, v = (z.reshape(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                              dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TextClassifier(LightningModule):
    """A transformer encoder over token ids with a padding mask: ``logits`` and a pooled ``embedding``.

    Args:
        num_classes: classes of the target.
        vocab_size: ids are clamped into ``[0, vocab_size)``; 0 is padding.
        max_length: longest sequence (learned positions).
        d_model: width of the residual stream (a multiple of ``n_heads``).
        n_layers: transformer blocks.
        n_heads: attention heads per block.
        dropout: dropout in attention and after each MLP.
        lr: AdamW learning rate after ``warmup_steps`` of linear warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up.

    ``forward(input_ids (B, T) int64, attention_mask (B, T) int64)`` ->
    ``{"logits": (B, C), "embedding": (B, d_model)}``; ``T`` may be any length up to ``max_length``.
    """

    def __init__(self, num_classes: int = 4, vocab_size: int = 2000, max_length: int = 128, d_model: int = 64,
                 n_layers: int = 2, n_heads: int = 4, dropout: float = 0.0, lr: float = 2e-3,
                 weight_decay: float = 0.01, warmup_steps: int = 20) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"TextClassifier: d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.save_hyperparameters()
        self.vocab_size = vocab_size
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_length, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        self.metrics = build_metrics(num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = input_ids.clamp(0, self.vocab_size - 1)  # (B, T)
        positions = torch.arange(ids.shape[1], device=ids.device)
        # the first position always attends, so an all-padding row gives numbers, not NaN
        keep = (attention_mask != 0) | (positions == 0)  # (B, T)
        x = self.tokens(ids) + self.positions(positions)  # (B, T, D)
        for block in self.blocks:
            x = block(x, keep[:, None, None, :])
        x = self.ln_f(x)
        weights = keep.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        embedding = (x * weights).sum(1) / weights.sum(1)  # (B, D)
        return {"logits": self.head(embedding), "embedding": embedding}

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token of a batch ``seq_len`` tokens wide (padding included), see
        :func:`transformer_flops_per_token`."""
        dense = sum(p.numel() for name, p in self.named_parameters()
                    if not name.startswith(("tokens.", "positions.")))
        return transformer_flops_per_token(dense, self.hparams.n_layers, self.hparams.d_model, seq_len)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return named_classification_step(self, batch, "train", self.metrics)

    def on_train_epoch_end(self) -> None:
        log_train_loss_epoch(self)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        named_classification_step(self, batch, "val", self.metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        named_classification_step(self, batch, "test", self.metrics)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                      fused=self.device.type == "cuda")
        warmup = max(1, self.hparams.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
