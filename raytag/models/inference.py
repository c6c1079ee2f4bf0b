"""Track-level prediction: patches in, averaged sigmoid scores and embeddings out.

Patches of many tracks are run as one batch (that is what keeps a GPU busy), then
averaged back per track, as the reference models do at test time.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from raytag.config import AudioConfig
from raytag.models.base import TaggingModel
from raytag.patching import track_patches

# TaggingModel.embed or a stand-in for it: patches -> (logits, embeddings)
Embed = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrackPrediction:
    scores: np.ndarray  # (n_tags,) mean of patch sigmoids
    embedding: np.ndarray  # (dense_units,) mean of patch embeddings
    n_patches: int


# glibc's malloc settings for processes that run the model: one arena for every thread,
# no mmap'd blocks, no trimming. Each as (GLIBC_TUNABLES name, mallopt(3) parameter, value).
_MALLOC_SETTINGS = (("arena_max", -8, 1), ("mmap_max", -4, 0), ("trim_threshold", -1, 2**31 - 1))
_MALLOC_TUNABLES = ":".join(f"glibc.malloc.{name}={value}" for name, _, value in _MALLOC_SETTINGS)


def model_process_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Environment for the processes that run the model (tagging actors, training
    workers), so that glibc's malloc keeps freed memory for the next forward pass.

    By default glibc serves blocks above a threshold that adapts at run time (up to 32 MB)
    with fresh mmap'd pages and hands them back on free, and a thread other than the main
    one (Ray runs actors' batches and training loops in one) allocates from an arena whose
    heaps go back to the kernel whenever they empty. Either way a forward pass whose
    activations are tens of MB (the waveform model's first layers) page-faults and zeroes
    them again on every call, slower per patch by an amount that differs from process to
    process (measured in docs/benchmarks.md). glibc reads these settings only when a
    process starts, so they go to Ray as the actors' and workers' runtime environment. A
    GLIBC_TUNABLES already in ``environ`` is kept after ours, so an operator's own
    settings win.
    """
    own = environ.get("GLIBC_TUNABLES")
    return {"GLIBC_TUNABLES": f"{_MALLOC_TUNABLES}:{own}" if own else _MALLOC_TUNABLES}


def keep_freed_memory() -> bool:
    """:func:`model_process_env`'s malloc settings for a process already running that runs
    the model itself (``raytag evaluate``). Made after start, they hold for its main
    thread, where such a command runs its forward passes, but not for arenas other threads
    already hold (what they gain is measured in docs/benchmarks.md). False where the C
    library has no mallopt (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return False
    return all(mallopt(option, value) == 1 for _, option, value in _MALLOC_SETTINGS)


def bf16_autocast(device: torch.device, bf16: bool = True, on_cpu: bool = False):
    """bf16 autocast on GPU (training and inference alike); on CPU only with ``on_cpu``.

    CPUs are opt-in: bf16 moves scores (as on GPU, where it is the default), and only CPUs
    with bf16 dot products (AVX512-BF16, AMX) gain speed; CPUs that must emulate them are
    likely slower. Measured in docs/benchmarks.md.
    """
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if bf16 and on_cpu and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def compiled_embed(model: TaggingModel) -> Embed:
    """``model.embed`` through torch.compile (inductor), for any batch size.

    Opt-in: compiling costs time once per process, and whether it pays back depends on the
    model and the device (parity with eager and speed measured in docs/benchmarks.md).
    """
    return torch.compile(model.embed, dynamic=True)


@torch.inference_mode()
def predict_patches(
    model: TaggingModel,
    patches: np.ndarray | torch.Tensor,
    batch_size: int = 64,
    bf16: bool = True,
    embed: Embed | None = None,
    cpu_bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, samples) patches -> (sigmoid scores (n, n_tags), embeddings (n, dense_units)).

    Runs in chunks of ``batch_size`` on the model's device; bf16 autocast on GPU, and on
    CPU with ``cpu_bf16``. ``embed`` replaces ``model.embed`` (e.g. :func:`compiled_embed`).
    """
    device = next(model.parameters()).device
    embed = embed or model.embed
    patches = torch.as_tensor(patches, dtype=torch.float32)
    scores, embeddings = [], []
    for chunk in patches.split(batch_size):
        with bf16_autocast(device, bf16, on_cpu=cpu_bf16):
            logits, embedding = embed(chunk.to(device, non_blocking=True))
        scores.append(torch.sigmoid(logits.float()).cpu())
        embeddings.append(embedding.float().cpu())
    return torch.cat(scores).numpy(), torch.cat(embeddings).numpy()


def average_by_track(values: np.ndarray, counts: np.ndarray | list[int]) -> np.ndarray:
    """Mean of consecutive row groups: rows of track i are the next ``counts[i]`` rows."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != values.shape[0] or (counts < 1).any():
        raise ValueError("counts must be positive and sum to the number of rows")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(values, offsets, axis=0) / counts[:, None]


def predict_track(
    model: TaggingModel, waveform: np.ndarray, audio: AudioConfig, batch_size: int = 64
) -> TrackPrediction:
    """Score one decoded track (mono float32 at the model's rate) with the patch policy."""
    patches = track_patches(waveform, audio)
    scores, embeddings = predict_patches(model, patches, batch_size)
    return TrackPrediction(scores.mean(axis=0), embeddings.mean(axis=0), len(patches))
