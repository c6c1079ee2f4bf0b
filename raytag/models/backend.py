"""The back-end shared by both models: dense 1-D CNN over front-end frames, global
max and mean pooling (which make any input length work), and a dense classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raytag.models.layers import BN_EPS, ConvReluBN1d


class BackEnd(nn.Module):
    """(batch, channels, frames) -> (logits (batch, n_tags), embedding (batch, dense_units)).

    The embedding is the penultimate layer (dense -> ReLU -> BN), the representation
    that transfer learning and similarity search use.
    """

    def __init__(
        self,
        in_channels: int,
        n_tags: int,
        filters: int = 512,
        dense_units: int = 500,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.conv1 = ConvReluBN1d(in_channels, filters, 7)
        self.conv2 = ConvReluBN1d(filters, filters, 7, padding=(3, 3))
        self.conv3 = ConvReluBN1d(filters, filters, 7, padding=(3, 3))
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(2 * filters, dense_units)
        self.dense_bn = nn.BatchNorm1d(dense_units, eps=BN_EPS)
        self.classifier = nn.Linear(dense_units, n_tags)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.pool(frames))

    def pool(self, frames: Tensor) -> Tensor:
        """(batch, channels, frames) -> (batch, 2 * filters): convs, then max and mean over time."""
        x = self.conv1(frames)
        x = self.conv2(x) + x
        x = F.max_pool1d(x, 2)
        x = self.conv3(x) + x
        return torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=1)

    def head(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features -> (logits, embedding): the dense layers."""
        embedding = self.dense_bn(F.relu(self.dense(self.dropout(pooled))))
        return self.classifier(self.dropout(embedding)), embedding
