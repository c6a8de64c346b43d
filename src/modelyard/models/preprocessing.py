"""Preprocessing as an ``nn.Module``, so the exported graph carries it.

Every operation here (``nan_to_num``, ``round``, ``clamp``, ``where``, embedding lookups) exports
to plain ONNX operators; training and serving run literally the same arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn

from modelyard.models.spec import DataSpec

__all__ = ["TabularPreprocessor"]


class TabularPreprocessor(nn.Module):
    """Normalise numeric columns and embed categorical codes.

    Input ``(B, F)`` float32 as described in :mod:`modelyard.models.spec`. Output
    ``(B, n_numeric + n_categorical * embedding_dim)``. A missing numeric value (``NaN``) becomes the
    training mean (0 after normalisation); a categorical code that is not a known code becomes 0, the
    "unknown" embedding.
    """

    def __init__(self, spec: DataSpec, embedding_dim: int = 4) -> None:
        super().__init__()
        numeric = [i for i, f in enumerate(spec.features) if f.kind == "numeric"]
        categorical = [i for i, f in enumerate(spec.features) if f.kind == "categorical"]
        self.register_buffer("numeric_index", torch.tensor(numeric, dtype=torch.long), persistent=False)
        self.register_buffer("categorical_index", torch.tensor(categorical, dtype=torch.long), persistent=False)
        self.register_buffer(
            "mean", torch.tensor([spec.features[i].mean for i in numeric], dtype=torch.float32)
        )
        self.register_buffer("std", torch.tensor([spec.features[i].std for i in numeric], dtype=torch.float32))
        # One table per categorical column; row 0 is "unknown", row k is categories[k - 1].
        self.embeddings = nn.ModuleList(
            nn.Embedding(len(spec.features[i].categories) + 1, embedding_dim) for i in categorical
        )
        self.out_features = len(numeric) + len(categorical) * embedding_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.numeric_index.numel():
            numeric = features.index_select(1, self.numeric_index)  # (B, N)
            numeric = (numeric - self.mean) / self.std
            parts.append(torch.nan_to_num(numeric, nan=0.0, posinf=0.0, neginf=0.0))
        for j, table in enumerate(self.embeddings):
            column = features[:, self.categorical_index[j]]  # (B,)
            codes = torch.nan_to_num(column, nan=0.0).round()
            known = (codes >= 0) & (codes < table.num_embeddings)
            codes = torch.where(known, codes, torch.zeros_like(codes)).long()
            parts.append(table(codes))  # (B, E)
        return torch.cat(parts, dim=1)
