"""Model registry: ``build_model(name, **overrides)`` in the style of timm.

Every model is a :class:`TaggingModel` (raytag.models.base: what the rest of raytag may rely
on). Presets are named variants of the same code. The ``-small`` presets keep every layer
of the paper's models with fewer filters, for CPU demos and tests; ``-semitone`` swaps
the mel input for raytag's semitone bands (models can then hear major from minor,
docs/learning.md). ``musicnn`` is the architecture of musicnn's pretrained taggers
(raytag.importers.musicnn loads them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from raytag.models.base import ModelConfig, TaggingModel
from raytag.models.musicnn import Musicnn, MusicnnConfig, musicnn_tagger
from raytag.models.tagger import (
    SpectrogramConfig,
    Tagger,
    WaveformConfig,
    spectrogram_tagger,
    waveform_tagger,
)

# arch -> (its config class, the function that builds a model from such a config)
_BUILDERS: dict[str, tuple[type[ModelConfig], Callable[[Any], TaggingModel]]] = {
    "spectrogram": (SpectrogramConfig, spectrogram_tagger),
    "waveform": (WaveformConfig, waveform_tagger),
    "musicnn": (MusicnnConfig, musicnn_tagger),
}

PRESETS: dict[str, ModelConfig] = {
    "spectrogram": SpectrogramConfig(),
    "waveform": WaveformConfig(),
    "spectrogram-small": SpectrogramConfig(num_filt=8, backend_filters=128, dense_units=200),
    "spectrogram-small-semitone": SpectrogramConfig(
        num_filt=8,
        backend_filters=128,
        dense_units=200,
        frequency_scale="semitone",
        n_fft=2048,
        n_mels=71,  # C3 to A#8, the last semitone below 8 kHz
    ),
    "waveform-small": WaveformConfig(
        filters=(32, 32, 32, 64, 64, 64, 128), backend_filters=128, dense_units=200
    ),
    "musicnn": MusicnnConfig(),
}


def list_models() -> list[str]:
    return sorted(PRESETS)


def build_model(name: str, **overrides: Any) -> TaggingModel:
    """A freshly initialised model of preset ``name``; overrides replace config fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    base = PRESETS[name]
    _, builder = _BUILDERS[type(base).arch]
    return builder(replace(base, **overrides))


def model_from_config(config: dict[str, Any]) -> TaggingModel:
    """Rebuild a model from its ``config_dict()`` (plain data, e.g. read from JSON)."""
    fields = dict(config)
    arch = fields.pop("arch")
    if arch not in _BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_BUILDERS))}")
    config_cls, builder = _BUILDERS[arch]
    return builder(config_cls(**fields))


__all__ = [
    "PRESETS",
    "ModelConfig",
    "Musicnn",
    "MusicnnConfig",
    "SpectrogramConfig",
    "Tagger",
    "TaggingModel",
    "WaveformConfig",
    "build_model",
    "list_models",
    "model_from_config",
]
