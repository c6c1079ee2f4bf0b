"""The one definition of a tagging run's output: its layout, schemas and file naming.

Layout under ``output`` (a local folder or an ``s3://`` prefix): one folder per model,
``NAME-vVERSION`` (:func:`model_output`), so that one run can tag with several models
and a later run can add a model or resume one::

    NAME-vVERSION/
      predictions/*.parquet  the manifest's columns (:func:`carried_columns`), then
                             model_name, model_version, scores, tags, top_tags,
                             duration_s, n_patches[, embedding]
      errors/*.parquet       track_id, uri, error_code, message
      vocabulary.json        the tag order of ``scores``
      thresholds.json        the thresholds that decided ``tags`` and where they came from
      _run.json              status, model, thresholds, counts, attempts (options,
                             throughput, decoding, placement), versions

Files appear whole (a rename on local disks, a single object on S3) under names fixed per
attempt, execution and write task, so a retried write task overwrites its own files and
readers never see half a file. The tagging job, ``raytag verify`` and ``raytag evaluate``
all read and write through this module.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raytag.manifest import TRACK_ID, URI, Manifest, ManifestError, read_footers
from raytag.storage import arrow_filesystem, filesystem, is_local, join
from raytag.thresholds import Thresholds

if TYPE_CHECKING:
    import ray.data

PREDICTIONS = "predictions"
ERRORS = "errors"
VOCABULARY_FILE = "vocabulary.json"
THRESHOLDS_FILE = "thresholds.json"
RUN_FILE = "_run.json"

ERROR_CODE = "error_code"
MESSAGE = "message"
SCORES = "scores"
TAGS = "tags"
DURATION = "duration_s"
N_PATCHES = "n_patches"

TOP_TAG = pa.struct([("tag", pa.string()), ("score", pa.float32())])
_VECTOR = pa.list_(pa.float32())
SCORES_FIELD = pa.field(SCORES, _VECTOR)  # one score per tag, in vocabulary.json's order
# The tags whose score is at or above the model's threshold, in vocabulary order; null
# on every row of a model without thresholds (see thresholds.json).
TAGS_FIELD = pa.field(TAGS, pa.list_(pa.string()))
# What the model stage adds to a row (null on rows that failed before it).
MODEL_FIELDS = (
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    SCORES_FIELD,
    TAGS_FIELD,
    pa.field("top_tags", pa.list_(TOP_TAG)),
)
EMBEDDING_FIELD = pa.field("embedding", _VECTOR)
DECODE_FIELDS = (pa.field(DURATION, pa.float64()), pa.field(N_PATCHES, pa.int32()))
ERROR_SCHEMA = pa.schema([(name, pa.string()) for name in (TRACK_ID, URI, ERROR_CODE, MESSAGE)])
# Names the job gives columns of its own. Columns starting with "_" are the job's too,
# between its stages; never written.
ADDED_COLUMNS = frozenset(
    [ERROR_CODE, MESSAGE, EMBEDDING_FIELD.name] + [f.name for f in (*MODEL_FIELDS, *DECODE_FIELDS)]
)
# A manifest column named like one of the job's is carried as INPUT_PREFIX + its name.
INPUT_PREFIX = "input_"
# Where a model folder's thresholds came from (thresholds.json "source").
FROM_MODEL, FROM_FILE, NO_THRESHOLDS = "model", "file", "none"
_FILES_PER_READ = 16  # output files per read task


class TagError(RuntimeError):
    """The run cannot start or resume as asked (e.g. the output holds another model's run)."""


class StorageUnreachableError(TagError):
    """Object storage stopped answering during a run, even after the S3 clients' retries
    (:mod:`raytag.storage`). What was written stays; the same command run again resumes."""


def model_output(output: str, name: str, version: str) -> str:
    """The folder of one model's outputs under a run's ``output``: ``NAME-vVERSION``, with
    any character a path or an object key would trip on replaced by ``_``."""
    return join(output, re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-v{version}"))


def model_outputs(output: str) -> list[str]:
    """The model folders of a run's ``output`` (those holding a ``_run.json``)."""
    fs, path = arrow_filesystem(output)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    folders = sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)
    return [join(output, name) for name in folders if read_run(join(output, name)) is not None]


def model_fields(embedding: bool) -> list[pa.Field]:
    """The columns the model stage adds, with the embedding when it is asked for."""
    return [*MODEL_FIELDS, EMBEDDING_FIELD] if embedding else list(MODEL_FIELDS)


def prediction_schema(manifest: Manifest, embedding: bool) -> pa.Schema:
    """Columns of ``predictions/*.parquet``: the manifest's as read (see
    :func:`carried_columns`), then the model's."""
    extra = [EMBEDDING_FIELD] if embedding else []
    return pa.schema([*manifest.normalised_schema, *MODEL_FIELDS, *DECODE_FIELDS, *extra])


def carried_columns(manifest: Manifest, passthrough: Sequence[str] | None) -> dict[str, str]:
    """The manifest columns the prediction rows carry, each to its name there, in the
    manifest's order: ``track_id``, ``uri`` and those of ``passthrough`` (None: all).

    A column named like one of the job's own (:data:`ADDED_COLUMNS`, or starting with
    ``_``) is carried as ``input_NAME``, so the user's ``duration_s`` arrives beside
    raytag's. Raises ManifestError, before any work, for a ``passthrough`` column the
    manifest lacks, or two columns that would be carried under one name.
    """
    names = manifest.schema.names
    if passthrough is not None:
        manifest.select({name: name for name in passthrough})  # refuses unknown columns
    wanted = set(names if passthrough is None else passthrough) | {TRACK_ID, URI}
    carried = {name: _carried_name(name) for name in names if name in wanted}
    twice = {name for name, count in Counter(carried.values()).items() if count > 1}
    if twice:
        clashes = [f"{source} (as {name})" for source, name in carried.items() if name in twice]
        raise ManifestError(
            f"manifest {manifest.uri}: columns {', '.join(clashes)} would be carried under "
            "one name; leave one out with --passthrough"
        )
    return carried


def _carried_name(name: str) -> str:
    return INPUT_PREFIX + name if name in ADDED_COLUMNS or name.startswith("_") else name


def new_attempt_id() -> str:
    """Sortable by start time, unique across drivers."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def file_name(attempt: str, part: int, task: int) -> str:
    """The same name for every try of one write task: a retry overwrites, never adds."""
    return f"{attempt}-{part:03d}-{task:06d}.parquet"


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


def count_rows(output: str, folder: str) -> int:
    """Rows in the finished files of ``output/folder``, from their footers alone."""
    fs, _ = arrow_filesystem(output)
    footers = read_footers(fs, output_files(output, folder))
    return sum(meta.num_rows for meta, _ in footers if meta is not None)


def read_output(output: str, folder: str, columns: list[str]) -> ray.data.Dataset | None:
    """``columns`` of the finished files in ``output/folder`` as a Ray Dataset; None when
    there are none.

    A map over our own file list rather than ``read_parquet``: in Ray 2.60 each
    ``read_parquet`` starts a pool of footer-reading actors, seconds per call on a small
    cluster, and a run reads its outputs several times.
    """
    import ray.data

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


def read_output_table(output: str, folder: str, schema: pa.Schema) -> pa.Table:
    """``schema``'s columns of the finished files of ``output/folder``, read in this
    process (no Ray): for outputs small enough to join in one place."""
    files = output_files(output, folder)
    if not files:
        return schema.empty_table()
    fs, _ = arrow_filesystem(output)
    return pq.ParquetDataset(files, filesystem=fs).read(columns=schema.names)


def write_parquet(uri: str, table: pa.Table) -> None:
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


def prediction_columns(output: str) -> list[str] | None:
    """The columns of the predictions ``output`` already holds (one file's footer); None
    when it holds none."""
    files = output_files(output, PREDICTIONS)
    if not files:
        return None
    fs, _ = arrow_filesystem(output)
    return pq.read_schema(files[0], filesystem=fs).names


def write_run(output: str, record: dict[str, Any]) -> None:
    _write_json(join(output, RUN_FILE), record)


def write_vocabulary(output: str, vocabulary: list[str]) -> None:
    _write_json(join(output, VOCABULARY_FILE), vocabulary)


def thresholds_record(
    thresholds: Thresholds | None, vocabulary: list[str], source: str, file: str | None = None
) -> dict[str, Any]:
    """thresholds.json: ``source`` (``model``, ``file`` or ``none``), the ``file`` they
    were read from, and :meth:`Thresholds.to_dict`'s ``values`` and ``policy`` (null for
    ``none``)."""
    if thresholds is None:
        return {"source": source, "file": file, "values": None, "policy": None}
    return {"source": source, "file": file, **thresholds.to_dict(vocabulary)}


def recorded_thresholds(record: dict[str, Any], vocabulary: list[str]) -> Thresholds | None:
    """The thresholds a :func:`thresholds_record` holds; None for a model without any."""
    return None if record["values"] is None else Thresholds.from_dict(record, vocabulary)


def read_thresholds(output: str) -> dict[str, Any] | None:
    """thresholds.json of ``output`` (:func:`thresholds_record`); None before any run."""
    return _read_json(join(output, THRESHOLDS_FILE))


def write_thresholds(output: str, record: dict[str, Any]) -> None:
    _write_json(join(output, THRESHOLDS_FILE), record)


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
