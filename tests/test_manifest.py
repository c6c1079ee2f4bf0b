"""manifest: listing and checking Parquet manifests (file, folder, glob; local and S3) and the
row checks that turn bad rows into error rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytag.manifest import (
    MAX_TRACK_ID_BYTES,
    ManifestError,
    ManifestErrorCode,
    check_rows,
    open_manifest,
)
from raytag.storage import arrow_filesystem

ROWS = [{"track_id": f"t{i}", "uri": f"/audio/{i}.wav", "album": f"a{i % 2}"} for i in range(5)]


def write(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_file_folder_and_glob(tmp_path: Path) -> None:
    write(tmp_path / "m" / "part-0.parquet", ROWS[:3])
    write(tmp_path / "m" / "sub" / "part-1.parquet", ROWS[3:])
    (tmp_path / "m" / "_SUCCESS").write_text("")  # hidden files of a folder are skipped
    (tmp_path / "m" / ".part-2.parquet.tmp").write_text("partial")

    single = open_manifest(str(tmp_path / "m" / "part-0.parquet"))
    assert single.num_rows == 3 and len(single.files) == 1
    folder = open_manifest(str(tmp_path / "m"))
    assert folder.num_rows == 5 and len(folder.files) == 2
    assert folder.extra_columns == ["album"]
    assert open_manifest(f"file://{tmp_path}/m/").num_rows == 5
    assert open_manifest(str(tmp_path / "m" / "part-*.parquet")).num_rows == 3


def test_s3_prefix(s3_bucket: str) -> None:
    fs, path = arrow_filesystem(f"{s3_bucket}/manifests/part-0.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), path, filesystem=fs)
    manifest = open_manifest(f"{s3_bucket}/manifests/")
    assert manifest.num_rows == 5
    assert manifest.files == (f"{s3_bucket.removeprefix('s3://')}/manifests/part-0.parquet",)


KEYS = pa.schema([("track_id", pa.string()), ("uri", pa.string())])
BAD_MANIFESTS = {
    # name: (files in the manifest folder, None for no folder; the error it must raise)
    "missing": (None, "not found"),
    "empty-folder": ({}, "matches no files"),
    "non-parquet-file": ({"a.parquet": ROWS, "README.txt": b"x"}, "not readable Parquet: .*README"),
    "corrupt": ({"a.parquet": b"PAR1 garbage"}, "not readable Parquet"),
    "csv-named-parquet": (
        {"a.parquet": b"track_id,uri\nx,/a.wav\n"},
        r"not readable Parquet: .*a\.parquet \(Parquet magic bytes not found.*convert a CSV",
    ),
    "zero-byte-file": (
        {"a.parquet": b"", "b.parquet": ROWS},
        r"1 file\(s\) are not readable Parquet: .*a\.parquet \(Parquet file size is 0 bytes\)",
    ),
    "missing-column": (
        {"a.parquet": [{"track_id": "x", "path": "/a.wav"}]},
        r"lacks column\(s\) uri; it has track_id, path",
    ),
    "missing-track-id": ({"a.parquet": [{"uri": "/a.wav"}]}, r"lacks column\(s\) track_id"),
    "wrong-type": ({"a.parquet": [{"track_id": 1, "uri": "/a"}]}, "track_id must be a string"),
    "two-schemas": (
        {"a.parquet": ROWS, "b.parquet": [{"track_id": "x", "uri": "/b.wav"}]},
        "all files must share one schema",
    ),
    "no-rows": (
        {"a.parquet": pa.Table.from_pylist([], schema=KEYS), "b.parquet": KEYS.empty_table()},
        r"m has no rows \(2 file\(s\)\): nothing to tag",
    ),
}


@pytest.mark.parametrize("name", BAD_MANIFESTS)
def test_bad_manifests_fail_before_any_work(tmp_path: Path, name: str) -> None:
    """Each refusal names the manifest, the file at fault and what is wrong with it."""
    files, message = BAD_MANIFESTS[name]
    folder = tmp_path / "m"
    if files is not None:
        folder.mkdir()
    for file, content in (files or {}).items():
        if isinstance(content, bytes):
            (folder / file).write_bytes(content)
        else:
            table = content if isinstance(content, pa.Table) else pa.Table.from_pylist(content)
            pq.write_table(table, folder / file)
    with pytest.raises(ManifestError, match=message):
        open_manifest(str(folder))


def gcsfs_absent() -> None:
    """gs:// stands for storage whose library is missing: the set-up installs no gcsfs."""
    assert importlib.util.find_spec("gcsfs") is None, "this test needs an environment without gcsfs"


# TEST-NET-1 (RFC 5737) routes nowhere: a client that tried to connect would wait out a
# timeout, so each refusal below is one made before any connection.
UNREACHABLE = "192.0.2.1"


@pytest.mark.parametrize(
    ("location", "message"),
    [
        (f"http://{UNREACHABLE}/m.parquet", "raytag does not read http:// URIs"),
        (f"ftp://{UNREACHABLE}/m.parquet", "raytag does not read ftp:// URIs"),
        (f"sftp://{UNREACHABLE}/m.parquet", "raytag does not read sftp:// URIs"),
        ("gs://catalogue/m.parquet", "gs:// needs a library that is not installed here: .*gcsfs"),
    ],
)
def test_manifest_where_raytag_cannot_read_is_refused_before_any_io(location, message) -> None:
    gcsfs_absent()
    with pytest.raises(ManifestError, match=f"manifest {location}: {message}"):
        open_manifest(location)


def test_check_rows_flags_long_track_ids_and_uris_raytag_cannot_read() -> None:
    """Limits count bytes, not characters; a scheme is judged as fsspec would parse it."""
    gcsfs_absent()
    rows = {  # track_id: (uri, expected code)
        "x" * MAX_TRACK_ID_BYTES: ("/a.wav", None),
        "x" * (MAX_TRACK_ID_BYTES + 1): ("/a.wav", ManifestErrorCode.TRACK_ID_TOO_LONG),
        "é" * (MAX_TRACK_ID_BYTES // 2 + 1): ("/a.wav", ManifestErrorCode.TRACK_ID_TOO_LONG),
        # The first failing check wins: the id's come before the uri's.
        "y" * (MAX_TRACK_ID_BYTES + 1): ("ftp://h/a.wav", ManifestErrorCode.TRACK_ID_TOO_LONG),
        "http": (f"http://{UNREACHABLE}/a.wav", ManifestErrorCode.UNSUPPORTED_URI),
        "https": (f"https://{UNREACHABLE}/a.wav", ManifestErrorCode.UNSUPPORTED_URI),
        "ftp": (f"ftp://{UNREACHABLE}/a.wav", ManifestErrorCode.UNSUPPORTED_URI),
        "gs": ("gs://catalogue/a.wav", ManifestErrorCode.UNSUPPORTED_URI),
        "chained": ("simplecache::s3://catalogue/a.wav", ManifestErrorCode.UNSUPPORTED_URI),
        "upper-case": ("S3://catalogue/a.wav", ManifestErrorCode.UNSUPPORTED_URI),
        "path": ("audio/a.wav", None),
        "colon-in-name": ("/audio/track:1.wav", None),
        "file-url": ("file:///audio/a.wav", None),
        "s3": ("s3://catalogue/a.wav", None),
        "s3a": ("s3a://catalogue/a.wav", None),
        "memory": ("memory://catalogue/a.wav", None),
    }
    table = pa.table({"track_id": list(rows), "uri": [uri for uri, _ in rows.values()]})
    codes, messages = check_rows(table, pa.array([1] * len(rows), pa.int32()))
    assert codes.to_pylist() == [code for _, code in rows.values()]
    by_id = dict(zip(rows, messages.to_pylist(), strict=True))
    assert by_id["x" * (MAX_TRACK_ID_BYTES + 1)] == "track_id is longer than 1,024 bytes"
    assert by_id["http"].startswith("raytag does not read http:// URIs (it reads local paths,")
    assert by_id["ftp"].startswith("raytag does not read ftp:// URIs")
    assert "gcsfs" in by_id["gs"] and "s3://" in by_id["upper-case"]
    assert by_id["chained"].startswith("raytag does not read simplecache:// URIs")


def test_check_rows_flags_bad_rows_first_failure_wins() -> None:
    table = pa.table(
        {
            "track_id": ["ok", None, " ", "n", "e", "d", "d", None],
            "uri": ["/a.wav", "/b.wav", "/c.wav", None, "  ", "/d.wav", "/e.wav", None],
        }
    )
    copies = pa.array([1, 2, 1, 1, 1, 2, 2, 2], pa.int32())
    codes, messages = check_rows(table, copies)
    assert codes.to_pylist() == [
        None,
        ManifestErrorCode.NULL_TRACK_ID,
        ManifestErrorCode.EMPTY_TRACK_ID,
        ManifestErrorCode.NULL_URI,
        ManifestErrorCode.EMPTY_URI,
        ManifestErrorCode.DUPLICATE_TRACK_ID,
        ManifestErrorCode.DUPLICATE_TRACK_ID,
        ManifestErrorCode.NULL_TRACK_ID,
    ]
    assert messages.to_pylist()[0] is None
    assert all(messages.to_pylist()[1:])


@pytest.mark.usefixtures("ray_local")
def test_read_normalises_string_types(tmp_path: Path) -> None:
    schema = pa.schema([("track_id", pa.large_string()), ("uri", pa.large_string()),
                        ("year", pa.int16())])  # fmt: skip
    rows = [{"track_id": "t0", "uri": "/a.wav", "year": 1999}]
    manifest = open_manifest(str(write(tmp_path / "m.parquet", rows, schema)))
    read = manifest.read().take_batch(batch_format="pyarrow")
    assert read.schema == manifest.normalised_schema
    assert read.schema.field("track_id").type == pa.string()
    assert read.to_pylist() == rows
    assert manifest.read(["track_id"]).take_all() == [{"track_id": "t0"}]
    # Some columns, under other names: what tagging carries into its predictions.
    renamed = manifest.select({"track_id": "track_id", "year": "input_year"})
    assert renamed.normalised_schema.names == ["track_id", "input_year"]
    assert renamed.normalised_schema.field("input_year").type == pa.int16()
    assert renamed.read().take_all() == [{"track_id": "t0", "input_year": 1999}]
    assert renamed.read(["input_year"]).take_all() == [{"input_year": 1999}]
    with pytest.raises(ManifestError, match="has no column\\(s\\) artist; it has track_id, uri"):
        manifest.select({"artist": "artist"})


@pytest.mark.usefixtures("ray_local")
def test_read_covers_every_row_group_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads are cut by whole row groups into pieces of about ``_ROWS_PER_READ`` rows,
    small files sharing a piece; together they hold every row exactly once."""
    import raytag.manifest

    rows = [{"track_id": f"t{i}", "uri": f"/audio/{i}.wav"} for i in range(11)]
    (tmp_path / "m").mkdir()
    for name, part in (("a", rows[:7]), ("b", rows[7:8]), ("c", rows[8:])):
        pq.write_table(pa.Table.from_pylist(part), tmp_path / "m" / f"{name}.parquet",
                       row_group_size=2)  # fmt: skip
    monkeypatch.setattr(raytag.manifest, "_ROWS_PER_READ", 3)
    manifest = open_manifest(str(tmp_path / "m"))
    assert manifest.row_groups == ((2, 2, 2, 1), (1,), (2, 1))
    pieces = manifest._pieces()
    read_groups = [
        (path.rsplit("/", 1)[1], group)
        for piece in pieces
        for path, groups in zip(piece["paths"], piece["row_groups"], strict=True)
        for group in groups
    ]
    expected = [("a.parquet", g) for g in range(4)] + [("b.parquet", 0)]
    assert read_groups == expected + [("c.parquet", 0), ("c.parquet", 1)]
    sizes = dict(zip(manifest.files, manifest.row_groups, strict=True))
    for piece in pieces:
        groups = zip(piece["paths"], piece["row_groups"], strict=True)
        assert sum(sizes[path][g] for path, gs in groups for g in gs) <= 3
    assert any(len(piece["paths"]) == 2 for piece in pieces)  # a 1-row file shares a piece
    dataset = manifest.read()
    assert sorted(dataset.take_all(), key=lambda r: int(r["track_id"][1:])) == rows
    assert dataset.materialize().num_blocks() == len(pieces)
