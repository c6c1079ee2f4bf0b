"""Where the scores come from (a model run over the manifest's tracks, or the output of a
finished tagging run), and the evaluation they make: at the model's thresholds when it
has them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raytag.audio import AudioError, decode_patches
from raytag.checkpoint import LoadedModel
from raytag.config import AudioConfig
from raytag.evaluate.metrics import Evaluation, TrackScores, compute_metrics, label_matrix
from raytag.evaluate.plots import write_plots
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
    read_thresholds,
    read_vocabulary,
    recorded_thresholds,
)
from raytag.thresholds import Thresholds


def read_labelled_tracks(manifest_uri: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows ``{track_id, uri, tags}`` of a Parquet manifest (local or s3), of one split if given."""
    return _labelled_table(manifest_uri, split).to_pylist()


def labelled_splits(manifest_uri: str) -> list[str]:
    """The splits a labelled manifest names, sorted: for errors that say what is there."""
    dataset = _labelled_dataset(manifest_uri, None)
    if "split" not in dataset.schema.names:
        return []
    splits = dataset.read(columns=["split"])["split"]
    return sorted(value for value in pc.unique(splits).to_pylist() if value is not None)


def _labelled_table(manifest_uri: str, split: str | None) -> pa.Table:
    dataset = _labelled_dataset(manifest_uri, split)
    return dataset.read(columns=[TRACK_ID, URI, "tags"])


def _labelled_dataset(manifest_uri: str, split: str | None) -> pq.ParquetDataset:
    """The manifest's files, only the rows of ``split`` if given; a ValueError naming the
    missing columns when it is not a labelled manifest."""
    fs, path = arrow_filesystem(manifest_uri)
    try:
        dataset = pq.ParquetDataset(
            path, filesystem=fs, filters=[("split", "==", split)] if split else None
        )
    except FileNotFoundError as error:
        raise ValueError(f"no manifest at {manifest_uri}") from error
    needed = [TRACK_ID, URI, "tags", *(["split"] if split else [])]
    missing = [name for name in needed if name not in dataset.schema.names]
    if missing:
        raise ValueError(
            f"{manifest_uri} has no {' or '.join(missing)} column: labelled tracks need "
            f"{', '.join(needed)}"
        )
    return dataset


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


def evaluate_model(
    loaded: LoadedModel,
    manifest_uri: str,
    split: str | None = None,
    audio: AudioConfig | None = None,
    *,
    thresholds: Thresholds | None = None,
    plots_dir: str | Path | None = None,
    batch_size: int = 64,
) -> Evaluation:
    """Score the manifest's tracks and compute the metrics, at ``thresholds`` or else the
    model's own (none when it is not calibrated); with ``plots_dir``, also write the plots
    there and list their paths under ``plots``."""
    tracks = score_tracks(loaded, manifest_uri, split, audio, batch_size)
    model = {"name": loaded.name, "version": loaded.version}
    return evaluate_tracks(
        tracks, loaded.vocabulary, model, manifest_uri, split,
        thresholds=thresholds or loaded.thresholds, plots_dir=plots_dir,
    )  # fmt: skip


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
    thresholds: Thresholds | None = None,
    plots_dir: str | Path | None = None,
) -> Evaluation:
    """The metrics of :func:`evaluate_model`, from the scores a ``raytag tag`` run wrote, at
    ``thresholds`` or else those the run decided its ``tags`` with (none for a model
    without thresholds)."""
    tracks, vocabulary, model = score_predictions(output, manifest_uri, split)
    if thresholds is None and (record := read_thresholds(output)) is not None:
        thresholds = recorded_thresholds(record, vocabulary)
    model = {"name": model["name"], "version": model["version"]}
    evaluation = evaluate_tracks(
        tracks, vocabulary, model, manifest_uri, split, thresholds=thresholds, plots_dir=plots_dir
    )
    return replace(evaluation, predictions=output)


_SCORED = pa.schema([pa.field(TRACK_ID, pa.string()), SCORES_FIELD])


def _rows_sharing_track_id(left: pa.Table, right: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of ``left`` and of ``right`` paired by ``track_id`` (Arrow's hash join
    carries no list columns, so it joins the keys and their row numbers only)."""

    def numbered(table: pa.Table, name: str) -> pa.Table:
        return pa.table({TRACK_ID: table[TRACK_ID], name: np.arange(table.num_rows)})

    pairs = numbered(left, "left").join(numbered(right, "right"), TRACK_ID, join_type="inner")
    return pairs["left"].to_numpy(), pairs["right"].to_numpy()


def evaluate_tracks(
    tracks: TrackScores,
    vocabulary: list[str],
    model: dict[str, str],
    manifest_uri: str,
    split: str | None,
    *,
    thresholds: Thresholds | None = None,
    plots_dir: str | Path | None = None,
) -> Evaluation:
    """The evaluation of scores already computed: the metrics (at ``thresholds`` if given),
    what was left out, and the plots when ``plots_dir`` is given."""
    metrics = compute_metrics(tracks.y_true, tracks.y_score, vocabulary, thresholds)
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
