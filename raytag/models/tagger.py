"""The paper's models: features -> front-end -> shared back-end, waveform in, logits out.

Each model has a small frozen config dataclass (plain data: it is stored beside the
weights and rebuilds the model without pickling code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from raytag.models.backend import BackEnd
from raytag.models.base import TaggingModel
from raytag.models.features import LogMel, LogSemitone
from raytag.models.frontends import SpectrogramFrontEnd, WaveformFrontEnd
from raytag.models.layers import he_init


@dataclass(frozen=True)
class BackEndConfig:
    """Settings of the shared back-end; every model config extends these."""

    n_tags: int = 50
    backend_filters: int = 512
    dense_units: int = 500
    dropout: float = 0.5
    sample_rate: int = 16_000
    context_samples: ClassVar[int] = 0  # the paper's models frame each patch on its own


@dataclass(frozen=True)
class SpectrogramConfig(BackEndConfig):
    """``frequency_scale`` "mel" is the paper's input; "semitone" is raytag's
    (:class:`~raytag.models.features.LogSemitone`), whose ``n_mels`` bands are semitones
    from MIDI note ``lowest_note`` up and which needs a longer STFT (``n_fft`` 2048)."""

    arch: ClassVar[str] = "spectrogram"
    num_filt: int = 16
    n_mels: int = 96  # input bands, whatever the frequency scale
    n_fft: int = 512
    hop_length: int = 256
    frequency_scale: str = "mel"
    lowest_note: int = 48  # C3; the semitone scale only
    # Features are log10(1 + log_gain * band power). The paper's 10,000 suits audio near
    # full scale; on quieter audio most bins sit in the near-linear part below the knee.
    log_gain: float = 10_000.0
    # Heights of the timbral filters, as fractions of the input bands. The paper's tall
    # filters see most of the spectrum at once; on semitones 0.9 spans 63 of 71 bands.
    timbral_heights: tuple[float, ...] = (0.9, 0.4)

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep the config hashable and exact.
        object.__setattr__(self, "timbral_heights", tuple(self.timbral_heights))
        if not self.timbral_heights or not all(0 < h <= 1 for h in self.timbral_heights):
            raise ValueError(
                f"timbral_heights {self.timbral_heights} must be fractions of the bands in (0, 1]"
            )
        if self.frequency_scale not in FEATURES:
            known = ", ".join(sorted(FEATURES))
            raise ValueError(f"unknown frequency_scale {self.frequency_scale!r}; known: {known}")


@dataclass(frozen=True)
class WaveformConfig(BackEndConfig):
    arch: ClassVar[str] = "waveform"
    filters: tuple[int, ...] = (64, 64, 64, 128, 128, 128, 256)

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep the config hashable and exact.
        object.__setattr__(self, "filters", tuple(self.filters))


class Tagger(TaggingModel):
    """A front-end (with its features) and the shared back-end: the waveform and
    spectrogram models of the paper."""

    HEAD = ("backend.dropout", "backend.dense", "backend.dense_bn", "backend.classifier")
    CLASSIFIER = "backend.classifier"

    def __init__(self, config: BackEndConfig, features: nn.Module, frontend: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.features = features
        self.frontend = frontend
        self.backend = BackEnd(
            frontend.out_channels,
            config.n_tags,
            filters=config.backend_filters,
            dense_units=config.dense_units,
            dropout=config.dropout,
        )
        self.apply(he_init)

    def encode(self, waveform: Tensor) -> Tensor:
        return self.backend.pool(self.frontend(self.features(waveform)))

    def head(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        return self.backend.head(pooled)


def _log_mel(config: SpectrogramConfig) -> nn.Module:
    c = config
    return LogMel(c.sample_rate, c.n_fft, c.hop_length, c.n_mels, c.log_gain)


def _log_semitone(config: SpectrogramConfig) -> nn.Module:
    c = config
    return LogSemitone(c.sample_rate, c.n_fft, c.hop_length, c.n_mels, c.lowest_note, c.log_gain)


FEATURES = {"mel": _log_mel, "semitone": _log_semitone}


def spectrogram_tagger(config: SpectrogramConfig) -> Tagger:
    features = FEATURES[config.frequency_scale](config)
    frontend = SpectrogramFrontEnd(config.num_filt, config.n_mels, config.timbral_heights)
    return Tagger(config, features, frontend)


def waveform_tagger(config: WaveformConfig) -> Tagger:
    return Tagger(config, nn.Identity(), WaveformFrontEnd(config.filters))
