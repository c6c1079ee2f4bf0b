"""musicnn (Pons and Serra, 2019): the architecture of the pretrained MTT and MSD taggers.

Layer for layer the TensorFlow 1 graph of the musicnn 0.1.0 wheel (``models.py``), so
its checkpoints load unchanged (raytag.importers.musicnn) and tag as the original does:

    log-mel (float16-rounded) -> input BN
    front-end: timbral convs 7 x 38 and 7 x 67 (204 filters each; time padded 3/3),
               temporal convs 128, 64, 32 x 1 (51 each; TF "same": 63/64, 31/32, 15/16),
               every conv -> ReLU -> BN -> max over frequency: 561 channels per frame
    mid-end:   3 x conv1d(k 7, pad 3, 64) -> ReLU -> BN, the 2nd and 3rd residual;
               concatenated with the front-end: 753 channels
    back-end:  max and mean over time, interleaved per channel as TF's flatten of
               (753, 2) leaves them (1506) -> BN -> dropout -> dense 200, ReLU -> BN
               (the penultimate "embedding") -> dropout -> dense n_tags (logits)

Batch norms use TF's epsilon 1e-3. A :class:`~raytag.models.base.TaggingModel` like the
paper's models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raytag.models.base import TaggingModel
from raytag.models.features import Float16LogMel, LogMel
from raytag.models.layers import BN_EPS, he_init, same_padding


@dataclass(frozen=True)
class MusicnnConfig:
    """The musicnn wheel's MTT_musicnn / MSD_musicnn settings by default.

    ``context_samples`` is the context each input patch carries on both sides (see
    ``AudioConfig.context_samples``): the model keeps only the frames centred inside
    the patch proper. Imported models use one STFT hop (256), so their patches frame
    exactly like musicnn's whole-track spectrogram.
    """

    arch: ClassVar[str] = "musicnn"
    n_tags: int = 50
    sample_rate: int = 16_000
    n_fft: int = 512
    hop_length: int = 256
    n_mels: int = 96
    float16_mel: bool = True
    context_samples: int = 0
    timbral_filters: int = 204
    timbral_length: int = 7
    timbral_widths: tuple[int, ...] = (38, 67)  # int(0.4 * 96), int(0.7 * 96)
    temporal_filters: int = 51
    temporal_lengths: tuple[int, ...] = (128, 64, 32)
    midend_filters: int = 64
    dense_units: int = 200
    dropout: float = 0.5

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep the config hashable and exact.
        object.__setattr__(self, "timbral_widths", tuple(self.timbral_widths))
        object.__setattr__(self, "temporal_lengths", tuple(self.temporal_lengths))
        if self.context_samples < 0 or self.context_samples % self.hop_length:
            raise ValueError("context_samples must be a non-negative multiple of hop_length")
        if any(w > self.n_mels for w in self.timbral_widths):
            raise ValueError("timbral_widths must not exceed n_mels")


class _ConvPool(nn.Module):
    """2-D conv over (time, freq) -> ReLU -> BN -> max over the remaining frequency."""

    def __init__(self, filters: int, kernel: tuple[int, int], time_pad: tuple[int, int]) -> None:
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:  # (batch, 1, time, freq) -> (batch, filters, time)
        x = F.pad(x, (0, 0, *self.time_pad))
        bn = self.bn
        if self.training:  # batch statistics need every frequency
            return bn(F.relu(self.conv(x))).amax(dim=3)
        # In eval, ReLU and each channel's BN are monotonic maps (BN decreasing where its
        # scale is negative), so pooling first gives the same values: the max over
        # frequency, or the min where the scale is negative, taken as -max(-x) by
        # negating those filters. ReLU and BN then run on a tensor smaller by the number of
        # frequency bins the conv leaves: the same numbers for a fraction of the work.
        sign = torch.where(bn.weight >= 0, 1.0, -1.0).to(x.dtype)
        weight, bias = self.conv.weight * sign[:, None, None, None], self.conv.bias * sign
        if _use_onednn(x):
            # Conv and pooling in oneDNN's blocked layout, as TensorFlow runs them: only the
            # small pooled map is converted back, never the large conv output.
            z = torch.mkldnn_convolution(
                x.to_mkldnn(), weight.to_mkldnn(), bias, (0, 0), (1, 1), (1, 1), 1
            )
            z = F.max_pool2d(z, (1, z.shape[3])).to_dense()[..., 0]
        else:
            z = F.conv2d(x, weight, bias).amax(dim=3)
        pooled = z * sign[:, None]
        return F.batch_norm(
            F.relu(pooled), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )


def _use_onednn(x: Tensor) -> bool:
    """float32 on CPU without gradients or autocast, with PyTorch's oneDNN (mkldnn) on."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


class _MidEndLayer(nn.Module):
    def __init__(self, in_channels: int, filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, filters, 7, padding=3)
        self.bn = nn.BatchNorm1d(filters, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class Musicnn(TaggingModel):
    """Waveform patches in, logits out; ``embed`` adds the 200-d penultimate layer."""

    HEAD = ("pool_bn", "dropout", "dense", "dense_bn", "output")
    CLASSIFIER = "output"

    def __init__(self, config: MusicnnConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        mel_class = Float16LogMel if c.float16_mel else LogMel
        self.features = mel_class(c.sample_rate, c.n_fft, c.hop_length, c.n_mels)
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        pad = ((c.timbral_length - 1) // 2, c.timbral_length // 2)
        self.timbral = nn.ModuleList(
            _ConvPool(c.timbral_filters, (c.timbral_length, width), pad)
            for width in c.timbral_widths
        )
        self.temporal = nn.ModuleList(
            _ConvPool(c.temporal_filters, (length, 1), same_padding(length))
            for length in c.temporal_lengths
        )
        frontend = len(c.timbral_widths) * c.timbral_filters
        frontend += len(c.temporal_lengths) * c.temporal_filters
        self.midend = nn.ModuleList(
            [
                _MidEndLayer(frontend, c.midend_filters),
                _MidEndLayer(c.midend_filters, c.midend_filters),
                _MidEndLayer(c.midend_filters, c.midend_filters),
            ]
        )
        pooled = 2 * (frontend + 3 * c.midend_filters)
        self.pool_bn = nn.BatchNorm1d(pooled, eps=BN_EPS)
        self.dense = nn.Linear(pooled, c.dense_units)
        self.dense_bn = nn.BatchNorm1d(c.dense_units, eps=BN_EPS)
        self.output = nn.Linear(c.dense_units, c.n_tags)
        self.dropout = nn.Dropout(c.dropout)
        self.apply(he_init)

    def log_mel(self, waveform: Tensor) -> Tensor:
        """(batch, samples) -> (batch, frames, n_mels): the frames centred in the patch proper.

        With context c either side, those are the centred frames from c on, one per hop
        while the centre lies before the end of the patch: 187 for musicnn's 47,872-sample
        patches, the frames musicnn cuts from its whole-track spectrogram.
        """
        hop, context = self.config.hop_length, self.config.context_samples
        n_frames = (waveform.shape[-1] - 2 * context) // hop
        if n_frames < 1:
            raise ValueError(f"a patch needs more than {2 * context + hop} samples")
        first = context // hop
        return self.features(waveform)[:, first : first + n_frames]

    def pooled_features(self, mel: Tensor) -> Tensor:
        """(batch, frames, n_mels) log-mel -> (batch, 1506): front- and mid-end features,
        max and mean over time. Any number of frames; the input of the back-end's dense
        layers, and the features that transfer best to new tags."""
        x = self.input_bn(mel.unsqueeze(1))  # (batch, 1, time, freq), like TF's (b, t, f, 1)
        front = torch.cat([block(x) for block in (*self.timbral, *self.temporal)], dim=1)
        first = self.midend[0](front)
        second = self.midend[1](first) + first
        third = self.midend[2](second) + second
        features = torch.cat([front, first, second, third], dim=1)  # (batch, 753, time)
        # TF concatenates max and mean on a last axis of 2 and flattens: interleaved.
        return torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)

    def encode(self, waveform: Tensor) -> Tensor:
        return self.pooled_features(self.log_mel(waveform))

    def head(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features -> (logits, penultimate): musicnn's dense layers."""
        hidden = self.dropout(self.pool_bn(pooled))
        penultimate = self.dense_bn(F.relu(self.dense(hidden)))
        return self.output(self.dropout(penultimate)), penultimate


def musicnn_tagger(config: MusicnnConfig) -> Musicnn:
    return Musicnn(config)
