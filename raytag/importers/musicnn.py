"""Import musicnn's pretrained MTT and MSD taggers, without TensorFlow.

The musicnn 0.1.0 wheel (ISC licence, on PyPI) carries TensorFlow 1 checkpoints of
``MTT_musicnn`` (50 MagnaTagATune tags) and ``MSD_musicnn`` (50 Million Song Dataset
tags). This module reads them from the wheel (or an unpacked copy) with the pure-Python
bundle reader, maps every tensor onto :class:`~raytag.models.musicnn.Musicnn`, and
writes raytag model folders, optionally registered in MLflow, so that tagging and
evaluation use them like any trained raytag model.

An imported model carries musicnn's own patching in its ``AudioConfig``: non-overlapping
patches of 187 frames (47,872 samples, 2.992 s), the trailing partial patch dropped,
and one STFT hop of context on each side, so its patches frame exactly like musicnn's
whole-track spectrogram; the track-level score is the mean of the patch sigmoids, as
musicnn's ``top_tags`` computes it.

The wheel is fetched with ``pip download --no-deps musicnn==0.1.0`` (musicnn's own
dependency pins do not install on Python 3.11) and checked against its SHA-256.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raytag.checkpoint import save_model
from raytag.config import AudioConfig
from raytag.importers.tf_checkpoint import CheckpointError, read_checkpoint, read_index
from raytag.models.musicnn import Musicnn, MusicnnConfig

__all__ = [
    "AUDIO",
    "MODELS",
    "WHEEL_NAME",
    "CheckpointError",
    "ImportSpec",
    "check_wheel",
    "default_cache_dir",
    "ensure_wheel",
    "write_model_folders",
    "load_musicnn",
    "read_vocabulary",
    "write_model_folder",
]

PACKAGE = "musicnn==0.1.0"
WHEEL_NAME = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
DATA_FILE = ".data-00000-of-00001"  # musicnn saved with an empty checkpoint basename
INDEX_FILE = ".index"

# musicnn: n_frames = time_to_frames(3 s) + 1 = 187, patches advance by n_frames, and the
# spectrogram is of the whole track (centred frames, zero padding): one hop of context.
PATCH_FRAMES = 187
AUDIO = AudioConfig(
    patch_seconds=PATCH_FRAMES * 256 / 16_000, max_patches=None, context_samples=256
)


@dataclass(frozen=True)
class ImportSpec:
    checkpoint: str  # folder in the wheel's musicnn package
    labels: str  # list in musicnn/configuration.py
    registered_name: str


MODELS: dict[str, ImportSpec] = {
    "mtt": ImportSpec("MTT_musicnn", "MTT_LABELS", "musicnn-mtt"),
    "msd": ImportSpec("MSD_musicnn", "MSD_LABELS", "musicnn-msd"),
}

# Optimiser state saved beside the weights: left out on purpose, everything else is used.
_OPTIMISER_SUFFIXES = ("/Adam", "/Adam_1")
_OPTIMISER_NAMES = {"beta1_power", "beta2_power"}


# -- the wheel -----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$RAYTAG_CACHE``, else ``$XDG_CACHE_HOME/raytag`` or ``~/.cache/raytag``."""
    if os.environ.get("RAYTAG_CACHE"):
        return Path(os.environ["RAYTAG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raytag"


def ensure_wheel(cache_dir: str | Path | None = None) -> Path:
    """The musicnn wheel in ``cache_dir``, fetched with pip on first use; SHA-256 checked."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    wheel = folder / WHEEL_NAME
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".pip-") as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                 "--only-binary=:all:", PACKAGE, "-d", tmp],
                check=True,
            )  # fmt: skip
            check_wheel(Path(tmp) / WHEEL_NAME)
            os.replace(Path(tmp) / WHEEL_NAME, wheel)  # whole or absent, for concurrent runs
    return check_wheel(wheel)


def check_wheel(wheel: str | Path) -> Path:
    """``wheel`` if it is byte for byte the musicnn 0.1.0 wheel on PyPI, else raise."""
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise CheckpointError(f"{wheel}: SHA-256 {digest} is not that of {WHEEL_NAME}")
    return Path(wheel)


class _Source:
    """Files of the musicnn package: in the wheel, an unpacked wheel or site-packages
    (a folder holding ``musicnn/``), or the ``musicnn/`` package folder itself."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_file():
            if not zipfile.is_zipfile(self.path):
                raise CheckpointError(f"{self.path}: not a wheel (zip) file")
            self.root: Path | None = None
        elif (self.path / "musicnn").is_dir():
            self.root = self.path / "musicnn"
        elif (self.path / "configuration.py").exists():
            self.root = self.path
        else:
            raise FileNotFoundError(f"{self.path}: no musicnn wheel or package here")

    def read(self, relative: str) -> bytes:
        try:
            if self.root is not None:
                return (self.root / relative).read_bytes()
            with zipfile.ZipFile(self.path) as wheel:
                return wheel.read(f"musicnn/{relative}")
        except (KeyError, FileNotFoundError) as err:
            raise CheckpointError(f"{self.path}: musicnn/{relative} is missing") from err


def read_vocabulary(source: str | Path, labels: str) -> list[str]:
    """A tag list of musicnn's ``configuration.py``, read as data (the module is not run)."""
    tree = ast.parse(_Source(source).read("configuration.py"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == labels for t in node.targets
        ):
            vocabulary = ast.literal_eval(node.value)
            if not (isinstance(vocabulary, list) and all(isinstance(t, str) for t in vocabulary)):
                raise CheckpointError(f"{labels} is not a list of tags")
            return vocabulary
    raise CheckpointError(f"{labels} not found in musicnn/configuration.py")


# -- the mapping ---------------------------------------------------------------------


def _conv2d(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)  # TF (time, freq, in, out) -> (out, in, time, freq)


def _conv1d(kernel: np.ndarray) -> np.ndarray:
    # The mid-end's "conv2d" spans all channels: TF (time, channels, 1, out) -> (out, in, time)
    if kernel.ndim != 4 or kernel.shape[2] != 1:
        raise CheckpointError(f"mid-end kernel of shape {kernel.shape}")
    return kernel[:, :, 0, :].transpose(2, 1, 0)


def _dense(kernel: np.ndarray) -> np.ndarray:
    return kernel.T  # TF (in, out) -> (out, in)


def _tf_name(layer: str, index: int) -> str:
    """TF 1 layer names: the first is ``conv2d``, then ``conv2d_1``, ... in creation order."""
    return layer if index == 0 else f"{layer}_{index}"


def _mapping(config: MusicnnConfig) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """PyTorch state-dict key -> (TF variable, transform), in musicnn's creation order."""
    timbral = [f"timbral.{i}" for i in range(len(config.timbral_widths))]
    temporal = [f"temporal.{i}" for i in range(len(config.temporal_lengths))]
    midend = [f"midend.{i}" for i in range(3)]
    convs = [(m, _conv2d) for m in timbral + temporal] + [(m, _conv1d) for m in midend]
    norms = ["input_bn", *(f"{m}.bn" for m in timbral + temporal + midend)]
    norms += ["pool_bn", "dense_bn"]
    mapping: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {}
    for i, (module, transform) in enumerate(convs):
        mapping[f"{module}.conv.weight"] = (f"{_tf_name('conv2d', i)}/kernel", transform)
        mapping[f"{module}.conv.bias"] = (f"{_tf_name('conv2d', i)}/bias", np.asarray)
    for i, module in enumerate(norms):
        tf = _tf_name("batch_normalization", i)
        for ours, theirs in (
            ("weight", "gamma"),
            ("bias", "beta"),
            ("running_mean", "moving_mean"),
            ("running_var", "moving_variance"),
        ):
            mapping[f"{module}.{ours}"] = (f"{tf}/{theirs}", np.asarray)
    for i, module in enumerate(["dense", "output"]):
        mapping[f"{module}.weight"] = (f"{_tf_name('dense', i)}/kernel", _dense)
        mapping[f"{module}.bias"] = (f"{_tf_name('dense', i)}/bias", np.asarray)
    return mapping


def _is_optimiser_state(name: str) -> bool:
    return name in _OPTIMISER_NAMES or name.endswith(_OPTIMISER_SUFFIXES)


def load_musicnn(source: str | Path, checkpoint: str = "MTT_musicnn") -> Musicnn:
    """A :class:`Musicnn` with the weights of ``checkpoint`` (``MTT_musicnn``,
    ``MSD_musicnn``), in eval mode, with one hop of patch context (see :data:`AUDIO`).

    Every model tensor of the checkpoint is used exactly once with its exact shape, and
    every weight and batch-norm statistic of the model comes from it, or this raises.
    """
    files = _Source(source)
    index = files.read(f"{checkpoint}/{INDEX_FILE}")
    data = files.read(f"{checkpoint}/{DATA_FILE}")
    entries = read_index(index)
    n_tags = entries["dense_1/bias"].shape[0] if "dense_1/bias" in entries else 0
    model = Musicnn(MusicnnConfig(n_tags=n_tags, context_samples=AUDIO.context_samples))
    mapping = _mapping(model.config)
    tensors = read_checkpoint(index, data, {tf for tf, _ in mapping.values()})
    unused = sorted(
        name for name in entries if name not in tensors and not _is_optimiser_state(name)
    )
    if unused:
        raise CheckpointError(f"{checkpoint}: tensors not mapped: {', '.join(unused)}")
    state = model.state_dict()
    expected = {k for k in state if not k.startswith("features.")}
    expected -= {k for k in expected if k.endswith("num_batches_tracked")}
    if expected != set(mapping):
        raise CheckpointError(f"mapping does not cover the model: {expected ^ set(mapping)}")
    for key, (tf, transform) in mapping.items():
        value = np.ascontiguousarray(transform(tensors[tf]))
        if tuple(value.shape) != tuple(state[key].shape):
            shape = tuple(state[key].shape)
            raise CheckpointError(
                f"{checkpoint}: {tf} {tensors[tf].shape} does not fit {key} {shape}"
            )
        state[key] = torch.from_numpy(value.astype(np.float32))
    model.load_state_dict(state)
    return model.eval()


# -- model folders and the registry --------------------------------------------------


def write_model_folder(source: str | Path, key: str, folder: str | Path) -> Path:
    """Write the raytag model folder of ``MODELS[key]`` (weights, vocabulary, patching)."""
    spec = MODELS[key]
    model = load_musicnn(source, spec.checkpoint)
    vocabulary = read_vocabulary(source, spec.labels)
    return save_model(
        folder, model, vocabulary, AUDIO, name=spec.registered_name, version="musicnn-0.1.0"
    )


def write_model_folders(
    source: str | Path, out: str | Path, keys: Iterable[str] = ("mtt", "msd")
) -> dict[str, Path]:
    """One folder per model, ``out/<registered name>``; registering them is the caller's
    (the CLI's) job, since the registry sits on this module's floor."""
    folders = {}
    for key in keys:
        if key not in MODELS:
            raise ValueError(f"unknown musicnn model {key!r}; known: {', '.join(MODELS)}")
        folders[key] = write_model_folder(source, key, Path(out) / MODELS[key].registered_name)
    return folders
