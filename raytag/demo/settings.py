"""What a demo builds: the catalogue, the model and how it tags."""

from __future__ import annotations

from dataclasses import dataclass

from raytag.settings import require_at_least, setting

MIN_TRACKS = 16  # the smallest catalogue the demo is tested with (tests/test_demo.py)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes and knobs, recorded in its report; each field is an option of
    ``raytag demo`` (:mod:`raytag.settings`). A run with other settings trains a new
    champion; with the same ones it reuses what an earlier run made."""

    n_tracks: int = setting(300, "Labelled tracks.", flag="--tracks")
    duration_s: float = setting(8.0, "Seconds each.", flag="--duration")
    epochs: int = setting(15, "Training epochs at most.")
    warm_start: bool = setting(
        True,
        "Start from musicnn-mtt's weights, encoder frozen, and train a head for the demo's "
        "tags (scores better in the demo's minutes: docs/learning.md); off: train --model "
        "from scratch.",
    )
    model: str = setting("spectrogram-small", "Model preset, without --warm-start.")
    batch_size: int = setting(16, "Patches per training step.")
    patches_per_track: int = setting(2, "Random training patches per track per epoch.")
    real_tracks: int = setting(8, "Real music tracks to tag.")
    max_patches: int = setting(8, "Patches per tagged track.")
    seed: int = setting(0, "Seed of the catalogue and the training.")

    def __post_init__(self) -> None:
        # Checked before the demo starts MLflow, Ray or the catalogue: --epochs 0 would
        # otherwise end minutes later in "training produced no checkpoint".
        from raytag.catalogue.build import DURATION_RANGE_S

        require_at_least(self, MIN_TRACKS, "n_tracks")
        require_at_least(self, 1, "epochs", "batch_size", "patches_per_track", "max_patches")
        require_at_least(self, 0, "real_tracks")
        shortest, longest = DURATION_RANGE_S
        if not shortest <= self.duration_s <= longest:
            raise ValueError(
                f"duration_s must be in [{shortest:g}, {longest:g}] seconds "
                f"(got {self.duration_s:g})"
            )
