"""A trained model on disk: weights as safetensors, everything else as plain JSON.

This folder layout is what training checkpoints write, what the MLflow registry stores
as the model's artifacts, and what tagging loads. Loading never unpickles code.

    model.safetensors   weights and batch-norm statistics
    raytag.json         {"format", "model" (config), "vocabulary", "audio", "name", "version",
                         "thresholds" (when calibrated: raytag.thresholds)}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from raytag.config import AudioConfig
from raytag.models import TaggingModel, model_from_config
from raytag.thresholds import Thresholds

FORMAT = "raytag-model/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "raytag.json"


@dataclass
class LoadedModel:
    """A ready model with what is needed to serve it."""

    model: TaggingModel
    vocabulary: list[str]
    audio: AudioConfig
    name: str
    version: str
    thresholds: Thresholds | None = None  # None: not calibrated; tagging then decides no tags

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate


def save_model(
    folder: str | Path,
    model: TaggingModel,
    vocabulary: list[str],
    audio: AudioConfig,
    *,
    name: str,
    version: str = "local",
    thresholds: Thresholds | None = None,
) -> Path:
    """Write ``model`` and its serving metadata to ``folder`` (created if missing)."""
    if len(vocabulary) != model.config.n_tags:
        raise ValueError(f"{len(vocabulary)} tags in vocabulary, model has {model.config.n_tags}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE)
    meta = {
        "format": FORMAT,
        "model": model.config_dict(),
        "vocabulary": list(vocabulary),
        "audio": audio.to_dict(),
        "name": name,
        "version": version,
    }
    if thresholds is not None:
        meta["thresholds"] = thresholds.to_dict(vocabulary)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a raytag model folder (no {META_FILE})")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from its JSON config and load its safetensors weights, in eval mode."""
    meta = read_meta(folder)
    model = model_from_config(meta["model"])
    model.load_state_dict(load_file(Path(folder) / WEIGHTS_FILE, device="cpu"))
    model.to(device).eval()
    vocabulary = list(meta["vocabulary"])
    thresholds = meta.get("thresholds")
    return LoadedModel(
        model=model,
        vocabulary=vocabulary,
        audio=AudioConfig.from_dict(meta["audio"]),
        name=meta["name"],
        version=str(meta["version"]),
        thresholds=None if thresholds is None else Thresholds.from_dict(thresholds, vocabulary),
    )
