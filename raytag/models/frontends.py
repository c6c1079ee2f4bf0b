"""The two front-ends of Pons et al.: sample-level CNN on waveforms, musically
motivated CNNs on log-mel spectrograms. Both return (batch, channels, frames)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raytag.models.layers import BN_EPS, ConvReluBN1d, same_padding


class WaveformFrontEnd(nn.Module):
    """Sample-level CNN (Lee et al. 2017): kernel-3 convolutions that divide time by 3^7.

    The first conv has stride 3 and no pooling; every later conv is followed by a
    max-pool of 3. (batch, samples) -> (batch, filters[-1], samples // 2187 roughly).
    """

    def __init__(self, filters: tuple[int, ...] = (64, 64, 64, 128, 128, 128, 256)) -> None:
        super().__init__()
        self.first = ConvReluBN1d(1, filters[0], 3, stride=3)
        self.blocks = nn.ModuleList(
            ConvReluBN1d(c_in, c_out, 3)
            for c_in, c_out in zip(filters[:-1], filters[1:], strict=True)
        )
        self.out_channels = filters[-1]

    def forward(self, waveform: Tensor) -> Tensor:
        x = self.first(waveform.unsqueeze(1))
        for block in self.blocks:
            x = F.max_pool1d(block(x), 3)
        return x


class TimbralBlock(nn.Module):
    """A conv spanning many mel bands, "same" in time, then max over what is left of frequency.

    Pooling over all frequency makes the learnt timbre pitch-invariant.
    """

    def __init__(self, filters: int, time_kernel: int, freq_kernel: int) -> None:
        super().__init__()
        self.time_pad = same_padding(time_kernel)
        self.conv = nn.Conv2d(1, filters, (time_kernel, freq_kernel))
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS)

    def forward(self, logmel: Tensor) -> Tensor:
        x = F.pad(logmel.unsqueeze(1), (0, 0, *self.time_pad))  # (B, 1, T, F), pad time only
        x = self.bn(F.relu(self.conv(x)))
        return x.amax(dim=3)  # (B, filters, T)


class SpectrogramFrontEnd(nn.Module):
    """Timbral (vertical filters) and temporal (long 1-D filters on the energy envelope)
    branches on a (batch, frames, n_mels) log-mel, concatenated per frame.

    With ``num_filt`` = 16 and 96 mel bands this yields 464 channels per frame. Timbral
    filters span ``heights`` of the bands (the paper's 0.9 and 0.4), each height with
    kernels of 7, 3 and 1 frames.
    """

    def __init__(
        self, num_filt: int = 16, n_mels: int = 96, heights: tuple[float, ...] = (0.9, 0.4)
    ) -> None:
        super().__init__()
        timbral = []
        for freq_fraction in heights:
            freq_kernel = int(freq_fraction * n_mels)
            for time_kernel, mult in ((7, 1), (3, 2), (1, 4)):
                timbral.append(TimbralBlock(mult * num_filt, time_kernel, freq_kernel))
        self.timbral = nn.ModuleList(timbral)
        self.temporal = nn.ModuleList(
            ConvReluBN1d(1, mult * num_filt, kernel, padding=same_padding(kernel))
            for kernel, mult in ((165, 1), (128, 2), (64, 4), (32, 8))
        )
        self.out_channels = sum(b.conv.out_channels for b in (*self.timbral, *self.temporal))

    def forward(self, logmel: Tensor) -> Tensor:
        envelope = logmel.mean(dim=2, keepdim=True).transpose(1, 2)  # (B, 1, T)
        timbral = [block(logmel) for block in self.timbral]
        temporal = [block(envelope) for block in self.temporal]
        return torch.cat(timbral + temporal, dim=1)
