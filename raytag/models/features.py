"""Log-mel features as a module, so a spectrogram model takes waveforms in.

Settings follow the reference models (../shared/notes/models.md): 16 kHz, 512-point
Hann STFT, hop 256, 96 Slaney-scale mel bands with Slaney area normalisation (what
librosa computes by default), power 2, then ``log10(1 + 10000 * mel)``.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class LogMel(nn.Module):
    """(batch, samples) float waveform -> (batch, frames, n_mels) log-compressed mel power.

    Frames are centred with zero padding, so ``frames = 1 + samples // hop_length``.
    Always computed in float32, even under autocast: the log of small mel powers is
    where reduced precision hurts.
    """

    def __init__(
        self,
        sample_rate: int = 16_000,
        n_fft: int = 512,
        hop_length: int = 256,
        n_mels: int = 96,
        log_gain: float = 10_000.0,
    ) -> None:
        super().__init__()
        self.log_gain = log_gain
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            power=2.0,
            center=True,
            pad_mode="constant",
            mel_scale="slaney",
            norm="slaney",
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.mel(waveform.float())
            return torch.log10(1.0 + self.log_gain * power).transpose(1, 2)


class Float16LogMel(LogMel):
    """musicnn's log-mel: the mel power is rounded to float16 before the log compression.

    musicnn stored its training spectrograms as float16 and rounds at tagging time too,
    then computes ``log10(10000 x + 1)`` in float32 (numpy 1.x promotion). The rounding
    is part of what its weights expect; the log itself must stay float32, since
    ``10000 x`` overflows float16 for loud bands. Same frames as :class:`LogMel`.
    """

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.mel(waveform.float()).to(torch.float16).float()
            return torch.log10(1.0 + self.log_gain * power).transpose(1, 2)
