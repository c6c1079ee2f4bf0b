"""The metrics and the records that carry them: ROC-AUC and PR-AUC per tag and macro,
undefined values null with the reason (see the package docstring)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True)
class TrackScores:
    """Ground truth and model scores of the tracks that decoded, row-aligned."""

    track_ids: list[str]
    y_true: np.ndarray  # (tracks, tags) 0/1
    y_score: np.ndarray  # (tracks, tags) mean patch sigmoid
    errors: list[dict[str, str]]  # {"track_id", "uri", "error_code", "message"}
    unknown_tags: list[str]  # manifest tags outside the model's vocabulary


@dataclass(frozen=True)
class TagMetrics:
    """One tag's scores; an AUC that is undefined on these tracks is None, with the reason."""

    tag: str
    n_positive: int
    n_negative: int
    roc_auc: float | None = None
    pr_auc: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Metrics:
    """Per-tag and macro ROC-AUC / PR-AUC of a set of tracks."""

    macro_roc_auc: float | None
    macro_pr_auc: float | None
    n_tracks: int
    n_tags: int
    n_tags_scored: int
    per_tag: tuple[TagMetrics, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, keys in field order (the layout of metrics.json)."""
        return asdict(self)


@dataclass(frozen=True)
class Evaluation(Metrics):
    """The metrics of a model, or of a tagging run's scores, on a labelled manifest, and what
    they leave out: tracks that did not decode and tags outside the vocabulary."""

    model: dict[str, str]  # name, version
    manifest: str
    split: str | None
    errors: tuple[dict[str, str], ...]  # track_id, uri, error_code, message
    unknown_tags: tuple[str, ...]
    plots: tuple[str, ...] | None = None  # the PNGs, when asked for
    predictions: str | None = None  # the tagging output whose scores were evaluated

    def to_dict(self) -> dict[str, Any]:
        """As metrics.json holds it: ``plots`` and ``predictions`` only when set."""
        optional = ("plots", "predictions")
        return {k: v for k, v in super().to_dict().items() if v is not None or k not in optional}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Evaluation:
        """What :meth:`to_dict` wrote, read back (e.g. a training run's metrics.json)."""
        values = dict(record, per_tag=tuple(TagMetrics(**row) for row in record["per_tag"]))
        for key in ("errors", "unknown_tags", "plots"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def label_matrix(
    tags: list[list[str] | None], vocabulary: list[str]
) -> tuple[np.ndarray, list[str]]:
    """(tracks, tags) 0/1 ground truth in vocabulary order, and the tags it does not know."""
    index = {tag: i for i, tag in enumerate(vocabulary)}
    y_true = np.zeros((len(tags), len(index)), dtype=np.int8)
    unknown = set()
    for row, track_tags in enumerate(tags):
        for tag in track_tags or []:
            if tag in index:
                y_true[row, index[tag]] = 1
            else:
                unknown.add(tag)
    return y_true, sorted(unknown)


def compute_metrics(y_true: np.ndarray, y_score: np.ndarray, vocabulary: list[str]) -> Metrics:
    """Per-tag and macro ROC-AUC / PR-AUC (undefined values are None)."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.shape[1:] != (len(vocabulary),):
        raise ValueError(
            f"y_true {y_true.shape} and y_score {y_score.shape} must both be "
            f"(tracks, {len(vocabulary)})"
        )
    per_tag = []
    for i, tag in enumerate(vocabulary):
        truth = y_true[:, i] > 0
        positives = int(truth.sum())
        negatives = int(truth.size - positives)
        if positives == 0:
            row = TagMetrics(tag, positives, negatives, reason="no positive tracks")
        elif negatives == 0:
            row = TagMetrics(tag, positives, negatives, reason="no negative tracks")
        else:
            row = TagMetrics(
                tag, positives, negatives,
                roc_auc=float(roc_auc_score(truth, y_score[:, i])),
                pr_auc=float(average_precision_score(truth, y_score[:, i])),
            )  # fmt: skip
        per_tag.append(row)
    scored = [row for row in per_tag if row.roc_auc is not None]
    return Metrics(
        macro_roc_auc=_mean([row.roc_auc for row in scored]),
        macro_pr_auc=_mean([row.pr_auc for row in scored]),
        n_tracks=int(y_true.shape[0]),
        n_tags=len(vocabulary),
        n_tags_scored=len(scored),
        per_tag=tuple(per_tag),
    )


def write_metrics(metrics: Metrics, path: str | Path) -> Path:
    """The metrics as strict JSON (no NaN: undefined values are already null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
