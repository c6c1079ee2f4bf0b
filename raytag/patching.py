"""Where a track's patches start: the one policy shared by decoding, training and tagging.

Models see fixed-length patches (3 s by default). A track yields every
non-overlapping full patch, or K evenly spaced ones when ``max_patches`` is set,
which bounds the cost of very long tracks. The trailing partial patch is dropped;
a track shorter than one patch is zero-padded to exactly one.
"""

from __future__ import annotations

import numpy as np


def patch_starts(n_samples: int, patch_samples: int, max_patches: int | None) -> np.ndarray:
    """Start offsets (int64) of the patches of an ``n_samples``-long track."""
    if n_samples < 0 or patch_samples <= 0:
        raise ValueError("n_samples must be >= 0 and patch_samples > 0")
    n_full = n_samples // patch_samples
    if n_full <= 1:
        return np.zeros(1, dtype=np.int64)
    if max_patches is None or n_full <= max_patches:
        return np.arange(n_full, dtype=np.int64) * patch_samples
    return np.rint(np.linspace(0, n_samples - patch_samples, max_patches)).astype(np.int64)


def split_patches(waveform: np.ndarray, patch_samples: int, max_patches: int | None) -> np.ndarray:
    """(samples,) -> (n_patches, patch_samples) float32, following :func:`patch_starts`."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.shape[0] < patch_samples:
        padded = np.zeros(patch_samples, dtype=np.float32)
        padded[: waveform.shape[0]] = waveform
        return padded[None, :]
    starts = patch_starts(waveform.shape[0], patch_samples, max_patches)
    return np.stack([waveform[s : s + patch_samples] for s in starts])
