"""Pair a manifest with what its outputs already hold: the rows still to tag, and verify.

Rows meet in buckets by a stable hash of ``track_id`` (a hash shuffle on Ray Data, never
a driver-side set), so every row of a track is in one bucket; there each output's rows
pair off with the manifest's by ``(track_id, uri)`` as multisets. A manifest row that
some output (one per model) has no partner for is pending, marked with the outputs that
lack it; an output row with no partner is surplus (written twice, or another
manifest's). A rerun decodes only the rows some model still lacks; :func:`verify` is the
same pairing for one output, counted, and checks each prediction row's ``tags`` against
its ``scores`` and the folder's thresholds.json.

Every row of a ``track_id`` that appears more than once is an error row
(``duplicate_track_id``): which of its URIs is meant cannot be known.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from raytag.manifest import TRACK_ID, URI, Manifest, check_rows, open_manifest
from raytag.tagging.output import (
    ERROR_CODE,
    ERRORS,
    MESSAGE,
    PREDICTIONS,
    SCORES,
    TAGS,
    TagError,
    count_rows,
    read_output,
    read_thresholds,
    read_vocabulary,
    recorded_thresholds,
)
from raytag.thresholds import Thresholds

# The side a row comes from, the output it was read from (its index; -1: the manifest),
# its bucket (a stable hash of its track_id), how many manifest rows share its track_id.
_SIDE, _OUTPUT, _BUCKET, _COPIES = "_side", "_output", "_bucket", "_copies"
MANIFEST_SIDE, PREDICTION_SIDE, ERROR_SIDE = "manifest", "prediction", "error"
_KEY_SCHEMA = pa.schema([(TRACK_ID, pa.string()), (URI, pa.string())])
# Rows meet in buckets of about this many rows: one Python call per bucket, not per track.
_ROWS_PER_BUCKET = 2048
# Hash-shuffle partitions: enough to spread a big manifest, one for a small one (each
# partition costs a reduce task even when empty).
_ROWS_PER_PARTITION, _MAX_PARTITIONS = 100_000, 200


class IncompleteRunError(RuntimeError):
    """The run ended without every manifest row in exactly one output row."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__(report.describe())
        self.report = report


def todo_column(index: int) -> str:
    """The column saying whether the ``index``-th output still lacks a pending row."""
    return f"_todo_{index}"


def pending_rows(manifest: Manifest, outputs: list[str]) -> tuple[ray.data.Dataset, int]:
    """Rows of the manifest and ``outputs`` that do not pair off (materialized), and how
    many manifest rows are among them: the rows some output still lacks, each with a
    :func:`todo_column` per output (see :func:`pending_part`).

    Refuses to resume when an output holds rows this manifest does not account for
    (another manifest, or rows written twice): adding to it could never verify.
    """
    unmatched = _unmatched_rows(manifest, outputs, manifest.normalised_schema).materialize()
    sides = count_values(unmatched, _SIDE)
    surplus = sides[PREDICTION_SIDE] + sides[ERROR_SIDE]
    if surplus:
        raise TagError(
            f"{', '.join(outputs)} hold(s) {surplus} row(s) this manifest does not account "
            "for (another manifest, or rows written twice: see `raytag verify`); tag into a "
            "new --output"
        )
    return unmatched, sides[MANIFEST_SIDE]


def pending_part(
    unmatched: ray.data.Dataset, schema: pa.Schema, outputs: int, part: int, parts: int
) -> ray.data.Dataset:
    """The pending manifest rows of buckets ``part``, ``part + parts``, ..., each with the
    manifest's verdict (error_code/message) and which of the ``outputs`` lack it."""
    return unmatched.map_batches(
        _checked_manifest_rows,
        fn_kwargs={"schema": schema, "outputs": outputs, "part": part, "parts": parts},
        batch_format="pyarrow",
    )


def bucket_count(manifest: Manifest) -> int:
    return 1 + manifest.num_rows // _ROWS_PER_BUCKET


def _unmatched_rows(manifest: Manifest, outputs: list[str], schema: pa.Schema) -> ray.data.Dataset:
    """Manifest rows that some output lacks and output rows without a manifest row.

    Rows meet in buckets by a stable hash of ``track_id`` (a hash shuffle, ``groupby``),
    so every row of a track is in one bucket; there each output's rows pair off with the
    manifest's by ``(track_id, uri)``, as multisets. Nothing is collected on the driver.
    """
    buckets = bucket_count(manifest)
    parts = [_as_side(manifest.read(schema.names), MANIFEST_SIDE, -1, schema, buckets)]
    for index, output in enumerate(outputs):
        for side, folder in ((PREDICTION_SIDE, PREDICTIONS), (ERROR_SIDE, ERRORS)):
            written = read_output(output, folder, [TRACK_ID, URI])
            if written is not None:
                parts.append(_as_side(written, side, index, schema, buckets))
    rows = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    partitions = min(_MAX_PARTITIONS, 1 + manifest.num_rows // _ROWS_PER_PARTITION)
    return rows.groupby(_BUCKET, num_partitions=partitions).map_groups(
        _unmatched_in_bucket, fn_kwargs={"outputs": len(outputs)}, batch_format="pyarrow"
    )


def _as_side(
    ds: ray.data.Dataset, side: str, output: int, schema: pa.Schema, buckets: int
) -> ray.data.Dataset:
    return ds.map_batches(
        _side_rows,
        fn_kwargs={"side": side, "output": output, "schema": schema, "buckets": buckets},
        batch_format="pyarrow",
    )


def _side_rows(
    batch: pa.Table, side: str, output: int, schema: pa.Schema, buckets: int
) -> pa.Table:
    """``batch`` in ``schema`` (absent columns null), with its side, output and bucket."""
    n = batch.num_rows
    columns = [
        batch[f.name].cast(f.type) if f.name in batch.column_names else pa.nulls(n, f.type)
        for f in schema
    ]
    table = pa.Table.from_arrays(columns, schema=schema)
    # crc32, not hash(): the same bucket in every worker process.
    bucket = [zlib.crc32((t or "").encode()) % buckets for t in table[TRACK_ID].to_pylist()]
    table = table.append_column(_BUCKET, pa.array(bucket, pa.int32()))
    table = table.append_column(_OUTPUT, pa.array([output] * n, pa.int32()))
    return table.append_column(_SIDE, pa.array([side] * n, pa.string()))


def _unmatched_in_bucket(rows: pa.Table, outputs: int) -> pa.Table:
    """Pair each output's rows with the manifest's by ``(track_id, uri)``; keep the
    manifest rows some output lacks (``_todo_N``: whether output N lacks it) and every
    unpaired output row, with ``_copies``: how many manifest rows share their track_id."""
    track_ids = rows[TRACK_ID].to_pylist()
    keys = list(zip(track_ids, rows[URI].to_pylist(), strict=True))
    origins = rows[_OUTPUT].to_pylist()  # -1: the manifest
    from_manifest = [row for row, origin in enumerate(origins) if origin < 0]
    copies = Counter(track_ids[row] for row in from_manifest)
    todo = {row: [True] * outputs for row in from_manifest}
    keep = set()
    for output in range(outputs):
        written = Counter(keys[row] for row, origin in enumerate(origins) if origin == output)
        for row in from_manifest:
            if written[keys[row]]:
                written[keys[row]] -= 1
                todo[row][output] = False
        wanted = Counter(keys[row] for row in from_manifest)
        for row, origin in enumerate(origins):
            if origin == output:
                if wanted[keys[row]]:
                    wanted[keys[row]] -= 1
                else:
                    keep.add(row)  # surplus: written twice, or another manifest's
    keep.update(row for row in from_manifest if any(todo[row]))
    kept = sorted(keep)
    table = rows.take(pa.array(kept, pa.int64()))
    table = table.append_column(_COPIES, pa.array([copies[track_ids[r]] for r in kept], pa.int32()))
    for output in range(outputs):
        flags = [todo[row][output] if row in todo else None for row in kept]
        table = table.append_column(todo_column(output), pa.array(flags, pa.bool_()))
    return table


def _checked_manifest_rows(
    batch: pa.Table, schema: pa.Schema, outputs: int, part: int, parts: int
) -> pa.Table:
    """The manifest rows of this part's buckets, with error_code/message set where a row
    cannot be tagged, and which outputs lack each row."""
    in_part = pa.array(batch[_BUCKET].to_numpy() % parts == part)
    rows = batch.filter(pc.and_(pc.equal(batch[_SIDE], MANIFEST_SIDE), in_part))
    code, message = check_rows(rows, rows[_COPIES])
    table = rows.select(schema.names).append_column(ERROR_CODE, code)
    table = table.append_column(MESSAGE, message)
    for output in range(outputs):
        table = table.append_column(todo_column(output), rows[todo_column(output)])
    return table


def count_values(rows: ray.data.Dataset, column: str) -> Counter[str]:
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


@dataclass(frozen=True)
class VerifyReport:
    """How ``output`` accounts for the manifest: ok when every row is there exactly once."""

    manifest_rows: int
    predictions: int
    errors: int
    missing: int  # manifest rows with no output row
    surplus: int  # output rows with no manifest row: written twice, or foreign
    examples: list[dict[str, Any]] = field(default_factory=list)
    # Prediction rows whose tags are not those their scores and thresholds.json give;
    # None: the folder records no thresholds (written before raytag had them).
    wrong_tags: int | None = None

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.surplus == 0 and not self.wrong_tags

    def describe(self) -> str:
        counts = (
            f"{self.manifest_rows} manifest rows, {self.predictions} predictions, "
            f"{self.errors} errors: "
        )
        if self.ok:
            return counts + "every row exactly once"
        problems = []
        if self.missing or self.surplus:
            shown = "; ".join(f"{e[_SIDE]} {e[TRACK_ID]!r} {e[URI]!r}" for e in self.examples)
            problems.append(f"{self.missing} missing, {self.surplus} surplus (e.g. {shown})")
        if self.wrong_tags:
            problems.append(
                f"{self.wrong_tags} prediction row(s) whose tags are not those their scores "
                "and thresholds.json give"
            )
        return counts + "; ".join(problems)


def verify(manifest_uri: str, output: str) -> VerifyReport:
    """Check any run, finished or not: is each manifest row in exactly one output row, and
    does each prediction row hold the tags its scores and thresholds give?"""
    return verify_manifest(open_manifest(manifest_uri), output)


def verify_manifest(manifest: Manifest, output: str, n_examples: int = 5) -> VerifyReport:
    unmatched = _unmatched_rows(manifest, [output], _KEY_SCHEMA).materialize()
    sides = count_values(unmatched, _SIDE)
    return VerifyReport(
        manifest_rows=manifest.num_rows,
        predictions=count_rows(output, PREDICTIONS),
        errors=count_rows(output, ERRORS),
        missing=sides[MANIFEST_SIDE],
        surplus=sides[PREDICTION_SIDE] + sides[ERROR_SIDE],
        examples=[
            {k: row[k] for k in (_SIDE, TRACK_ID, URI)} for row in unmatched.take(n_examples)
        ],
        wrong_tags=count_wrong_tags(output),
    )


def count_wrong_tags(output: str) -> int | None:
    """Prediction rows of ``output`` whose ``tags`` are not what its thresholds.json gives
    for their ``scores`` (null where it holds none); None when it records no thresholds."""
    record = read_thresholds(output)
    if record is None:
        return None
    vocabulary = read_vocabulary(output)
    rows = read_output(output, PREDICTIONS, [SCORES, TAGS])
    if rows is None:
        return 0
    fn_kwargs = {"thresholds": recorded_thresholds(record, vocabulary), "vocabulary": vocabulary}
    per_block = rows.map_batches(_wrong_tags, fn_kwargs=fn_kwargs, batch_format="pyarrow")
    return sum(row["wrong"] for row in per_block.iter_rows())


def _wrong_tags(batch: pa.Table, thresholds: Thresholds | None, vocabulary: list[str]) -> pa.Table:
    tags = batch[TAGS].to_pylist()
    if thresholds is None:
        wrong = sum(row is not None for row in tags)
    else:
        # A row whose scores are not one per tag cannot hold the right tags.
        whole = pc.fill_null(pc.equal(pc.list_value_length(batch[SCORES]), len(vocabulary)), False)
        scores = pc.list_flatten(batch[SCORES].filter(whole)).to_numpy(zero_copy_only=False)
        expected = thresholds.tags(scores.reshape(-1, len(vocabulary)), vocabulary)
        kept = [row for row, keep in zip(tags, whole.to_pylist(), strict=True) if keep]
        wrong = batch.num_rows - len(kept)
        wrong += sum(got != want for got, want in zip(kept, expected, strict=True))
    return pa.table({"wrong": [wrong]})
