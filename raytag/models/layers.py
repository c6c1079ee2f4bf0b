"""Building blocks shared by the front-ends and the back-ends.

The reference code orders every block conv -> ReLU -> batch norm (not the more common
conv -> BN -> ReLU) and uses TensorFlow's batch-norm epsilon of 1e-3.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3


class ConvReluBN1d(nn.Module):
    """1-D conv -> ReLU -> BN, with explicit (left, right) padding.

    Explicit padding reproduces TensorFlow's "same" for even kernels, which pads one
    more sample on the right than on the left (63/64 for a kernel of 128).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)
        self.bn = nn.BatchNorm1d(out_channels, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding)
        return self.bn(F.relu(self.conv(x)))


def same_padding(kernel_size: int) -> tuple[int, int]:
    """TensorFlow "same" padding for stride 1: the extra sample of an even kernel goes right."""
    total = kernel_size - 1
    return total // 2, total - total // 2


def he_init(module: nn.Module) -> None:
    """He (variance-scaling, fan-in) weights and zero biases, as the reference models use."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
