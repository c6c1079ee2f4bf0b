"""Tag a catalogue with Ray Data: Parquet manifest in, Parquet predictions and errors out.

    read(manifest)         ─> reconcile with --output: drop rows already written,
                              flag bad rows (null/empty uri, duplicate track_id)
    ─> decode_batch   (CPU tasks, or actors with GPUs: decode, resample, patch)
    ─> TagPredictor   (actors, one GPU each where there are GPUs)
    ─> TagSink        predictions/*.parquet | errors/*.parquet
    ─> verify         every manifest row in exactly one output row, or the run fails

A big manifest is tagged as consecutive Ray Data executions of about
``TagOptions.rows_per_execution`` pending rows each (whole reconciliation buckets), so the
driver never holds Ray Data's per-block bookkeeping for more than one of them.

Exactly once, resumable: output files appear whole (a rename on local disks, a single
object on S3) under names fixed per attempt and write task, so a retried write task
overwrites its own files. A rerun first pairs the manifest with everything already
written, on Ray Data (a hash shuffle by ``track_id``, never a driver-side set), and tags
only the rows that have no output row yet; :func:`verify` is the same pairing. Rerun once
the interrupted run is gone, workers included: a write it still had in flight could land
after the rerun's pairing, and the final verify would then fail the run on the duplicate.

Every row of a ``track_id`` that appears more than once is an error row
(``duplicate_track_id``): which of its URIs is meant cannot be known.

Output layout under ``output``::

    predictions/*.parquet  track_id, uri, extra manifest columns, model_name, model_version,
                           scores, top_tags, duration_s, n_patches[, embedding]
    errors/*.parquet       track_id, uri, error_code, message
    vocabulary.json        the tag order of ``scores``
    _run.json              status, model, counts, attempts (options, throughput), versions

torch and the audio decoders are imported inside the stages that need them, so the
light tasks (reconciliation, writing, counting) start without loading them.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from raytag.config import AudioConfig
from raytag.manifest import (
    ERROR_CODE,
    MESSAGE,
    TRACK_ID,
    URI,
    Manifest,
    check_rows,
    open_manifest,
    read_footers,
)
from raytag.storage import arrow_filesystem, filesystem, is_local, join

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces import TaskContext

    from raytag.checkpoint import LoadedModel

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
ERRORS = "errors"
VOCABULARY_FILE = "vocabulary.json"
RUN_FILE = "_run.json"
ERROR_COLUMNS = [TRACK_ID, URI, ERROR_CODE, MESSAGE]

# Reconciliation: the side a row comes from, its bucket (a stable hash of its track_id),
# how many manifest rows share its track_id.
_SIDE, _BUCKET, _COPIES = "_side", "_bucket", "_copies"
MANIFEST_SIDE, PREDICTION_SIDE, ERROR_SIDE = "manifest", "prediction", "error"
_KEY_SCHEMA = pa.schema([(TRACK_ID, pa.string()), (URI, pa.string())])
# Rows meet in buckets of about this many rows: one Python call per bucket, not per track.
_ROWS_PER_BUCKET = 2048
# Hash-shuffle partitions: enough to spread a big manifest, one for a small one (each
# partition costs a reduce task even when empty).
_ROWS_PER_PARTITION, _MAX_PARTITIONS = 100_000, 200
_FILES_PER_READ = 16
# Rows per Ray Data execution, automatic: Ray Data keeps bookkeeping for every block it
# has produced (per-operator block stats, metadata) in the driver until an execution
# ends, about 1 kB per short-clip row with 8-row decode blocks (~10 GB at 10 million
# rows). Executions are sized to the cluster, so each runs for minutes (a drain and a new
# actor pool between two cost seconds), and capped, so the driver holds at most ~1 GB.
_ROWS_PER_EXECUTION_PER_CPU, _MAX_ROWS_PER_EXECUTION = 12_500, 1_000_000
# Writing is I/O bound and must not queue behind decode tasks for a CPU slot: results
# would only land at the end, and a killed run would lose them. Their number is bounded
# by what the model actors produce.
_WRITE_CPUS = 0

_PATCHES = "patches"
_TOP_TAG = pa.struct([("tag", pa.string()), ("score", pa.float32())])
_SCORES = pa.list_(pa.float32())


class TagError(RuntimeError):
    """The run cannot start or resume as asked (e.g. the output holds another model's run)."""


class IncompleteRunError(RuntimeError):
    """The run ended without every manifest row in exactly one output row."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__(report.describe())
        self.report = report


@dataclass(frozen=True)
class TagOptions:
    """How a run is cut into work. Only ``max_patches`` (the long-track policy: K evenly
    spaced patches per track, None for all) changes what a track's scores are.

    ``None`` means "decide from the cluster": GPU and CPU clusters want different layouts
    (see ``resolved``; the numbers behind the defaults are in docs/benchmarks.md).
    """

    max_patches: int | None = 32  # at most 96 s of audio per track: bounds worker memory
    top_k: int = 5
    embedding: bool = False
    decode_batch_size: int = 8  # tracks per decode task
    # Decode in long-lived actors rather than tasks. None: actors where GPUs run the model,
    # where decoding is the bottleneck: each actor keeps its next block queued, so no
    # core idles between blocks while the driver schedules (+23 % tagging throughput on
    # an H200 node with 16 CPUs, docs/benchmarks.md). Tasks on CPU-only clusters, where
    # decoding is ~20 % of the work and comes and goes beside the model.
    decode_actors: bool | None = None
    # Concurrent decode tasks (or actors). None: see resolved().
    decode_tasks: int | None = None
    # Logical CPUs a decode task (or actor) reserves. None: 1 where GPUs do the model
    # (decoding is the bottleneck there), 0.25 on CPU-only clusters, where the model is
    # ~80 % of the work and every core should run it.
    decode_cpus: float | None = None
    # Reserved per decode task (Ray's memory resource), so a node never runs more decodes
    # than fit. Declaring it also keeps decoding out of the model actors: Ray Data fuses
    # stages whose resource requests are equal.
    decode_memory_mb: int = 1024
    predict_batch_size: int = 16  # tracks per model call
    # Patches per forward pass. None: 256 on GPU; 8 on CPU, where 32 ran at most a few %
    # faster (once actors reuse freed memory) for 4x the activations' memory.
    patch_batch_size: int | None = None
    actors: int | None = None  # model replicas; None: one per GPU, else see resolved()
    # Logical CPUs per CPU actor; it runs that many torch threads (at least one), never
    # more, so replicas do not oversubscribe the cores. None: see resolved().
    cpus_per_actor: float | None = None
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    bf16: bool = True  # autocast on GPU
    # bf16 autocast on CPU too: ~1.45x (spectrogram) and ~1.2x (waveform) per core on CPUs
    # with bf16 dot products (AVX512-BF16, AMX), likely slower on those without (not
    # measured); scores move by up to ~0.03. Off by default: CPU outputs stay float32's
    # (docs/benchmarks.md).
    cpu_bf16: bool = False
    # torch.compile the model in each actor (outputs within 1e-5 of eager on CPU). It costs
    # 7-70 s per actor and needs a C++ compiler on CPU nodes (an actor whose compile fails
    # falls back to eager). Off by default: measured no faster end to end on 2-core CPUs
    # and 8-30x slower than eager on an H200 (docs/benchmarks.md).
    compile: bool = False
    rows_per_file: int = 1000  # rows gathered per write task: at most one file pair each
    # Pending rows per Ray Data execution (see _ROWS_PER_EXECUTION_PER_CPU): bounds the
    # driver's memory whatever the manifest's size. None: 12,500 per CPU, at most 1M.
    rows_per_execution: int | None = None

    def __post_init__(self) -> None:
        for name in ("decode_batch_size", "predict_batch_size", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("patch_batch_size", "actors", "decode_tasks", "rows_per_execution"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be None (automatic) or >= 1")
        for name in ("cpus_per_actor", "decode_cpus"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be None (automatic) or >= 0")
        if self.max_patches is not None and self.max_patches < 1:
            raise ValueError("max_patches must be None (all patches) or >= 1")

    def resolved(self, cluster: dict[str, float]) -> TagOptions:
        """Every automatic option decided for a cluster (``ray.cluster_resources()``).

        With GPUs: one actor per GPU, 256-patch forwards, and decode actors of 1 CPU each
        on every CPU but one (the driver, the steps before decoding and the writes run
        there). CPU only: one single-threaded actor per CPU (measured faster than fewer
        multi-threaded ones), 8-patch forwards, and decode tasks at 0.25 CPU, at most one
        per four CPUs: decoding is ~20 % of the work. The actors reserve 0.75 of a logical
        CPU each, less on small nodes, so that a whole one stays free beside the full pool:
        the step that cuts pending rows into decode blocks runs at Ray Data's 1 CPU and
        would otherwise wait for good (see :func:`_tag_rows`). Either way, executions of
        12,500 pending rows per CPU, at most a million.
        """
        cpus = max(1, int(cluster.get("CPU", 1)))
        use_gpu = self.use_gpu if self.use_gpu is not None else cluster.get("GPU", 0) >= 1
        if use_gpu:
            defaults = {
                "actors": max(1, int(cluster.get("GPU", 1))),
                "cpus_per_actor": 1.0,
                "patch_batch_size": 256,
                "decode_cpus": 1.0,
                "decode_actors": True,
            }
        else:  # cpus_per_actor follows from the rest, below
            defaults = {
                "actors": cpus,
                "patch_batch_size": 8,
                "decode_cpus": 0.25,
                "decode_actors": False,
                "decode_tasks": max(1, cpus // 4),
            }
        defaults["rows_per_execution"] = min(
            _MAX_ROWS_PER_EXECUTION, _ROWS_PER_EXECUTION_PER_CPU * cpus
        )
        chosen = {
            k: v if getattr(self, k) is None else getattr(self, k) for k, v in defaults.items()
        }
        resolved = replace(self, use_gpu=use_gpu, **chosen)
        if resolved.cpus_per_actor is None:  # CPU only: one whole CPU left for the split
            spare = cpus - 1 - resolved.decode_tasks * resolved.decode_cpus
            resolved = replace(
                resolved, cpus_per_actor=max(0.25, min(0.75, spare / resolved.actors))
            )
        if resolved.decode_tasks is None:  # GPUs: every CPU the model actors leave, but one
            spare = cpus - resolved.actors * resolved.cpus_per_actor - 1
            fit = int(spare // resolved.decode_cpus) if resolved.decode_cpus else cpus
            resolved = replace(resolved, decode_tasks=max(1, fit))
            if fit < 1 and self.decode_actors is None:  # no room to hold a decode actor
                resolved = replace(resolved, decode_actors=False)
        # Decode tasks beside GPU actors come and go: only held reservations can stall.
        if (resolved.decode_actors or not use_gpu) and resolved.may_stall(cluster.get("CPU", 0)):
            log.warning(
                "model actors reserve %d x %.2f of %s CPUs and decoding %.2f: Ray Data may "
                "find no CPU for the stages before the model and stall. Leave a whole CPU "
                "spare (--actors x --cpus-per-actor + decoding <= CPUs - 1)",
                resolved.actors,
                resolved.cpus_per_actor,
                cluster.get("CPU", 0),
                resolved.decode_reserved_cpus,
            )
        return resolved

    @property
    def decode_reserved_cpus(self) -> float:
        """CPUs decoding holds for the whole run: every actor's, or one task's at least."""
        decode_cpus = self.decode_cpus or 0.0
        return decode_cpus * (self.decode_tasks or 1) if self.decode_actors else decode_cpus

    def may_stall(self, cpus: float) -> bool:
        """Whether the full model pool starves the other stages of a ``cpus``-CPU cluster.

        The pool and decoding must leave one whole CPU: the step that cuts pending rows
        into decode blocks runs at Ray Data's default of 1 CPU. Layouts that leave less
        are tagged with a pool that grows from one actor and shrinks when idle, so that
        the split gets its turn (see :func:`_tag_rows`); even so, one actor of 1.75 or
        1.5 CPUs stalled the run for good on 2 CPUs here.
        """
        reserved = self.actors * self.cpus_per_actor + self.decode_reserved_cpus
        return reserved > cpus - 1


# -- the pipeline ----------------------------------------------------------------------


def tag_catalogue(
    manifest_uri: str, model_uri: str, output: str, options: TagOptions | None = None
) -> RunSummary:
    """Tag every manifest row not yet in ``output``, verify exactly-once, write ``_run.json``.

    Raises ManifestError or TagError before any work, IncompleteRunError at the end when
    a row is missing or written twice.
    """
    options = options or TagOptions()
    started = time.time()
    manifest = open_manifest(manifest_uri)
    model = resolve_model(model_uri)
    audio = replace(model.audio, max_patches=options.max_patches)
    earlier = _start_run(output, manifest, model_uri, model, started)

    unmatched, n_pending = _pending_rows(manifest, output)
    sink = TagSink(output, prediction_schema(manifest, options).names, options.rows_per_file)
    phases = {"plan_s": time.time() - started}
    if n_pending:
        cluster = ray.cluster_resources()
        options = options.resolved(cluster)
        steady_pool = not options.may_stall(cluster.get("CPU", 0))
        # Whole buckets per execution, so each bucket's copies of a track_id stay together.
        parts = min(-(-n_pending // options.rows_per_execution), _buckets(manifest))
        for part in range(parts):
            if parts > 1:
                log.info("tagging part %d of %d of %d pending rows", part + 1, parts, n_pending)
            sink.part = part
            rows = _pending_part(unmatched, manifest.normalised_schema, part, parts)
            _tag_rows(rows, sink, model, audio, options, steady_pool)
    phases["tag_s"] = time.time() - started - phases["plan_s"]

    report = _verify(manifest, output)
    phases["verify_s"] = time.time() - started - phases["plan_s"] - phases["tag_s"]
    attempt = _attempt_record(started, sink.written, options, phases)
    summary = RunSummary(
        record=_run_record(manifest, model_uri, model, output, report, [*earlier, attempt]),
        report=report,
    )
    _write_json(join(output, RUN_FILE), summary.record)
    if not report.ok:
        raise IncompleteRunError(report)
    return summary


def _tag_rows(
    rows: ray.data.Dataset,
    sink: TagSink,
    model: LoadedModel,
    audio: AudioConfig,
    options: TagOptions,
    steady_pool: bool,
) -> None:
    """One Ray Data execution: decode, tag and write ``rows``.

    With ``steady_pool`` the model pool starts at full size and never shrinks by
    utilisation, only when the inputs are done. With Ray Data's default (shrink at <= 0.5
    tasks in flight per actor) a pool of two lost an actor whenever decoding lagged for a
    moment and started a fresh process seconds later: six model loads in a 76-s run
    (docs/benchmarks.md). Only where the layout leaves the 1-CPU split below a whole CPU
    beside the full pool (not ``may_stall``): elsewhere the pool grows from one actor and
    shrinking is what lets the split run.
    """
    from raytag.models.inference import model_process_env

    if steady_pool:
        rows.context.autoscaling_config = replace(
            rows.context.autoscaling_config, actor_pool_util_downscaling_threshold=-1.0
        )
    decode, decode_pool = (
        (Decoder, ray.data.ActorPoolStrategy(size=options.decode_tasks))
        if options.decode_actors
        else (decode_batch, ray.data.TaskPoolStrategy(size=options.decode_tasks))
    )
    (
        rows.repartition(target_num_rows_per_block=options.decode_batch_size)
        .map_batches(
            decode,
            fn_kwargs={"audio": audio},
            batch_size=options.decode_batch_size,
            batch_format="pyarrow",
            num_cpus=options.decode_cpus,
            memory=options.decode_memory_mb * 2**20,
            compute=decode_pool,
        )
        .map_batches(
            TagPredictor,
            fn_constructor_kwargs={"model": model, "options": options},
            batch_size=options.predict_batch_size,
            batch_format="pyarrow",
            # Ray Data's actor defaults (max_restarts=-1, max_task_retries=-1) replace a
            # dead actor and retry its batch on the replacement.
            compute=ray.data.ActorPoolStrategy(
                min_size=1,
                max_size=options.actors,
                initial_size=options.actors if steady_pool else 1,
            ),
            num_cpus=options.cpus_per_actor,
            num_gpus=1 if options.use_gpu else 0,
            runtime_env={"env_vars": model_process_env()},  # malloc keeps freed memory
        )
        .write_datasink(sink, ray_remote_args={"num_cpus": _WRITE_CPUS})
    )


def resolve_model(uri: str) -> LoadedModel:
    """``models:/NAME@ALIAS`` or ``runs:/ID/PATH`` through MLflow, anything else a folder."""
    if uri.startswith(("models:/", "runs:/")):
        from raytag import registry

        return registry.load(uri)
    from raytag.checkpoint import load_model

    return load_model(uri)


# -- stages ----------------------------------------------------------------------------


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
            "duration_s": pa.array(durations, pa.float64()),
            "n_patches": pa.array(counts, pa.int32()),
            _PATCHES: pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)),
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
        # (~6 % of a CPU actor's time).
        flat = pc.list_flatten(batch[_PATCHES]).to_numpy()
        rows = batch.drop_columns([_PATCHES])
        good, bad = rows.filter(ok), rows.filter(pc.invert(ok))
        columns = None
        if good.num_rows:
            patch_scores, patch_embeddings = self._predict(flat.reshape(-1, self.patch_samples))
            counts = good["n_patches"].to_numpy()
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
            fields=list(_TOP_TAG),
        )
        columns = {
            "model_name": pa.array([self.name] * n, pa.string()),
            "model_version": pa.array([self.version] * n, pa.string()),
            "scores": _list_rows(pa.array(scores.reshape(-1)), n),
            "top_tags": _list_rows(top_tags, n),
        }
        if self.options.embedding:
            columns["embedding"] = _list_rows(pa.array(embeddings.reshape(-1)), n)
        return columns

    def _null_columns(self, n: int) -> dict:
        """The same columns for rows that failed earlier (only errors/ keeps them)."""
        columns = {
            "model_name": pa.nulls(n, pa.string()),
            "model_version": pa.nulls(n, pa.string()),
            "scores": pa.nulls(n, _SCORES),
            "top_tags": pa.nulls(n, pa.list_(_TOP_TAG)),
        }
        if self.options.embedding:
            columns["embedding"] = pa.nulls(n, _SCORES)
        return columns


class TagSink(Datasink[dict]):
    """Splits each write task's rows into one ``predictions/`` and one ``errors/`` file.

    File names are fixed by the attempt, the execution (``part``) and the task index, so a
    retried write task overwrites the files of its failed try instead of adding rows twice.
    """

    def __init__(self, output: str, prediction_columns: list[str], rows_per_file: int) -> None:
        self.output = output
        self.attempt = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
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
        errors = table.filter(pc.invert(ok)).select(ERROR_COLUMNS)
        name = f"{self.attempt}-{self.part:03d}-{ctx.task_idx:06d}.parquet"
        for folder, part in ((PREDICTIONS, predictions), (ERRORS, errors)):
            if part.num_rows:
                _write_parquet(join(self.output, folder, name), part)
        return {
            "predictions": predictions.num_rows,
            "errors": errors.num_rows,
            "audio_seconds": pc.sum(predictions["duration_s"]).as_py() or 0.0,
        }

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        for stats in write_result.write_returns:
            self.written.update(stats)


def prediction_schema(manifest: Manifest, options: TagOptions) -> pa.Schema:
    """Columns of ``predictions/*.parquet``: the manifest's, then the model's."""
    fields = [
        *manifest.normalised_schema,
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("scores", _SCORES),
        pa.field("top_tags", pa.list_(_TOP_TAG)),
        pa.field("duration_s", pa.float64()),
        pa.field("n_patches", pa.int32()),
    ]
    if options.embedding:
        fields.append(pa.field("embedding", _SCORES))
    return pa.schema(fields)


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


# -- reconciliation: resume and verify -------------------------------------------------


def _pending_rows(manifest: Manifest, output: str) -> tuple[ray.data.Dataset, int]:
    """Rows of the manifest and ``output`` that do not pair off (materialized), and how
    many manifest rows are among them: the rows to tag (see :func:`_pending_part`).

    Refuses to resume when ``output`` holds rows this manifest does not account for
    (another manifest, or rows written twice): adding to it could never verify.
    """
    unmatched = _unmatched_rows(manifest, output, manifest.normalised_schema).materialize()
    sides = _count_values(unmatched, _SIDE)
    surplus = sides[PREDICTION_SIDE] + sides[ERROR_SIDE]
    if surplus:
        raise TagError(
            f"{output} holds {surplus} row(s) this manifest does not account for "
            "(another manifest, or rows written twice: see `raytag verify`); "
            "tag into a new --output"
        )
    return unmatched, sides[MANIFEST_SIDE]


def _pending_part(
    unmatched: ray.data.Dataset, schema: pa.Schema, part: int, parts: int
) -> ray.data.Dataset:
    """The pending manifest rows of buckets ``part``, ``part + parts``, ..., each with the
    manifest's verdict (error_code/message)."""
    return unmatched.map_batches(
        _checked_manifest_rows,
        fn_kwargs={"schema": schema, "part": part, "parts": parts},
        batch_format="pyarrow",
    )


def _buckets(manifest: Manifest) -> int:
    return 1 + manifest.num_rows // _ROWS_PER_BUCKET


def _unmatched_rows(manifest: Manifest, output: str, schema: pa.Schema) -> ray.data.Dataset:
    """Manifest rows without an output row and output rows without a manifest row.

    Rows meet in buckets by a stable hash of ``track_id`` (a hash shuffle, ``groupby``),
    so every row of a track is in one bucket; there they pair off by ``(track_id, uri)``,
    as multisets. Nothing is collected on the driver.
    """
    buckets = _buckets(manifest)
    parts = [_as_side(manifest.read(schema.names), MANIFEST_SIDE, schema, buckets)]
    for side, folder in ((PREDICTION_SIDE, PREDICTIONS), (ERROR_SIDE, ERRORS)):
        written = read_output(output, folder, [TRACK_ID, URI])
        if written is not None:
            parts.append(_as_side(written, side, schema, buckets))
    rows = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    partitions = min(_MAX_PARTITIONS, 1 + manifest.num_rows // _ROWS_PER_PARTITION)
    return rows.groupby(_BUCKET, num_partitions=partitions).map_groups(
        _unmatched_in_bucket, batch_format="pyarrow"
    )


def _as_side(ds: ray.data.Dataset, side: str, schema: pa.Schema, buckets: int) -> ray.data.Dataset:
    return ds.map_batches(
        _side_rows,
        fn_kwargs={"side": side, "schema": schema, "buckets": buckets},
        batch_format="pyarrow",
    )


def _side_rows(batch: pa.Table, side: str, schema: pa.Schema, buckets: int) -> pa.Table:
    """``batch`` in ``schema`` (absent columns null), with its side and bucket."""
    n = batch.num_rows
    columns = [
        batch[f.name].cast(f.type) if f.name in batch.column_names else pa.nulls(n, f.type)
        for f in schema
    ]
    table = pa.Table.from_arrays(columns, schema=schema)
    # crc32, not hash(): the same bucket in every worker process.
    bucket = [zlib.crc32((t or "").encode()) % buckets for t in table[TRACK_ID].to_pylist()]
    table = table.append_column(_BUCKET, pa.array(bucket, pa.int32()))
    return table.append_column(_SIDE, pa.array([side] * n, pa.string()))


def _unmatched_in_bucket(rows: pa.Table) -> pa.Table:
    """Pair manifest and output rows by ``(track_id, uri)``; keep the unpaired ones, with
    ``_copies``: how many manifest rows share their ``track_id``."""
    track_ids = rows[TRACK_ID].to_pylist()
    keys = list(zip(track_ids, rows[URI].to_pylist(), strict=True))
    from_manifest = [side == MANIFEST_SIDE for side in rows[_SIDE].to_pylist()]
    written = Counter(key for key, m in zip(keys, from_manifest, strict=True) if not m)
    wanted = Counter(key for key, m in zip(keys, from_manifest, strict=True) if m)
    copies = Counter(t for t, m in zip(track_ids, from_manifest, strict=True) if m)
    keep = []
    for row, (key, m) in enumerate(zip(keys, from_manifest, strict=True)):
        partners = written if m else wanted
        if partners[key]:
            partners[key] -= 1
        else:
            keep.append(row)
    kept_copies = pa.array([copies[track_ids[row]] for row in keep], pa.int32())
    return rows.take(pa.array(keep, pa.int64())).append_column(_COPIES, kept_copies)


def _checked_manifest_rows(batch: pa.Table, schema: pa.Schema, part: int, parts: int) -> pa.Table:
    """The manifest rows of this part's buckets, with error_code/message set where a row
    cannot be tagged."""
    in_part = pa.array(batch[_BUCKET].to_numpy() % parts == part)
    rows = batch.filter(pc.and_(pc.equal(batch[_SIDE], MANIFEST_SIDE), in_part))
    code, message = check_rows(rows, rows[_COPIES])
    return rows.select(schema.names).append_column(ERROR_CODE, code).append_column(MESSAGE, message)


def _count_values(rows: ray.data.Dataset, column: str) -> Counter[str]:
    """How often each value of a low-cardinality column occurs: per block, summed here."""
    counts: Counter[str] = Counter()
    per_block = rows.map_batches(
        _value_counts, fn_kwargs={"column": column}, batch_format="pyarrow"
    )
    for row in per_block.iter_rows():
        counts[row["value"]] += row["count"]
    return counts


def _value_counts(batch: pa.Table, column: str) -> pa.Table:
    counts = pc.value_counts(batch[column].cast(pa.string()))
    return pa.table({"value": counts.field("values"), "count": counts.field("counts")})


def read_output(output: str, folder: str, columns: list[str]) -> ray.data.Dataset | None:
    """``columns`` of the finished files in ``output/folder``; None when there are none.

    A map over our own file list rather than ``read_parquet``: in Ray 2.60 each
    ``read_parquet`` starts a pool of footer-reading actors, seconds per call on a small
    cluster, and a run reads its outputs several times.
    """
    files = output_files(output, folder)
    if not files:
        return None
    return ray.data.from_items([{"path": path} for path in files]).map_batches(
        _read_files,
        fn_kwargs={"output": output, "columns": columns},
        batch_size=_FILES_PER_READ,
        batch_format="pyarrow",
    )


def _read_files(batch: pa.Table, output: str, columns: list[str]) -> pa.Table:
    fs, _ = arrow_filesystem(output)
    paths = batch["path"].to_pylist()
    return pa.concat_tables(pq.read_table(path, columns=columns, filesystem=fs) for path in paths)


def output_files(output: str, folder: str) -> list[str]:
    """The finished Parquet files of ``output/folder`` (in-progress files are hidden)."""
    fs, path = arrow_filesystem(join(output, folder))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.endswith(".parquet")
        and not info.base_name.startswith((".", "_"))
    )


# -- verify ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """How ``output`` accounts for the manifest: ok when every row is there exactly once."""

    manifest_rows: int
    predictions: int
    errors: int
    missing: int  # manifest rows with no output row
    surplus: int  # output rows with no manifest row: written twice, or foreign
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.surplus == 0

    def describe(self) -> str:
        counts = (
            f"{self.manifest_rows} manifest rows, {self.predictions} predictions, "
            f"{self.errors} errors: "
        )
        if self.ok:
            return counts + "every row exactly once"
        shown = "; ".join(f"{e[_SIDE]} {e[TRACK_ID]!r} {e[URI]!r}" for e in self.examples)
        return counts + f"{self.missing} missing, {self.surplus} surplus (e.g. {shown})"


def verify(manifest_uri: str, output: str) -> VerifyReport:
    """Check any run, finished or not: is each manifest row in exactly one output row?"""
    return _verify(open_manifest(manifest_uri), output)


def _verify(manifest: Manifest, output: str, n_examples: int = 5) -> VerifyReport:
    unmatched = _unmatched_rows(manifest, output, _KEY_SCHEMA).materialize()
    sides = _count_values(unmatched, _SIDE)
    return VerifyReport(
        manifest_rows=manifest.num_rows,
        predictions=_count_output_rows(output, PREDICTIONS),
        errors=_count_output_rows(output, ERRORS),
        missing=sides[MANIFEST_SIDE],
        surplus=sides[PREDICTION_SIDE] + sides[ERROR_SIDE],
        examples=[
            {k: row[k] for k in (_SIDE, TRACK_ID, URI)} for row in unmatched.take(n_examples)
        ],
    )


def _count_output_rows(output: str, folder: str) -> int:
    fs, _ = arrow_filesystem(output)
    footers = read_footers(fs, output_files(output, folder))
    return sum(meta.num_rows for meta, _ in footers if meta is not None)


# -- files and the run record ------------------------------------------------------------


def _write_parquet(uri: str, table: pa.Table) -> None:
    """Write a whole file or nothing: a local file is renamed into place when complete;
    an S3 object only appears once its upload completes."""
    fs, path = arrow_filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        folder, name = path.rsplit("/", 1)
        fs.create_dir(folder, recursive=True)
        partial = f"{folder}/.{name}.partial"
        pq.write_table(table, partial, filesystem=fs)
        fs.move(partial, path)
    else:
        pq.write_table(table, path, filesystem=fs)


def read_run(output: str) -> dict[str, Any] | None:
    """``_run.json`` of ``output`` (status, model, counts, attempts); None before any run."""
    return _read_json(join(output, RUN_FILE))


def read_vocabulary(output: str) -> list[str] | None:
    """The tag order of the ``scores`` in ``output``; None before any run."""
    return _read_json(join(output, VOCABULARY_FILE))


def _read_json(uri: str) -> Any:
    fs, path = filesystem(uri)
    fs.invalidate_cache()
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return json.load(handle)


def _write_json(uri: str, data: Any) -> None:
    fs, path = filesystem(uri)
    if is_local(uri):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as handle:
        json.dump(data, handle, indent=2)


def _start_run(
    output: str, manifest: Manifest, model_uri: str, model: LoadedModel, started: float
) -> list[dict[str, Any]]:
    """Claim ``output`` for ``model`` (refusing another model's output) before any work.

    Returns the attempts recorded so far; one without ``finished_at`` was interrupted.
    """
    previous = read_run(output)
    vocabulary = read_vocabulary(output)
    if vocabulary is not None and vocabulary != model.vocabulary:
        raise TagError(f"{output} was tagged with another vocabulary; tag into a new --output")
    if previous is not None:
        ran = previous["model"]
        if (ran["name"], ran["version"]) != (model.name, model.version):
            raise TagError(
                f"{output} holds a run of {ran['name']} version {ran['version']}, not "
                f"{model.name} version {model.version}; tag into a new --output"
            )
    earlier = list(previous["attempts"]) if previous else []
    _write_json(join(output, VOCABULARY_FILE), model.vocabulary)
    this = {"started_at": _iso(started)}
    _write_json(
        join(output, RUN_FILE),
        _run_record(manifest, model_uri, model, output, None, [*earlier, this]),
    )
    return earlier


def _attempt_record(
    started: float, written: Counter[str], options: TagOptions, phases: dict[str, float]
) -> dict:
    """This attempt's counts and rates; ``phases``: seconds spent pairing the manifest with
    the output (plan), tagging, and verifying, so a run's fixed costs show apart from its
    throughput."""
    finished = time.time()
    wall_s = max(finished - started, 1e-6)
    rows = written["predictions"] + written["errors"]
    return {
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "wall_s": round(wall_s, 3),
        "predictions": written["predictions"],
        "errors": written["errors"],
        "audio_hours": round(written["audio_seconds"] / 3600, 6),
        "tracks_per_s": round(rows / wall_s, 3),
        "audio_hours_per_hour": round(written["audio_seconds"] / wall_s, 3),
        "phases_s": {name: round(seconds, 3) for name, seconds in phases.items()},
        "options": asdict(options),
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
    }


def _run_record(
    manifest: Manifest,
    model_uri: str,
    model: LoadedModel,
    output: str,
    report: VerifyReport | None,
    attempts: list[dict[str, Any]],
) -> dict[str, Any]:
    """``_run.json``: ``running`` until the final verify says complete or incomplete."""
    record: dict[str, Any] = {
        "status": "running" if report is None else "complete" if report.ok else "incomplete",
        "manifest": manifest.uri,
        "output": output,
        "model": {"uri": model_uri, "name": model.name, "version": model.version},
    }
    if report is not None:
        record["counts"] = {
            "manifest_rows": report.manifest_rows,
            "predictions": report.predictions,
            "errors": report.errors,
            "missing": report.missing,
            "surplus": report.surplus,
            "errors_by_code": _errors_by_code(output),
        }
        record["started_at"] = attempts[0]["started_at"]
        record["finished_at"] = attempts[-1]["finished_at"]
    record["attempts"] = attempts
    record["software"] = _software()
    return record


@dataclass(frozen=True)
class RunSummary:
    """The run as recorded in ``_run.json``, and the one line a run ends with."""

    record: dict[str, Any]
    report: VerifyReport

    def line(self) -> str:
        this = self.record["attempts"][-1]
        return (
            f"{self.report.describe()}. This run: {this['predictions']} tagged, "
            f"{this['errors']} errors in {this['wall_s']:.1f} s "
            f"({this['tracks_per_s']:.2f} tracks/s, {this['audio_hours_per_hour']:.1f} "
            f"audio h/h). Outputs: {self.record['output']}"
        )


def _errors_by_code(output: str) -> dict[str, int]:
    errors = read_output(output, ERRORS, [ERROR_CODE])
    return {} if errors is None else dict(sorted(_count_values(errors, ERROR_CODE).items()))


def _software() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("raytag", "ray", "torch", "torchcodec", "pyarrow", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
