"""Where a track's patches start: the one policy shared by decoding, training and tagging.

Models see fixed-length patches (3 s by default). A track yields every
non-overlapping full patch, or K evenly spaced ones when ``max_patches`` is set,
which bounds the cost of very long tracks. The trailing partial patch is dropped;
a track shorter than one patch is zero-padded to exactly one.

With ``context`` samples of context (see ``AudioConfig.context_samples``), each patch
also carries that many samples before and after it, zeros past the track's ends, and
a patch counts as full when it ends at most ``context`` samples past the end of the
track. For a model whose context is its STFT hop (musicnn: n_fft / 2 = hop = 256) that
is exactly when the patch's last centred frame is a frame of the whole track, so the
patches are those of a whole-track spectrogram cut into frame patches.
"""

from __future__ import annotations

import numpy as np

from raytag.config import AudioConfig


def patch_starts(
    n_samples: int, patch_samples: int, max_patches: int | None, context: int = 0
) -> np.ndarray:
    """Start offsets (int64) of the patches (context excluded) of an ``n_samples``-long track."""
    if n_samples < 0 or patch_samples <= 0 or context < 0:
        raise ValueError("n_samples and context must be >= 0 and patch_samples > 0")
    n_samples += context  # a patch may end up to `context` samples past the track
    n_full = n_samples // patch_samples
    if n_full <= 1:
        return np.zeros(1, dtype=np.int64)
    if max_patches is None or n_full <= max_patches:
        return np.arange(n_full, dtype=np.int64) * patch_samples
    return np.rint(np.linspace(0, n_samples - patch_samples, max_patches)).astype(np.int64)


def split_patches(
    waveform: np.ndarray, patch_samples: int, max_patches: int | None, context: int = 0
) -> np.ndarray:
    """(samples,) -> (n_patches, patch_samples + 2 * context) float32, following
    :func:`patch_starts`; context past the track's ends is zeros."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if context:
        starts = patch_starts(waveform.shape[0], patch_samples, max_patches, context)
        width = patch_samples + 2 * context
        padded = np.zeros(max(int(starts[-1]) + width, context + waveform.shape[0]), np.float32)
        padded[context : context + waveform.shape[0]] = waveform
        return np.stack([padded[s : s + width] for s in starts])  # s - context in the track
    if waveform.shape[0] < patch_samples:
        padded = np.zeros(patch_samples, dtype=np.float32)
        padded[: waveform.shape[0]] = waveform
        return padded[None, :]
    starts = patch_starts(waveform.shape[0], patch_samples, max_patches)
    return np.stack([waveform[s : s + patch_samples] for s in starts])


def track_patches(waveform: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """A decoded track's patches under ``audio``'s policy: (n_patches, audio.patch_samples)."""
    return split_patches(waveform, audio.core_samples, audio.max_patches, audio.context_samples)


def random_starts(
    n_samples: int, patch_samples: int, n: int, rng: np.random.Generator
) -> np.ndarray | None:
    """Start offsets of ``n`` patches at uniformly random places (training's crops), or
    None for a track no longer than one patch: every crop is then the whole track."""
    if n_samples <= patch_samples:
        return None
    return rng.integers(0, n_samples - patch_samples + 1, size=n)


def random_crops(
    waveform: np.ndarray, patch_samples: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` patches of a decoded track at :func:`random_starts`; a track shorter than one
    patch is zero-padded, as :func:`split_patches` does."""
    waveform = np.asarray(waveform, dtype=np.float32)
    starts = random_starts(waveform.shape[0], patch_samples, n, rng)
    if starts is None:
        return np.repeat(split_patches(waveform, patch_samples, 1), n, axis=0)
    return np.stack([waveform[s : s + patch_samples] for s in starts])
