"""Evaluation: track-level scores over whole tracks, ROC-AUC and PR-AUC per tag and macro.

Metrics follow the auto-tagging literature (MagnaTagATune, MSD): each tag is a binary
problem scored with scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(PR-AUC), and the macro figure is their unweighted mean over tags. A tag whose ground
truth has no positives or no negatives has no defined AUC: it is reported as null with
the reason and left out of the macro mean, never an error, since small test splits of a
21-tag vocabulary often miss a tag.

Tracks are scored as tagging would serve them, but over the whole track: every patch of
every track (``max_patches=None``), sigmoid outputs averaged per track. A track that does
not decode is listed under ``errors`` with its code and left out of the metrics.
:func:`evaluate_predictions` computes the same metrics from the scores a ``raytag tag`` run
wrote instead, so a test set of any size is scored on the cluster.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from raytag.audio import AudioError, decode_patches
from raytag.checkpoint import LoadedModel
from raytag.config import AudioConfig
from raytag.manifest import TRACK_ID, URI
from raytag.models.inference import predict_patches
from raytag.storage import arrow_filesystem
from raytag.tagging.output import (
    ERROR_SCHEMA,
    ERRORS,
    PREDICTIONS,
    SCORES_FIELD,
    read_output_table,
    read_run,
    read_vocabulary,
)

PLOT_FILES = ("per_tag_roc_auc.png", "per_tag_pr_auc.png", "roc_curves.png", "pr_curves.png")


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


def read_labelled_tracks(manifest_uri: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows ``{track_id, uri, tags}`` of a Parquet manifest (local or s3), of one split if given."""
    return _labelled_table(manifest_uri, split).to_pylist()


def _labelled_table(manifest_uri: str, split: str | None) -> pa.Table:
    fs, path = arrow_filesystem(manifest_uri)
    return pq.read_table(
        path,
        filesystem=fs,
        columns=[TRACK_ID, URI, "tags"],
        filters=[("split", "==", split)] if split else None,
    )


def score_tracks(
    loaded: LoadedModel,
    manifest_uri: str,
    split: str | None = None,
    audio: AudioConfig | None = None,
    batch_size: int = 64,
) -> TrackScores:
    """Decode and score every track of the manifest (or split), one after another."""
    audio = audio or replace(loaded.audio, max_patches=None)
    ids, tags, scores, errors = [], [], [], []
    for row in read_labelled_tracks(manifest_uri, split):
        try:
            patches = decode_patches(row["uri"], audio).patches
        except AudioError as error:
            errors.append(
                {
                    "track_id": row["track_id"],
                    "uri": row["uri"],
                    "error_code": str(error.code),
                    "message": error.message,
                }
            )
            continue
        ids.append(row["track_id"])
        tags.append(row["tags"])
        scores.append(predict_patches(loaded.model, patches, batch_size)[0].mean(axis=0))
    y_true, unknown = label_matrix(tags, loaded.vocabulary)
    return TrackScores(
        track_ids=ids,
        y_true=y_true,
        y_score=np.array(scores, dtype=np.float32).reshape(-1, len(loaded.vocabulary)),
        errors=errors,
        unknown_tags=unknown,
    )


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


def evaluate_model(
    loaded: LoadedModel,
    manifest_uri: str,
    split: str | None = None,
    audio: AudioConfig | None = None,
    *,
    plots_dir: str | Path | None = None,
    batch_size: int = 64,
) -> Evaluation:
    """Score the manifest's tracks and compute the metrics; with ``plots_dir``, also write
    the plots there and list their paths under ``plots``."""
    tracks = score_tracks(loaded, manifest_uri, split, audio, batch_size)
    model = {"name": loaded.name, "version": loaded.version}
    return _report(tracks, loaded.vocabulary, model, manifest_uri, split, plots_dir)


def score_predictions(
    output: str, manifest_uri: str, split: str | None = None
) -> tuple[TrackScores, list[str], dict[str, Any]]:
    """The scores a finished ``raytag tag`` run wrote to ``output`` for the manifest's (or
    split's) tracks, with their labels; also the run's vocabulary and model.

    Tagging did the work on the cluster, so this only joins two tables by ``track_id``:
    it is how a test set of millions of tracks gets evaluated. Tracks the run wrote as
    error rows become errors here; a labelled track the run has no row for is an error
    of the call (the run tagged another manifest), as is a run that did not complete.
    """
    run = read_run(output)
    if run is None or run.get("status") != "complete":
        status = "no run" if run is None else f"a run whose status is {run.get('status')!r}"
        raise ValueError(f"{output} holds {status}: evaluate the output of a complete run")
    vocabulary = read_vocabulary(output)
    labels = _labelled_table(manifest_uri, split)
    if pc.count_distinct(labels[TRACK_ID]).as_py() != labels.num_rows:
        raise ValueError(f"{manifest_uri} repeats a track_id; label each track once")
    predicted = read_output_table(output, PREDICTIONS, _SCORED)
    failed = read_output_table(output, ERRORS, ERROR_SCHEMA)
    scored_rows, predicted_rows = _rows_sharing_track_id(labels, predicted)
    failed_rows = _rows_sharing_track_id(labels, failed)[1]
    missing = labels.num_rows - len(scored_rows) - len(failed_rows)
    if missing:
        raise ValueError(
            f"{missing} of the {labels.num_rows} labelled tracks have no row in {output}: "
            "tag the manifest you evaluate"
        )
    scores = predicted["scores"].take(predicted_rows).combine_chunks()
    if pc.any(pc.not_equal(pc.list_value_length(scores), len(vocabulary))).as_py():
        raise ValueError(f"{output} holds scores of another length than its vocabulary")
    scored = labels.take(scored_rows)
    y_true, unknown = label_matrix(scored["tags"].to_pylist(), vocabulary)
    tracks = TrackScores(
        track_ids=scored[TRACK_ID].to_pylist(),
        y_true=y_true,
        y_score=scores.flatten().to_numpy().reshape(-1, len(vocabulary)),
        errors=failed.take(failed_rows).to_pylist(),
        unknown_tags=unknown,
    )
    return tracks, vocabulary, run["model"]


def evaluate_predictions(
    output: str,
    manifest_uri: str,
    split: str | None = None,
    *,
    plots_dir: str | Path | None = None,
) -> Evaluation:
    """The metrics of :func:`evaluate_model`, from the scores a ``raytag tag`` run wrote."""
    tracks, vocabulary, model = score_predictions(output, manifest_uri, split)
    model = {"name": model["name"], "version": model["version"]}
    evaluation = _report(tracks, vocabulary, model, manifest_uri, split, plots_dir)
    return replace(evaluation, predictions=output)


_SCORED = pa.schema([pa.field(TRACK_ID, pa.string()), SCORES_FIELD])


def _rows_sharing_track_id(left: pa.Table, right: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of ``left`` and of ``right`` paired by ``track_id`` (Arrow's hash join
    carries no list columns, so it joins the keys and their row numbers only)."""

    def numbered(table: pa.Table, name: str) -> pa.Table:
        return pa.table({TRACK_ID: table[TRACK_ID], name: np.arange(table.num_rows)})

    pairs = numbered(left, "left").join(numbered(right, "right"), TRACK_ID, join_type="inner")
    return pairs["left"].to_numpy(), pairs["right"].to_numpy()


def _report(
    tracks: TrackScores,
    vocabulary: list[str],
    model: dict[str, str],
    manifest_uri: str,
    split: str | None,
    plots_dir: str | Path | None,
) -> Evaluation:
    metrics = compute_metrics(tracks.y_true, tracks.y_score, vocabulary)
    plots = None
    if plots_dir is not None:
        paths = write_plots(metrics, tracks.y_true, tracks.y_score, plots_dir)
        plots = tuple(str(path) for path in paths)
    return Evaluation(
        **vars(metrics),
        model=model,
        manifest=manifest_uri,
        split=split,
        errors=tuple(tracks.errors),
        unknown_tags=tuple(tracks.unknown_tags),
        plots=plots,
    )


def write_metrics(metrics: Metrics, path: str | Path) -> Path:
    """The metrics as strict JSON (no NaN: undefined values are already null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def write_plots(
    metrics: Metrics, y_true: np.ndarray, y_score: np.ndarray, folder: str | Path
) -> list[Path]:
    """Per-tag ROC-AUC and PR-AUC bars, ROC and PR curves of the scored tags, as PNGs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per_tag = metrics.per_tag
    paths = [
        _bar_chart(per_tag, "roc_auc", metrics.macro_roc_auc, "ROC-AUC", folder / PLOT_FILES[0]),
        _bar_chart(per_tag, "pr_auc", metrics.macro_pr_auc, "PR-AUC", folder / PLOT_FILES[1]),
    ]
    scored = [(i, row) for i, row in enumerate(per_tag) if row.roc_auc is not None]
    paths.append(_curves(scored, y_true, y_score, "roc", folder / PLOT_FILES[2]))
    paths.append(_curves(scored, y_true, y_score, "pr", folder / PLOT_FILES[3]))
    return paths


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _bar_chart(
    per_tag: tuple[TagMetrics, ...], key: str, macro: float | None, label: str, path: Path
) -> Path:
    tags = [row.tag for row in per_tag]
    values = [getattr(row, key) or 0.0 for row in per_tag]  # None: labelled n/a
    fig = Figure(figsize=(8, 0.28 * len(tags) + 2), layout="constrained")
    ax = fig.subplots()
    ax.barh(tags, values, color="tab:blue")
    for y, row in enumerate(per_tag):
        if getattr(row, key) is None:
            ax.text(0.01, y, f"n/a ({row.reason})", va="center", fontsize=7, color="gray")
    if macro is not None:
        ax.axvline(macro, color="tab:red", linestyle="--", label=f"macro {macro:.3f}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_ylim(len(tags) - 0.5, -0.5)  # vocabulary order, top to bottom
    ax.set_xlabel(label)
    ax.set_title(f"{label} per tag")
    return _save(fig, path)


def _curves(
    scored: list[tuple[int, TagMetrics]],
    y_true: np.ndarray,
    y_score: np.ndarray,
    kind: str,
    path: Path,
) -> Path:
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    colours = colormaps["tab20"].colors
    for k, (i, row) in enumerate(scored):
        truth, score = np.asarray(y_true)[:, i] > 0, np.asarray(y_score)[:, i]
        if kind == "roc":
            x, y, _ = roc_curve(truth, score)
            value = row.roc_auc
        else:
            y, x, _ = precision_recall_curve(truth, score)
            value = row.pr_auc
        style = {"color": colours[k % 20], "linestyle": ("-", "--", ":")[k // 20 % 3]}
        ax.plot(x, y, linewidth=1, label=f"{row.tag} ({value:.2f})", **style)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves")
    else:
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curves")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    if not scored:
        ax.text(0.5, 0.5, "no tag has both classes", ha="center", color="gray")
    elif len(scored) <= 25:
        ax.legend(fontsize=6, loc="lower right" if kind == "roc" else "lower left", ncol=2)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    """A bare Figure renders with Agg: no pyplot state, no display, safe in Ray workers."""
    fig.savefig(path, dpi=100)
    return path
