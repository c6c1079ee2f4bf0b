"""The stages of a tagging job, each a small callable Ray Data maps over blocks of rows.

    decode_batch / Decoder   CPU: URI -> decoded once, cut into each model's patches
                             (16-bit PCM); an unreadable file becomes the row's error
    TagPredictor             every model's replica per actor: patches -> per-track scores,
                             and the tags at the model's thresholds
    TagSink                  rows -> per model, one predictions/ and one errors/ file per
                             write task

Rows that failed earlier flow through later stages untouched, so every manifest row
reaches the sink. torch and the audio decoders are imported inside the stages that need
them, so the light tasks (reconciliation, writing, counting) start without loading them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from raytag.config import AudioConfig
from raytag.manifest import URI
from raytag.storage import join, unreachable
from raytag.tagging.options import TagOptions
from raytag.tagging.output import (
    DURATION,
    EMBEDDING_FIELD,
    ERROR_CODE,
    ERROR_SCHEMA,
    ERRORS,
    MESSAGE,
    N_PATCHES,
    PREDICTIONS,
    SCORES,
    TAGS,
    TAGS_FIELD,
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


# Columns that exist only between the stages ("_": a manifest may not use such names).
DECODE_NODE, DECODE_CPU_S, MODEL_NODE = "_decode_node", "_decode_cpu_s", "_model_node"
# 16-bit PCM: a track's samples are stored as round(x / scale), scale = its peak / 32767.
_PCM16_FULL_SCALE = 32767


def patches_column(policy: int) -> str:
    """Each track's patches under the ``policy``-th patch policy, flattened."""
    return f"_patches_{policy}"


def n_patches_column(policy: int) -> str:
    return f"_n_patches_{policy}"


def scale_column(policy: int) -> str:
    """Per track: what one step of its 16-bit patches is worth (absent for float32)."""
    return f"_scale_{policy}"


def model_column(model: int, name: str) -> str:
    """A column the ``model``-th model adds, until the sink writes it under ``name``."""
    return f"_m{model}_{name}"


def decode_batch(
    batch: pa.Table, policies: tuple[AudioConfig, ...], pcm16: bool = True
) -> pa.Table:
    """Decode each track once and cut it into each policy's patches, on CPU; an unreadable
    file becomes the row's error, not a failure. Storage that does not answer is no fault
    of the row's: it fails the task (a rerun tags the row), never making an error row.

    Adds ``duration_s``, per policy the patches (16-bit PCM and a scale with ``pcm16``,
    else float32) and their count, and where and for how many CPU-seconds each row was
    decoded (the run record's decoding figures).
    """
    import ray

    from raytag.audio import AudioError, decode_policies

    codes, messages = batch[ERROR_CODE].to_pylist(), batch[MESSAGE].to_pylist()
    durations: list[float | None] = []
    cpu_s: list[float | None] = []
    patches: list[list[np.ndarray]] = [[] for _ in policies]
    for row, uri in enumerate(batch[URI].to_pylist()):
        tracks = None
        if codes[row] is None:
            began = time.thread_time()
            try:
                tracks = decode_policies(uri, policies)
            except AudioError as error:
                if unreachable(error):  # the storage's fault, not the file's: the run stops
                    raise
                codes[row], messages[row] = str(error.code), error.message
            cpu_s.append(time.thread_time() - began)
        else:
            cpu_s.append(None)
        durations.append(tracks[0].duration_s if tracks else None)
        for policy, audio in enumerate(policies):
            empty = np.zeros((0, audio.patch_samples), np.float32)
            patches[policy].append(tracks[policy].patches if tracks else empty)
    columns = {
        ERROR_CODE: pa.array(codes, pa.string()),
        MESSAGE: pa.array(messages, pa.string()),
        DURATION: pa.array(durations, pa.float64()),
        DECODE_NODE: pa.array([ray.get_runtime_context().get_node_id()] * batch.num_rows),
        DECODE_CPU_S: pa.array(cpu_s, pa.float64()),
    }
    for policy, audio in enumerate(policies):
        columns.update(_patch_columns(patches[policy], audio.patch_samples, policy, pcm16))
    return _set_columns(batch, columns)


def _patch_columns(
    tracks: list[np.ndarray], patch_samples: int, policy: int, pcm16: bool
) -> dict[str, pa.Array]:
    """One policy's patches of every track as a flat list column (and its scale column)."""
    counts = np.array([len(p) for p in tracks], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts * patch_samples)]))
    columns = {n_patches_column(policy): pa.array(counts, pa.int32())}
    if pcm16:
        # The full 16-bit range for every track, quiet ones included.
        peaks = np.array([np.abs(p).max(initial=0.0) for p in tracks], np.float32)
        scales = np.where(peaks > 0, peaks, 1.0) / _PCM16_FULL_SCALE
        tracks = [np.rint(p / s).astype(np.int16) for p, s in zip(tracks, scales, strict=True)]
        columns[scale_column(policy)] = pa.array(scales, pa.float32())
    dtype = np.int16 if pcm16 else np.float32
    values = np.concatenate([p.reshape(-1) for p in tracks] or [np.zeros(0, dtype)])
    columns[patches_column(policy)] = pa.LargeListArray.from_arrays(offsets, pa.array(values))
    return columns


def stored_patches(batch: pa.Table, policy: int, rows: pa.ChunkedArray | None = None) -> np.ndarray:
    """The float32 patches (n, samples) of ``rows`` (a mask; None: every row) of a decoded
    batch under ``policy``, in row order."""
    column, counts = batch[patches_column(policy)], batch[n_patches_column(policy)]
    scales = batch[scale_column(policy)] if scale_column(policy) in batch.column_names else None
    if rows is not None:
        column, counts = column.filter(rows), counts.filter(rows)
        scales = None if scales is None else scales.filter(rows)
    # Failed rows carry no patches, so a whole column flattened is the good rows' patches,
    # without a copy; a filtered one is copied (tens of MB of audio per block).
    counts = counts.to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(column).to_numpy().reshape(int(counts.sum()), -1)
    if scales is None:
        return flat
    per_patch = np.repeat(scales.to_numpy(zero_copy_only=False), counts)
    return flat.astype(np.float32) * per_patch[:, None]


class Decoder:
    """:func:`decode_batch` in a long-lived actor (``TagOptions.decode_actors``)."""

    def __call__(self, batch: pa.Table, policies: tuple[AudioConfig, ...], pcm16: bool) -> pa.Table:
        return decode_batch(batch, policies, pcm16)


class TagPredictor:
    """One replica of every model per actor: for each model, the patches (under its policy)
    of the tracks of a batch that its output lacks go through it together, then are
    averaged back per track (scores and embedding)."""

    def __init__(
        self, models: list[LoadedModel], policy_of: list[int], options: TagOptions
    ) -> None:
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu":
            # As many threads as CPUs reserved: Ray's OMP_NUM_THREADS is not relied upon.
            torch.set_num_threads(max(1, round(options.cpus_per_actor or 1)))
        self.replicas = [_Replica(model, device, options) for model in models]
        self.policy_of = policy_of
        self.options = options

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        from raytag.tagging.reconcile import todo_column

        ok = pc.is_null(batch[ERROR_CODE])
        n_ok = pc.sum(ok).as_py() or 0
        columns: dict[str, pa.Array] = {}
        for index, replica in enumerate(self.replicas):
            wanted = pc.and_(ok, pc.fill_null(batch[todo_column(index)], False))
            policy = self.policy_of[index]
            n_wanted = pc.sum(wanted).as_py() or 0
            # Every decoded row wanted (the usual case): no copy of the block's audio.
            every = n_wanted == n_ok
            patches = stored_patches(batch, policy, None if every else wanted) if n_wanted else None
            counts = batch[n_patches_column(policy)].filter(wanted).to_numpy()
            for name, values in replica.columns(patches, counts).items():
                columns[model_column(index, name)] = _scatter(values, wanted)
        node = ray.get_runtime_context().get_node_id()
        columns[MODEL_NODE] = pa.array([node] * batch.num_rows, pa.string())
        policies = range(max(self.policy_of) + 1)
        audio = [patches_column(p) for p in policies] + [scale_column(p) for p in policies]
        spent = [name for name in audio if name in batch.column_names]  # the sink needs none
        return _set_columns(batch.drop_columns(spent), columns)


class _Replica:
    """One model on this actor's device; its columns for the tracks given to it."""

    def __init__(self, model: LoadedModel, device: Any, options: TagOptions) -> None:
        self.model = model.model.to(device).eval()
        self.name, self.version = model.name, model.version
        self.tag_names = list(model.vocabulary)
        self.vocabulary = np.asarray(self.tag_names, dtype=object)
        self.thresholds = model.thresholds
        self.options = options
        self.embed = None
        if options.compile:
            from raytag.models.inference import compiled_embed

            self.embed = compiled_embed(self.model)

    def columns(self, patches: np.ndarray | None, counts: np.ndarray) -> dict[str, pa.Array]:
        """The model's columns for the tracks whose ``patches`` (``counts`` per track) are
        given; empty columns for none."""
        from raytag.models.inference import average_by_track

        if patches is None:
            return {f.name: pa.nulls(0, f.type) for f in model_fields(self.options.embedding)}
        patch_scores, patch_embeddings = self._predict(patches)
        scores = average_by_track(patch_scores, counts).astype(np.float32)
        embeddings = average_by_track(patch_embeddings, counts).astype(np.float32)
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
            TAGS: self._tags(scores),
            "top_tags": _list_rows(top_tags, n),
        }
        if self.options.embedding:
            columns[EMBEDDING_FIELD.name] = _list_rows(pa.array(embeddings.reshape(-1)), n)
        return columns

    def _tags(self, scores: np.ndarray) -> pa.Array:
        """The tags each row of ``scores`` is assigned; null rows without thresholds."""
        if self.thresholds is None:
            return pa.nulls(len(scores), TAGS_FIELD.type)
        return pa.array(self.thresholds.tags(scores, self.tag_names), TAGS_FIELD.type)

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


class TagSink(Datasink[dict]):
    """Writes each model's rows of a write task to that model's folder: one
    ``predictions/`` and one ``errors/`` file per model and write task.

    File names are fixed by the attempt, the execution (``part``) and the task index, so a
    retried write task overwrites the files of its failed try instead of adding rows twice.
    """

    def __init__(
        self,
        outputs: list[str],
        policy_of: list[int],
        prediction_columns: list[str],
        rows_per_file: int,
    ) -> None:
        self.outputs = outputs
        self.policy_of = policy_of
        self.attempt = new_attempt_id()
        self.prediction_columns = prediction_columns
        self.rows_per_file = rows_per_file
        self.written: Counter[str] = Counter()  # this attempt, filled on the driver
        self.part = 0  # which execution of the attempt (TagOptions.rows_per_execution)

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> dict[str, float]:
        from raytag.tagging.reconcile import todo_column

        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        if not tables:
            return {}
        table = pa.concat_tables(tables)
        name = file_name(self.attempt, self.part, ctx.task_idx)
        stats: Counter[str] = Counter()
        for index, output in enumerate(self.outputs):
            rows = table.filter(pc.fill_null(table[todo_column(index)], False))
            ok = pc.is_null(rows[ERROR_CODE])
            predictions = self._model_view(rows.filter(ok), index)
            errors = rows.filter(pc.invert(ok)).select(ERROR_SCHEMA.names)
            for folder, part in ((PREDICTIONS, predictions), (ERRORS, errors)):
                if part.num_rows:
                    write_parquet(join(output, folder, name), part)
            stats[f"{index}/predictions"] = predictions.num_rows
            stats[f"{index}/errors"] = errors.num_rows
            stats[f"{index}/audio_seconds"] = pc.sum(predictions[DURATION]).as_py() or 0.0
        decoded = table.filter(pc.is_valid(table[DECODE_CPU_S]))
        stats["decode/tracks"] = decoded.num_rows
        stats["decode/cpu_s"] = pc.sum(decoded[DECODE_CPU_S]).as_py() or 0.0
        stats.update(_per_node("decode_node", decoded[DECODE_NODE]))
        tagged = table.filter(pc.is_null(table[ERROR_CODE]))
        stats.update(_per_node("model_node", tagged[MODEL_NODE]))
        return dict(stats)

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        for stats in write_result.write_returns:
            self.written.update(stats)

    def model_counts(self, index: int) -> Counter[str]:
        """What this attempt wrote for the ``index``-th model: predictions, errors and
        audio seconds."""
        prefix = f"{index}/"
        return Counter(
            {k[len(prefix) :]: v for k, v in self.written.items() if k.startswith(prefix)}
        )

    def decoding(self) -> dict[str, Any]:
        """This attempt's decoding: tracks decoded (once for every model), their CPU time
        (the decoding thread's), and the rows decoded and tagged per node id."""
        tracks, cpu_s = int(self.written["decode/tracks"]), self.written["decode/cpu_s"]
        per_node = {
            stage: {
                key.split("/", 1)[1]: int(count)
                for key, count in sorted(self.written.items())
                if key.startswith(f"{stage}/")
            }
            for stage in ("decode_node", "model_node")
        }
        return {
            "tracks": tracks,
            "cpu_s": round(cpu_s, 3),
            "cpu_ms_per_track": round(1000 * cpu_s / tracks, 2) if tracks else None,
            "rows_per_node": per_node,
        }

    def _model_view(self, rows: pa.Table, index: int) -> pa.Table:
        """The ``index``-th model's prediction rows under their written column names."""
        renamed = {N_PATCHES: n_patches_column(self.policy_of[index])}
        renamed.update((f.name, model_column(index, f.name)) for f in model_fields(True))
        columns = [rows[renamed.get(name, name)] for name in self.prediction_columns]
        return pa.Table.from_arrays(columns, names=self.prediction_columns)


def _per_node(stage: str, nodes: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(nodes)
    return {
        f"{stage}/{node}": count
        for node, count in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }


def _scatter(values: pa.Array, rows: pa.ChunkedArray) -> pa.Array:
    """``values`` (one per true row of the mask ``rows``) spread over every row, null
    where the mask is false."""
    mask = rows.to_numpy(zero_copy_only=False)
    positions = np.cumsum(mask) - 1
    indices = pa.array(positions, pa.int64(), mask=~mask)
    return values.take(indices)


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
