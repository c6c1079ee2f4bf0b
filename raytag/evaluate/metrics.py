"""The metrics and the records that carry them: ROC-AUC and PR-AUC per tag and macro,
undefined values null with the reason (see the package docstring); with thresholds, also
precision, recall and F1 of the tags they assign."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from raytag.thresholds import Thresholds

# The figures at thresholds: absent from metrics.json when no thresholds were applied, so
# an uncalibrated model's metrics.json is what it always was.
MACRO_DECISION_KEYS = ("macro_precision", "macro_recall", "macro_f1")
TAG_DECISION_KEYS = ("threshold", "n_assigned", "precision", "recall", "f1")


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
    """One tag's scores; an AUC that is undefined on these tracks is None, with the reason.

    With a threshold: how many tracks it assigns the tag to, and precision, recall and F1
    of those decisions (precision 0 when it assigns none); None, like the AUCs, when the
    tracks lack positives or negatives of the tag."""

    tag: str
    n_positive: int
    n_negative: int
    roc_auc: float | None = None
    pr_auc: float | None = None
    reason: str | None = None
    threshold: float | None = None
    n_assigned: int | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None


@dataclass(frozen=True, kw_only=True)
class Metrics:
    """Per-tag and macro ROC-AUC / PR-AUC of a set of tracks; with thresholds, macro
    precision, recall and F1 of their decisions over the same tags as the AUCs."""

    macro_roc_auc: float | None
    macro_pr_auc: float | None
    macro_precision: float | None = None
    macro_recall: float | None = None
    macro_f1: float | None = None
    n_tracks: int
    n_tags: int
    n_tags_scored: int
    per_tag: tuple[TagMetrics, ...]

    @property
    def at_thresholds(self) -> bool:
        """Whether thresholds were applied (the decision figures are present)."""
        return any(row.threshold is not None for row in self.per_tag)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, keys in field order (the layout of metrics.json); the decision
        figures only when thresholds were applied."""
        record = asdict(self)
        if not self.at_thresholds:
            for key in MACRO_DECISION_KEYS:
                del record[key]
            for row in record["per_tag"]:
                for key in TAG_DECISION_KEYS:
                    del row[key]
        return record


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


def compute_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    vocabulary: list[str],
    thresholds: Thresholds | None = None,
) -> Metrics:
    """Per-tag and macro ROC-AUC / PR-AUC (undefined values are None); with ``thresholds``,
    also precision, recall and F1 of the tags they assign."""
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
    if thresholds is not None:
        per_tag = _at_thresholds(per_tag, y_true > 0, thresholds.check(vocabulary), y_score)
    scored = [row for row in per_tag if row.roc_auc is not None]
    decided = thresholds is not None
    return Metrics(
        macro_roc_auc=_mean([row.roc_auc for row in scored]),
        macro_pr_auc=_mean([row.pr_auc for row in scored]),
        macro_precision=_mean([row.precision for row in scored]) if decided else None,
        macro_recall=_mean([row.recall for row in scored]) if decided else None,
        macro_f1=_mean([row.f1 for row in scored]) if decided else None,
        n_tracks=int(y_true.shape[0]),
        n_tags=len(vocabulary),
        n_tags_scored=len(scored),
        per_tag=tuple(per_tag),
    )


def _at_thresholds(
    per_tag: list[TagMetrics], truth: np.ndarray, thresholds: Thresholds, y_score: np.ndarray
) -> list[TagMetrics]:
    """``per_tag`` with each tag's threshold and the figures of the decisions it makes."""
    assigned = thresholds.decide(y_score)
    rows = []
    for i, row in enumerate(per_tag):
        figures = {"threshold": thresholds.values[i], "n_assigned": int(assigned[:, i].sum())}
        if row.reason is None:  # both classes present: the figures are defined
            precision, recall, f1, _ = precision_recall_fscore_support(
                truth[:, i], assigned[:, i], average="binary", zero_division=0
            )
            figures |= {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
        rows.append(replace(row, **figures))
    return rows


def write_metrics(metrics: Metrics, path: str | Path) -> Path:
    """The metrics as strict JSON (no NaN: undefined values are already null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
