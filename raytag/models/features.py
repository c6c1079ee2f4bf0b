"""Log-compressed filterbank features as modules, so a spectrogram model takes waveforms in.

The paper's input (:class:`LogMel`) follows the reference models: 16 kHz, 512-point
Hann STFT, hop 256, 96 Slaney-scale mel bands with Slaney area normalisation (what
librosa computes by default), power 2, then ``log10(1 + 10000 * mel)``.
:class:`LogSemitone` is raytag's own alternative input with one band per semitone, for
tags that hang on intervals (major/minor).
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import nn


class LogFilterbank(nn.Module):
    """(batch, samples) float waveform -> (batch, frames, bands) log-compressed band power.

    Frames are centred with zero padding, so ``frames = 1 + samples // hop_length``.
    Always computed in float32, even under autocast: the log of small band powers is
    where reduced precision hurts. Subclasses say what the band power is.
    """

    def __init__(self, log_gain: float = 10_000.0) -> None:
        super().__init__()
        self.log_gain = log_gain

    def band_power(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) float32 -> (batch, bands, frames) power."""
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.band_power(waveform.float())
            return torch.log10(1.0 + self.log_gain * power).transpose(1, 2)


class LogMel(LogFilterbank):
    """The paper's log-mel spectrogram."""

    def __init__(
        self,
        sample_rate: int = 16_000,
        n_fft: int = 512,
        hop_length: int = 256,
        n_mels: int = 96,
        log_gain: float = 10_000.0,
    ) -> None:
        super().__init__(log_gain)
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

    def band_power(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.mel(waveform)


class Float16LogMel(LogMel):
    """musicnn's log-mel: the mel power is rounded to float16 before the log compression.

    musicnn stored its training spectrograms as float16 and rounds at tagging time too,
    then computes ``log10(10000 x + 1)`` in float32 (numpy 1.x promotion). The rounding
    is part of what its weights expect; the log itself must stay float32, since
    ``10000 x`` overflows float16 for loud bands. Same frames as :class:`LogMel`.
    """

    def band_power(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.mel(waveform).to(torch.float16).float()


def note_frequency(note: float) -> float:
    """Equal-tempered frequency of a MIDI note number (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((note - 69) / 12)


def semitone_filterbank(
    sample_rate: int, n_fft: int, n_bands: int, lowest_note: int
) -> torch.Tensor:
    """(n_fft // 2 + 1, n_bands) triangles on a log-frequency axis, one per MIDI note from
    ``lowest_note`` up: each rises from the semitone below to its note and falls to the
    semitone above, normalised to unit sum so a band holds the mean power around its note.
    """
    top = lowest_note + n_bands - 1
    if note_frequency(top + 1) > sample_rate / 2:
        raise ValueError(
            f"{n_bands} semitone bands from MIDI note {lowest_note} reach note {top}, whose "
            f"upper edge passes the Nyquist frequency ({sample_rate / 2:g} Hz); "
            "use fewer bands or a lower lowest_note"
        )
    bins = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate, dtype=torch.float64)
    semitones = 12 * torch.log2(bins.clamp(min=1e-6) / note_frequency(0))  # MIDI note of each bin
    notes = torch.arange(lowest_note, top + 1, dtype=torch.float64)
    weights = (1 - (semitones[:, None] - notes[None, :]).abs()).clamp(min=0)
    empty = (weights.sum(dim=0) == 0).nonzero()
    if len(empty):
        note = lowest_note + int(empty[0])
        # a bin falls inside every triangle once bins are closer than the narrowest one's width
        narrowest = note_frequency(lowest_note + 1) - note_frequency(lowest_note - 1)
        needed = 2 ** math.ceil(math.log2(sample_rate / narrowest))
        raise ValueError(
            f"n_fft={n_fft} at {sample_rate} Hz leaves the band of MIDI note {note} without "
            f"an FFT bin; use n_fft >= {needed} or a higher lowest_note"
        )
    return (weights / weights.sum(dim=0)).float()


class LogSemitone(LogFilterbank):
    """Log-compressed power in one band per semitone from ``lowest_note`` (raytag's input,
    not the paper's).

    Why: mel bands are about 31 Hz apart below 1 kHz (96 bands at 16 kHz), wider than a
    semitone below B4 and evenly spaced in Hz there, so a major and a minor third make
    no fixed pattern that the paper's frequency-pooled filters could find. On a semitone
    axis a chord of one quality is the same pattern at every root. The longer STFT this
    needs (2048 points resolve semitones from about C3 up) blurs onsets more than 512.
    """

    def __init__(
        self,
        sample_rate: int = 16_000,
        n_fft: int = 2048,
        hop_length: int = 256,
        n_bands: int = 71,
        lowest_note: int = 48,
        log_gain: float = 10_000.0,
    ) -> None:
        super().__init__(log_gain)
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft,
            hop_length=hop_length,
            power=2.0,
            normalized=True,  # power / sum(window^2): a noise floor reads the same at any n_fft
            center=True,
            pad_mode="constant",
        )
        filterbank = semitone_filterbank(sample_rate, n_fft, n_bands, lowest_note)
        self.register_buffer("filterbank", filterbank)

    def band_power(self, waveform: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bft,fn->bnt", self.spectrogram(waveform), self.filterbank)
