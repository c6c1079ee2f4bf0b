"""Catalogue manifests: Parquet files listing ``track_id`` and ``uri`` (plus any extra columns).

A manifest is one Parquet file, a folder (or object-storage prefix) of them, or a glob,
local or on ``s3://``. :func:`open_manifest` checks everything that can be checked from
file listings and Parquet footers (files exist, every file is Parquet, one schema, the
required columns, a location raytag can read) and raises :class:`ManifestError` before any
work starts. Problems of single rows (null, empty or over-long ids, null or empty URIs,
URIs raytag cannot read, duplicate ids) do not stop a run: they become error rows with a
:class:`ManifestErrorCode` (see :func:`check_rows`).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raytag.storage import arrow_filesystem, filesystem

if TYPE_CHECKING:
    import ray.data

TRACK_ID = "track_id"
URI = "uri"
REQUIRED_COLUMNS = (TRACK_ID, URI)
_STRING_TYPES = (pa.string(), pa.large_string())
_FOOTER_THREADS = 16
# Rows per read task: a small manifest is read by one task, a big one across the cluster.
_ROWS_PER_READ = 50_000
# A track_id is a key (an ISRC is 12 bytes, a UUID 36): a longer one is a broken export,
# and every output row and lookup would carry it. 1,024 bytes is S3's limit for a key.
MAX_TRACK_ID_BYTES = 1024
# The schemes raytag reads manifests and audio from, besides plain local paths: object
# storage through fsspec, when its library (s3fs, gcsfs) is installed, and memory://, the
# process's own fsspec store. Network protocols (http://, ftp://, ...) are refused before
# any connection: on an unreachable host their clients wait out a network timeout, per row.
READABLE_SCHEMES = ("file", "s3", "s3a", "gs", "gcs", "memory")
# A URI's scheme: what precedes "://", or fsspec's chaining "::" (simplecache::s3://...).
_SCHEME = r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)(?:://|::)"


class ManifestError(ValueError):
    """The manifest as a whole cannot be used; raised before any work starts."""


class ManifestErrorCode(StrEnum):
    """Why one manifest row cannot be tagged. Stored in ``errors/*.parquet``."""

    NULL_TRACK_ID = "null_track_id"
    EMPTY_TRACK_ID = "empty_track_id"
    TRACK_ID_TOO_LONG = "track_id_too_long"
    NULL_URI = "null_uri"
    EMPTY_URI = "empty_uri"
    UNSUPPORTED_URI = "unsupported_uri"
    DUPLICATE_TRACK_ID = "duplicate_track_id"


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: its files, their common schema and row count."""

    uri: str
    files: tuple[str, ...]  # paths inside ``filesystem``
    filesystem: pafs.FileSystem
    schema: pa.Schema
    num_rows: int
    row_groups: tuple[tuple[int, ...], ...]  # rows in each row group, per file
    # (file column, name in the rows read) pairs, in order; None: every column as it is.
    selected: tuple[tuple[str, str], ...] | None = None

    @property
    def extra_columns(self) -> list[str]:
        return [name for name in self.schema.names if name not in REQUIRED_COLUMNS]

    def select(self, columns: Mapping[str, str]) -> Manifest:
        """The same manifest read as only ``columns`` (file column -> its name in the rows
        read), in that order."""
        unknown = [name for name in columns if name not in self.schema.names]
        if unknown:
            raise ManifestError(
                f"manifest {self.uri} has no column(s) {', '.join(unknown)}; "
                f"it has {', '.join(self.schema.names)}"
            )
        return replace(self, selected=tuple(columns.items()))

    def read(self, columns: list[str] | None = None) -> ray.data.Dataset:
        """The rows as a Ray Dataset (``track_id`` and ``uri`` as ``string``), in
        :attr:`normalised_schema`; ``columns``: only these of its names.

        Read by whole row groups, about ``_ROWS_PER_READ`` rows per task, from the footers
        :func:`open_manifest` has already read. Not ``read_parquet``: in Ray 2.60 it costs
        seconds per call however small the manifest (7 s on a 16-CPU cluster here), and
        a tagging run reads its manifest twice.
        """
        import ray.data

        schema = self.normalised_schema
        if columns is not None:
            schema = pa.schema([schema.field(name) for name in columns])
        file_column = {name: source for source, name in self.selected or ()}
        sources = [file_column.get(name, name) for name in schema.names]
        pieces = self._pieces()
        return ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
            _read_pieces,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"filesystem": self.filesystem, "schema": schema, "sources": sources},
        )

    def _pieces(self) -> list[dict[str, list]]:
        """The row groups of all files cut into pieces of about ``_ROWS_PER_READ`` rows
        (small files share a piece): ``{"paths": [...], "row_groups": [[...], ...]}``."""
        pieces: list[dict[str, list]] = []
        paths: list[str] = []
        groups: list[list[int]] = []
        rows = 0
        for path, sizes in zip(self.files, self.row_groups, strict=True):
            for index, size in enumerate(sizes):
                if rows and rows + size > _ROWS_PER_READ:
                    pieces.append({"paths": paths, "row_groups": groups})
                    paths, groups, rows = [], [], 0
                if not paths or paths[-1] != path:
                    paths.append(path)
                    groups.append([])
                groups[-1].append(index)
                rows += size
        if paths:
            pieces.append({"paths": paths, "row_groups": groups})
        return pieces

    @property
    def normalised_schema(self) -> pa.Schema:
        """The schema of :meth:`read`'s rows: the selected columns under their names."""
        schema = _normalise_schema(self.schema)
        if self.selected is None:
            return schema
        return pa.schema([schema.field(source).with_name(name) for source, name in self.selected])


def open_manifest(uri: str) -> Manifest:
    """List and check the manifest at ``uri`` (file, folder/prefix or glob)."""
    problem = unreadable_uri(uri)
    if problem is not None:
        raise ManifestError(f"manifest {uri}: {problem}")
    fs, _ = arrow_filesystem(uri)
    files = _list_files(uri)
    footers = read_footers(fs, files)
    unreadable = [
        f"{file} ({reason})" for file, (_, reason) in zip(files, footers, strict=True) if reason
    ]
    if unreadable:
        raise ManifestError(
            f"manifest {uri}: {len(unreadable)} file(s) are not readable Parquet: "
            + "; ".join(unreadable[:5])
            + (" ..." if len(unreadable) > 5 else "")
            + ". Point --manifest at the Parquet files only (e.g. a glob like prefix/*.parquet); "
            "convert a CSV with pyarrow.csv.read_csv and pyarrow.parquet.write_table."
        )
    metas = [meta for meta, _ in footers]
    schema = metas[0].schema.to_arrow_schema().remove_metadata()
    for file, meta in zip(files, metas, strict=True):
        other = meta.schema.to_arrow_schema().remove_metadata()
        if not other.equals(schema):
            raise ManifestError(
                f"manifest {uri}: {file} has schema ({_describe(other)}), "
                f"{files[0]} has ({_describe(schema)}); all files must share one schema"
            )
    _check_schema(uri, schema)
    num_rows = sum(meta.num_rows for meta in metas)
    if num_rows == 0:  # most likely an export that selected nothing: say so, not "done"
        raise ManifestError(f"manifest {uri} has no rows ({len(files)} file(s)): nothing to tag")
    row_groups = tuple(
        tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) for meta in metas
    )
    return Manifest(
        uri=uri,
        files=tuple(files),
        filesystem=fs,
        schema=schema,
        num_rows=num_rows,
        row_groups=row_groups,
    )


def check_rows(table: pa.Table, copies: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Error code and message per row (null where the row is fine).

    ``copies`` is how many manifest rows share the row's ``track_id``: every row of a
    duplicated id is an error, since which of its URIs is meant cannot be known. Messages
    never quote the row's values: its error row carries them already.
    """
    track_id, uri = table[TRACK_ID], table[URI]
    uri_problems = _uri_problems(uri)
    checks = [
        (pc.is_null(track_id), ManifestErrorCode.NULL_TRACK_ID, "track_id is null"),
        (_blank(track_id), ManifestErrorCode.EMPTY_TRACK_ID, "track_id is empty"),
        (
            pc.greater(pc.binary_length(track_id), MAX_TRACK_ID_BYTES),
            ManifestErrorCode.TRACK_ID_TOO_LONG,
            f"track_id is longer than {MAX_TRACK_ID_BYTES:,} bytes",
        ),
        (pc.is_null(uri), ManifestErrorCode.NULL_URI, "uri is null"),
        (_blank(uri), ManifestErrorCode.EMPTY_URI, "uri is empty"),
        (pc.is_valid(uri_problems), ManifestErrorCode.UNSUPPORTED_URI, uri_problems),
        (
            pc.greater(copies, 1),
            ManifestErrorCode.DUPLICATE_TRACK_ID,
            "track_id appears more than once in the manifest",
        ),
    ]
    code = pa.nulls(table.num_rows, pa.string())
    message = pa.nulls(table.num_rows, pa.string())
    for failed, reason, text in reversed(checks):  # the first failing check wins
        failed = pc.fill_null(failed, False)
        code = pc.if_else(failed, pa.scalar(str(reason)), code)
        message = pc.if_else(failed, text, message)
    return code, message


def _blank(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.equal(pc.utf8_trim_whitespace(column), "")


def unreadable_uri(uri: str) -> str | None:
    """Why raytag cannot read ``uri`` (a manifest's location or a track's), without any
    I/O; None when it can: a local path, or a scheme of :data:`READABLE_SCHEMES` whose
    library is installed."""
    match = re.match(_SCHEME, uri)
    return None if match is None else _scheme_problem(match["scheme"])


def _uri_problems(uri: pa.ChunkedArray) -> pa.ChunkedArray:
    """:func:`unreadable_uri` of each row's ``uri`` (null: readable, or no uri), judged
    once per scheme."""
    schemes = pc.struct_field(pc.extract_regex(uri, _SCHEME), "scheme")
    seen = pc.unique(schemes).drop_null()
    problems = pa.array([_scheme_problem(s) for s in seen.to_pylist()], pa.string())
    return pc.take(problems, pc.index_in(schemes, value_set=seen))


@cache
def _scheme_problem(scheme: str) -> str | None:
    if scheme not in READABLE_SCHEMES:
        readable = ", ".join(f"{name}://" for name in READABLE_SCHEMES)
        return f"raytag does not read {scheme}:// URIs (it reads local paths, {readable})"
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as error:  # fsspec names the package, e.g. gcsfs for gs://
        return f"{scheme}:// needs a library that is not installed here: {error}"
    return None


def _list_files(uri: str) -> list[str]:
    """Parquet candidates under ``uri``: the file itself, a folder's files, or glob matches.

    Hidden files in folders (``.x``, ``_SUCCESS``) are skipped, as Spark and Ray do.
    """
    fs, path = filesystem(uri)
    try:
        if any(ch in path for ch in "*?["):
            files = sorted(p for p in fs.glob(path) if fs.isfile(p))
        elif fs.isdir(path):
            root = path.rstrip("/")
            files = sorted(p for p in fs.find(root) if not _hidden(posixpath.relpath(p, root)))
        elif fs.isfile(path):
            files = [path]
        else:
            raise ManifestError(f"manifest {uri} not found")
    except ManifestError:
        raise
    except Exception as err:  # permissions, credentials, network
        raise ManifestError(f"manifest {uri} cannot be listed: {err}") from err
    if not files:
        raise ManifestError(f"manifest {uri} matches no files")
    return files


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def read_footers(
    fs: pafs.FileSystem, paths: list[str]
) -> list[tuple[pq.FileMetaData | None, str | None]]:
    """Each file's Parquet footer, or why it could not be read (threads: S3 latency)."""
    if not paths:
        return []
    with ThreadPoolExecutor(min(_FOOTER_THREADS, len(paths))) as pool:
        return list(pool.map(lambda path: _read_footer(fs, path), paths))


def _read_footer(fs: pafs.FileSystem, path: str) -> tuple[pq.FileMetaData | None, str | None]:
    try:
        with fs.open_input_file(path) as handle:
            return pq.read_metadata(handle), None
    except Exception as err:
        return None, str(err).splitlines()[0] if str(err) else type(err).__name__


def _check_schema(uri: str, schema: pa.Schema) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise ManifestError(
            f"manifest {uri} lacks column(s) {', '.join(missing)}; "
            f"it has {', '.join(schema.names) or 'none'}"
        )
    for name in REQUIRED_COLUMNS:
        if schema.field(name).type not in _STRING_TYPES:
            raise ManifestError(
                f"manifest {uri}: column {name} must be a string, not {schema.field(name).type}"
            )


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def _normalise_schema(schema: pa.Schema) -> pa.Schema:
    for name in REQUIRED_COLUMNS:
        schema = schema.set(schema.get_field_index(name), pa.field(name, pa.string()))
    return schema


def _read_pieces(
    batch: pa.Table, filesystem: pafs.FileSystem, schema: pa.Schema, sources: list[str]
) -> pa.Table:
    """The rows of the row groups a batch of pieces names: the files' columns ``sources``
    as ``schema``'s columns, one for one."""
    tables = []
    pieces = zip(batch["paths"].to_pylist(), batch["row_groups"].to_pylist(), strict=True)
    for paths, groups in pieces:
        for path, row_groups in zip(paths, groups, strict=True):
            with filesystem.open_input_file(path) as handle:
                table = pq.ParquetFile(handle).read_row_groups(row_groups, columns=sources)
            table = table.select(sources).rename_columns(schema.names)
            tables.append(table.cast(schema))
    return pa.concat_tables(tables)
