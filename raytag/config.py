"""Plain, serialisable settings shared by every layer (audio, models, jobs).

Everything here is data only: it round-trips through ``asdict``/JSON so a model's
settings can be stored beside its weights without pickling code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class AudioConfig:
    """How a track becomes model input: rate, patch length and the long-track policy.

    ``max_patches=None`` tags every non-overlapping patch of a track; an integer K
    tags K evenly spaced patches, which bounds decode time and memory for long tracks.
    Tracks shorter than one patch but at least ``min_seconds`` long are zero-padded
    to one patch; shorter ones are rejected as ``too_short``.

    ``context_samples`` (default 0: none) widens every patch by that many samples of the
    track on each side, zeros past its ends, while patches still start every
    ``patch_seconds``. A model that frames its input with centred STFT windows then sees
    at the patch edges what a spectrogram of the whole track sees (imported musicnn
    models need this for exact parity); it crops the context off itself.
    """

    sample_rate: int = SAMPLE_RATE
    patch_seconds: float = 3.0
    max_patches: int | None = None
    min_seconds: float = 1.0
    max_seconds: float | None = None
    context_samples: int = 0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.patch_seconds <= 0:
            raise ValueError(f"patch_seconds must be positive, got {self.patch_seconds}")
        if self.max_patches is not None and self.max_patches < 1:
            raise ValueError(f"max_patches must be None or >= 1, got {self.max_patches}")
        if not 0 < self.min_seconds <= self.patch_seconds:
            raise ValueError("min_seconds must be in (0, patch_seconds]")
        if self.max_seconds is not None and self.max_seconds < self.min_seconds:
            raise ValueError("max_seconds must be >= min_seconds")
        if self.context_samples < 0:
            raise ValueError(f"context_samples must be >= 0, got {self.context_samples}")

    @property
    def core_samples(self) -> int:
        """The patch proper, without context: also the step between consecutive patches."""
        return round(self.patch_seconds * self.sample_rate)

    @property
    def patch_samples(self) -> int:
        """Samples in each patch a model receives: the core and its context on both sides."""
        return self.core_samples + 2 * self.context_samples

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
