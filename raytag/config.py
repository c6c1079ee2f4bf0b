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
    """

    sample_rate: int = SAMPLE_RATE
    patch_seconds: float = 3.0
    max_patches: int | None = None
    min_seconds: float = 1.0
    max_seconds: float | None = None

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

    @property
    def patch_samples(self) -> int:
        return round(self.patch_seconds * self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
