"""Per-tag decision thresholds: what turns a model's scores into the tags it assigns.

A model carries one threshold per tag of its vocabulary, in vocabulary order, and plain
data saying how they were chosen (``policy``: the rule, the split and manifest they were
calibrated on, ...). They are stored in the model folder's raytag.json, so they travel
with the weights through the MLflow registry; a JSON file can override them for a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raytag.storage import filesystem

__all__ = ["Thresholds", "read_thresholds_file"]


@dataclass(frozen=True)
class Thresholds:
    """One decision threshold per tag (vocabulary order); a tag is assigned to a track
    when its score is at or above its threshold."""

    values: tuple[float, ...]
    policy: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.values)
        if not all(np.isfinite(values)):
            raise ValueError("thresholds must be finite numbers")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "policy", dict(self.policy))

    def check(self, vocabulary: Sequence[str]) -> Thresholds:
        """Self, when there is one threshold per tag of ``vocabulary``."""
        if len(self.values) != len(vocabulary):
            raise ValueError(
                f"{len(self.values)} thresholds for a vocabulary of {len(vocabulary)} tags"
            )
        return self

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Boolean (tracks, tags): which tags each row of ``scores`` is assigned."""
        return np.asarray(scores) >= np.asarray(self.values, dtype=np.float64)

    def tags(self, scores: np.ndarray, vocabulary: Sequence[str]) -> list[list[str]]:
        """The assigned tags' names per row of ``scores``, in vocabulary order."""
        self.check(vocabulary)
        return [[vocabulary[j] for j in np.flatnonzero(row)] for row in self.decide(scores)]

    def to_dict(self, vocabulary: Sequence[str]) -> dict[str, Any]:
        """JSON-ready: ``{"values": {tag: threshold}, "policy": {...}}``, readable by a
        person and independent of tag order."""
        self.check(vocabulary)
        return {"values": dict(zip(vocabulary, self.values, strict=True)), "policy": self.policy}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], vocabulary: Sequence[str]) -> Thresholds:
        """From :meth:`to_dict`'s form (or a bare ``{tag: threshold}`` mapping), for
        exactly the tags of ``vocabulary``."""
        values = record.get("values", record) if isinstance(record, Mapping) else None
        if not isinstance(values, Mapping):  # also a record that is not a mapping at all
            raise ValueError("thresholds must map each tag to a number")
        missing = [tag for tag in vocabulary if tag not in values]
        unknown = sorted(set(values) - set(vocabulary))
        if missing or unknown:
            raise ValueError(
                f"thresholds do not match the vocabulary: missing {missing}, unknown {unknown}"
            )
        try:
            numbers = tuple(float(values[tag]) for tag in vocabulary)
        except (TypeError, ValueError) as err:
            raise ValueError(f"thresholds must be numbers: {err}") from err
        policy = record.get("policy", {}) if "values" in record else {}
        return cls(numbers, policy)


def read_thresholds_file(path: str | Path, vocabulary: Sequence[str]) -> Thresholds:
    """A thresholds JSON file, local or s3:// (:meth:`Thresholds.to_dict`'s form or
    ``{tag: threshold}``), for ``vocabulary``; a clear ValueError when it does not fit."""
    try:
        fs, where = filesystem(str(path))
        with fs.open(where, "r") as handle:
            record = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read thresholds from {path}: {err}") from err
    try:
        return Thresholds.from_dict(record, vocabulary)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
