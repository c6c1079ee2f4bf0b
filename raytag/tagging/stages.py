"""The stages of a tagging job, each a small callable Ray Data maps over blocks of rows.

    decode_batch / Decoder   CPU: URI -> 16 kHz mono patches; an unreadable file becomes
                             the row's error
    TagPredictor             one model replica per actor: patches -> per-track scores
    TagSink                  rows -> one predictions/ and one errors/ file per write task

Rows that failed earlier flow through later stages untouched, so every manifest row
reaches the sink. torch and the audio decoders are imported inside the stages that need
them, so the light tasks (reconciliation, writing, counting) start without loading them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from raytag.config import AudioConfig
from raytag.manifest import URI
from raytag.storage import join
from raytag.tagging.options import TagOptions
from raytag.tagging.output import (
    DURATION,
    ERROR_CODE,
    ERROR_SCHEMA,
    ERRORS,
    MESSAGE,
    N_PATCHES,
    PATCHES,
    PREDICTIONS,
    SCORES,
    TOP_TAG,
    file_name,
    model_fields,
    new_attempt_id,
    write_parquet,
)

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces import TaskContext

    from raytag.checkpoint import LoadedModel

log = logging.getLogger(__name__)


def decode_batch(batch: pa.Table, audio: AudioConfig) -> pa.Table:
    """Decode and resample on CPU; an unreadable file becomes the row's error, not a failure.

    Adds ``duration_s``, ``n_patches`` and ``patches`` (each track's patches, flattened).
    """
    from raytag.audio import AudioError, decode_patches

    codes, messages = batch[ERROR_CODE].to_pylist(), batch[MESSAGE].to_pylist()
    durations: list[float | None] = []
    patches: list[np.ndarray] = []
    for row, uri in enumerate(batch[URI].to_pylist()):
        track = None
        if codes[row] is None:
            try:
                track = decode_patches(uri, audio)
            except AudioError as error:
                codes[row], messages[row] = str(error.code), error.message
        durations.append(track.duration_s if track else None)
        patches.append(track.patches if track else np.zeros((0, audio.patch_samples), np.float32))
    counts = np.array([len(p) for p in patches], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts * audio.patch_samples)])
    values = np.concatenate([p.reshape(-1) for p in patches] or [np.zeros(0, np.float32)])
    return _set_columns(
        batch,
        {
            ERROR_CODE: pa.array(codes, pa.string()),
            MESSAGE: pa.array(messages, pa.string()),
            DURATION: pa.array(durations, pa.float64()),
            N_PATCHES: pa.array(counts, pa.int32()),
            PATCHES: pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)),
        },
    )


class Decoder:
    """:func:`decode_batch` in a long-lived actor (``TagOptions.decode_actors``)."""

    def __call__(self, batch: pa.Table, audio: AudioConfig) -> pa.Table:
        return decode_batch(batch, audio)


class TagPredictor:
    """One model replica per actor: the patches of all tracks of a batch go through the
    model together, then are averaged back per track (scores and embedding)."""

    def __init__(self, model: LoadedModel, options: TagOptions) -> None:
        import torch

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            # As many threads as CPUs reserved: Ray's OMP_NUM_THREADS is not relied upon.
            torch.set_num_threads(max(1, round(options.cpus_per_actor or 1)))
        self.model = model.model.to(self.device).eval()
        self.name, self.version = model.name, model.version
        self.vocabulary = np.asarray(model.vocabulary, dtype=object)
        self.patch_samples = model.audio.patch_samples
        self.options = options
        self.embed = None
        if options.compile:
            from raytag.models.inference import compiled_embed

            self.embed = compiled_embed(self.model)

    def _predict(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from raytag.models.inference import predict_patches

        predict = partial(predict_patches, self.model, patches, self.options.patch_batch_size,
                          self.options.bf16, cpu_bf16=self.options.cpu_bf16)  # fmt: skip
        if self.embed is None:
            return predict()
        try:
            return predict(embed=self.embed)
        except Exception as error:  # torch.compile's failures have no common base class
            log.warning("torch.compile failed in this actor, running eager: %s", error)
            self.embed = None
            return predict()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raytag.models.inference import average_by_track

        ok = pc.is_null(batch[ERROR_CODE])
        # Failed rows carry no patches, so the whole column flattened is the good rows'
        # patches, without a copy; filtering it would copy a block's tens of MB of audio
        # (a measurable share of a CPU actor's time, docs/benchmarks.md).
        flat = pc.list_flatten(batch[PATCHES]).to_numpy()
        rows = batch.drop_columns([PATCHES])
        good, bad = rows.filter(ok), rows.filter(pc.invert(ok))
        columns = None
        if good.num_rows:
            patch_scores, patch_embeddings = self._predict(flat.reshape(-1, self.patch_samples))
            counts = good[N_PATCHES].to_numpy()
            columns = self._prediction_columns(
                average_by_track(patch_scores, counts).astype(np.float32),
                average_by_track(patch_embeddings, counts).astype(np.float32),
            )
        return pa.concat_tables(
            [
                _set_columns(good, columns or self._null_columns(0)),
                _set_columns(bad, self._null_columns(bad.num_rows)),
            ]
        )

    def _prediction_columns(self, scores: np.ndarray, embeddings: np.ndarray) -> dict:
        n, k = len(scores), min(self.options.top_k, len(self.vocabulary))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_tags = pa.StructArray.from_arrays(
            [
                pa.array(self.vocabulary[top].reshape(-1), pa.string()),
                pa.array(np.take_along_axis(scores, top, axis=1).reshape(-1)),
            ],
            fields=list(TOP_TAG),
        )
        columns = {
            "model_name": pa.array([self.name] * n, pa.string()),
            "model_version": pa.array([self.version] * n, pa.string()),
            SCORES: _list_rows(pa.array(scores.reshape(-1)), n),
            "top_tags": _list_rows(top_tags, n),
        }
        if self.options.embedding:
            columns["embedding"] = _list_rows(pa.array(embeddings.reshape(-1)), n)
        return columns

    def _null_columns(self, n: int) -> dict:
        """The same columns for rows that failed earlier (only errors/ keeps them)."""
        return {f.name: pa.nulls(n, f.type) for f in model_fields(self.options.embedding)}


class TagSink(Datasink[dict]):
    """Splits each write task's rows into one ``predictions/`` and one ``errors/`` file.

    File names are fixed by the attempt, the execution (``part``) and the task index, so a
    retried write task overwrites the files of its failed try instead of adding rows twice.
    """

    def __init__(self, output: str, prediction_columns: list[str], rows_per_file: int) -> None:
        self.output = output
        self.attempt = new_attempt_id()
        self.prediction_columns = prediction_columns
        self.rows_per_file = rows_per_file
        self.written: Counter[str] = Counter()  # this attempt, filled on the driver
        self.part = 0  # which execution of the attempt (TagOptions.rows_per_execution)

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> dict[str, float]:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        if not tables:
            return {}
        table = pa.concat_tables(tables)
        ok = pc.is_null(table[ERROR_CODE])
        predictions = table.filter(ok).select(self.prediction_columns)
        errors = table.filter(pc.invert(ok)).select(ERROR_SCHEMA.names)
        name = file_name(self.attempt, self.part, ctx.task_idx)
        for folder, part in ((PREDICTIONS, predictions), (ERRORS, errors)):
            if part.num_rows:
                write_parquet(join(self.output, folder, name), part)
        return {
            "predictions": predictions.num_rows,
            "errors": errors.num_rows,
            "audio_seconds": pc.sum(predictions[DURATION]).as_py() or 0.0,
        }

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        for stats in write_result.write_returns:
            self.written.update(stats)


def _set_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """``table`` with ``columns`` replaced in place or appended."""
    for name, values in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table


def _list_rows(values: pa.Array, n: int) -> pa.ListArray:
    """Flat values of ``n`` equally long rows as a list column."""
    width = len(values) // n if n else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, values)
