"""The training data: manifest -> Ray Data decode on CPU (once, cached in the object store,
or streamed every epoch) -> fresh random patches per track per epoch (train) or fixed ones
(valid), which ``get_dataset_shard`` hands to the workers, an equal share to each.

Every patch row is ``{"patch", "target", "track_id"}``: the track id travels with the
patch so that a worker can record which tracks its shard held (``record_track_ids``)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from raytag import storage
from raytag.audio import AudioError, decode_patches, decode_random_patches, decode_track
from raytag.config import AudioConfig
from raytag.patching import random_crops, split_patches
from raytag.train.config import TrainConfig

log = logging.getLogger(__name__)


def manifest_vocabulary(manifest: str) -> list[str]:
    """Sorted union of every tag in a labelled manifest (reads only the ``tags`` column)."""
    fs, path = storage.arrow_filesystem(manifest)
    tags = pq.ParquetDataset(path, filesystem=fs).read(columns=["tags"]).column("tags")
    return sorted(t for t in pc.unique(pc.list_flatten(tags)).to_pylist() if t)


def read_split(manifest: str, split: str) -> ray.data.Dataset:
    fs, path = storage.arrow_filesystem(manifest)
    ds = ray.data.read_parquet(path, filesystem=fs)
    return ds.select_columns(["track_id", "uri", "tags", "split"]).filter(
        expr=col("split") == split
    )


class DecodeLabelled:
    """Decode whole tracks and turn tag lists into multi-hot targets; undecodable tracks
    are dropped from training with a warning (the tagging job is what accounts for them),
    but storage that does not answer fails the work rather than thinning the epoch.
    Rows: ``{"waveform", "target", "track_id"}``."""

    def __init__(self, vocabulary: list[str], audio: AudioConfig) -> None:
        self.index = {tag: i for i, tag in enumerate(vocabulary)}
        self.audio = audio

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        decoded, targets, track_ids = [], [], []
        for uri, tags, track_id in zip(batch["uri"], batch["tags"], batch["track_id"], strict=True):
            try:
                decoded.append(self.decode(uri))
            except AudioError as error:
                if storage.unreachable(error):  # the storage's fault, not the track's
                    raise
                log.warning("skipping %s in training: %s (%s)", track_id, error.code, error.message)
                continue
            target = np.zeros(len(self.index), dtype=np.float32)
            target[[self.index[t] for t in tags if t in self.index]] = 1.0
            targets.append(target)
            track_ids.append(track_id)
        return self.rows(decoded, targets, track_ids)

    def decode(self, uri: str) -> np.ndarray:
        return decode_track(uri, self.audio)

    def rows(
        self, decoded: list[np.ndarray], targets: list[np.ndarray], track_ids: list[str]
    ) -> dict[str, Any]:
        return {
            "waveform": _ragged(decoded),
            "target": np.asarray(targets, np.float32),
            "track_id": np.asarray(track_ids, dtype=object),
        }


class DecodeLabelledPatches(DecodeLabelled):
    """Decode only the patches one pass needs: ``per_track`` random crops (training: new
    ones every epoch) or evenly spaced fixed ones (validation). The streaming path: a
    crop of a long track costs a crop's decoding, not the track's."""

    def __init__(
        self, vocabulary: list[str], audio: AudioConfig, per_track: int, random: bool
    ) -> None:
        super().__init__(vocabulary, audio)
        self.per_track = per_track
        self.random = random

    def decode(self, uri: str) -> np.ndarray:
        if self.random:
            rng = np.random.default_rng()
            return decode_random_patches(uri, self.audio, self.per_track, rng).patches
        return decode_patches(uri, replace(self.audio, max_patches=self.per_track)).patches

    def rows(
        self, decoded: list[np.ndarray], targets: list[np.ndarray], track_ids: list[str]
    ) -> dict[str, Any]:
        if not decoded:
            width = self.audio.patch_samples
            return {
                "patch": np.zeros((0, width), np.float32),
                "target": np.zeros((0, len(self.index)), np.float32),
                "track_id": np.zeros(0, dtype=object),
            }
        counts = [len(p) for p in decoded]
        return {
            "patch": np.concatenate(decoded),
            "target": np.repeat(np.asarray(targets, np.float32), counts, axis=0),
            "track_id": np.repeat(np.asarray(track_ids, dtype=object), counts),
        }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


class RandomPatches:
    """A fresh random crop per track every time the dataset is iterated (every epoch)."""

    def __init__(self, patch_samples: int, per_track: int) -> None:
        self.patch_samples = patch_samples
        self.per_track = per_track

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng()
        crops = [
            random_crops(w, self.patch_samples, self.per_track, rng) for w in batch["waveform"]
        ]
        return {
            "patch": np.concatenate(crops),
            "target": np.repeat(batch["target"], self.per_track, axis=0),
            "track_id": np.repeat(batch["track_id"], self.per_track),
        }


class FixedPatches:
    """Evenly spaced patches, the same every epoch, so validation losses are comparable."""

    def __init__(self, patch_samples: int, per_track: int) -> None:
        self.patch_samples = patch_samples
        self.per_track = per_track

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        patches, targets, track_ids = [], [], []
        for waveform, target, track_id in zip(
            batch["waveform"], batch["target"], batch["track_id"], strict=True
        ):
            track_patches = split_patches(waveform, self.patch_samples, self.per_track)
            patches.extend(track_patches)
            targets.extend([target] * len(track_patches))
            track_ids.extend([track_id] * len(track_patches))
        return {
            "patch": np.stack(patches),
            "target": np.stack(targets),
            "track_id": np.asarray(track_ids, dtype=object),
        }


def build_datasets(
    config: TrainConfig, vocabulary: list[str], audio: AudioConfig
) -> dict[str, ray.data.Dataset]:
    """Decoded tracks, cropped afresh every epoch (train) or at fixed places (valid).

    With ``cache_decoded`` the decoded audio is kept in Ray's object store after the first
    pass (right for catalogues whose audio fits in the cluster's memory); without it every
    epoch streams and decodes only the patches it uses, which scales to any catalogue size.
    """
    if not config.cache_decoded:
        crops = DecodeLabelledPatches(vocabulary, audio, config.patches_per_track, random=True)
        fixed = DecodeLabelledPatches(vocabulary, audio, config.val_patches_per_track, False)
        return {
            split: read_split(config.manifest, split).map_batches(stage, batch_size=8, num_cpus=1)
            for split, stage in (("train", crops), ("valid", fixed))
        }
    decoder = DecodeLabelled(vocabulary, audio)
    decoded = {
        split: read_split(config.manifest, split)
        .map_batches(decoder, batch_size=8, num_cpus=1)
        .materialize()
        for split in ("train", "valid")
    }
    for split, ds in decoded.items():
        if ds.count() == 0:
            raise ValueError(f"no decodable {split!r} tracks in {config.manifest}")
    return {
        "train": decoded["train"].map_batches(
            RandomPatches(audio.patch_samples, config.patches_per_track), batch_size=16
        ),
        "valid": decoded["valid"].map_batches(
            FixedPatches(audio.patch_samples, config.val_patches_per_track), batch_size=16
        ),
    }
