"""Building blocks shared by the front-ends and the back-end, and the encoder/head split
of every model.

The reference code orders every block conv -> ReLU -> batch norm (not the more common
conv -> BN -> ReLU) and uses TensorFlow's batch-norm epsilon of 1e-3.
"""

from __future__ import annotations

from typing import ClassVar

import torch
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


class EncoderHead(nn.Module):
    """A tagger in two stages: ``encode`` (waveform -> features pooled over time) and
    ``head`` (pooled -> (logits, embedding)), the dense layers.

    The cut is where transfer learning starts: after :meth:`freeze_encoder` only the head
    trains, no gradient flows through the convolutions (which makes fine-tuning cheap
    enough for CPUs), and the encoder's batch norms and dropout stay in inference mode.
    """

    HEAD: ClassVar[tuple[str, ...]]  # the submodules after the pooling
    CLASSIFIER: ClassVar[str]  # the last linear layer: one output per tag
    encoder_frozen: bool = False

    def encode(self, waveform: Tensor) -> Tensor:
        raise NotImplementedError

    def head(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def embed(self, waveform: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, samples) -> (logits (batch, n_tags), embedding (batch, dense_units))."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            pooled = self.encode(waveform)
        return self.head(pooled)

    def forward(self, waveform: Tensor) -> Tensor:
        return self.embed(waveform)[0]

    def freeze_encoder(self) -> None:
        self.encoder_frozen = True
        head = {id(p) for name in self.HEAD for p in self.get_submodule(name).parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in head)
        self.train(self.training)

    def train(self, mode: bool = True) -> EncoderHead:
        super().train(mode and not self.encoder_frozen)
        if mode and self.encoder_frozen:
            for name in self.HEAD:
                self.get_submodule(name).train()
            self.training = True
        return self
