"""Bad manifests on a real local Ray: a manifest mixing good rows with rows raytag cannot
tag runs to the end with every row accounted for once, and `raytag tag` refuses a manifest
it cannot use before any work, with a message naming the file and an exit code of 1."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from raytag.audio import AudioError, AudioErrorCode, decode
from raytag.cli import main
from raytag.manifest import MAX_TRACK_ID_BYTES
from raytag.tagging.output import ERRORS, PREDICTIONS
from tests.test_manifest import UNREACHABLE, gcsfs_absent
from tests.test_tagging import OPTIONS, keys, read_folder, tag_one, tiny_model, tone

HUGE_TRACK_ID = "x" * 10 * 2**20  # 10 MB


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_model(tmp_path_factory.mktemp("model"), "1")


@pytest.mark.parametrize(
    "uri", [f"http://{UNREACHABLE}/a.wav", f"ftp://{UNREACHABLE}/a.wav", "gs://catalogue/a.wav"]
)
def test_decoding_a_uri_raytag_cannot_read_fails_before_any_connection(uri: str) -> None:
    """Training and evaluation decode without the manifest's row checks: the decoder
    refuses such URIs itself (UNREACHABLE would otherwise hold the call for a timeout)."""
    gcsfs_absent()
    with pytest.raises(AudioError) as info:
        decode(uri)
    assert info.value.code is AudioErrorCode.UNSUPPORTED_URI
    assert info.value.message.startswith(f"{uri}: ")


def test_mixed_manifest_accounts_for_every_row_once(model, tmp_path, ray_local) -> None:
    gcsfs_absent()
    wav = tone(tmp_path / "a.wav", hz=440, seconds=2)
    rows = {  # track_id: (uri, expected error code; None: a prediction)
        "plain-path": (str(wav), None),
        "file-url": (wav.as_uri(), None),
        HUGE_TRACK_ID: (str(wav), "track_id_too_long"),
        "http": (f"http://{UNREACHABLE}/a.wav", "unsupported_uri"),
        "https": (f"https://{UNREACHABLE}/a.wav", "unsupported_uri"),
        "ftp": (f"ftp://{UNREACHABLE}/a.wav", "unsupported_uri"),
        "gs-without-gcsfs": ("gs://catalogue/a.wav", "unsupported_uri"),
        "unknown-scheme": ("foo://catalogue/a.wav", "unsupported_uri"),
    }
    manifest = tmp_path / "manifest.parquet"
    table = pa.table({"track_id": list(rows), "uri": [uri for uri, _ in rows.values()]})
    pq.write_table(table, manifest)

    output, summary = tag_one(str(manifest), model, str(tmp_path / "tags"), OPTIONS)

    predictions, errors = read_folder(output, PREDICTIONS), read_folder(output, ERRORS)
    assert keys(predictions) + keys(errors) == keys(table)  # each row exactly once
    assert sorted(predictions["track_id"].to_pylist()) == ["file-url", "plain-path"]
    codes = dict(zip(errors["track_id"].to_pylist(), errors["error_code"].to_pylist(), strict=True))
    assert codes == {track_id: code for track_id, (_, code) in rows.items() if code}
    messages = dict(zip(errors["track_id"].to_pylist(), errors["message"].to_pylist(), strict=True))
    assert messages[HUGE_TRACK_ID] == f"track_id is longer than {MAX_TRACK_ID_BYTES:,} bytes"
    assert "raytag does not read ftp:// URIs" in messages["ftp"]
    assert "gcsfs" in messages["gs-without-gcsfs"]
    # Refused by the row checks: none of these rows reached a decoder.
    assert summary.record["attempts"][0]["decoding"]["tracks"] == 2
    assert summary.record["counts"]["errors_by_code"] == {
        "track_id_too_long": 1, "unsupported_uri": 5}  # fmt: skip

    result = CliRunner().invoke(main, ["verify", "--manifest", str(manifest), "--output", output])
    assert result.exit_code == 0, result.output
    assert "8 manifest rows, 2 predictions, 6 errors: every row exactly once" in result.output


def not_parquet(path: Path) -> str:
    path.write_text("track_id,uri\nx,/a.wav\n")
    return r"not readable Parquet: .*manifest\.parquet \(Parquet magic bytes not found"


def no_uri_column(path: Path) -> str:
    pq.write_table(pa.table({"track_id": ["x"], "path": ["/a.wav"]}), path)
    return r"lacks column\(s\) uri; it has track_id, path"


def no_rows(path: Path) -> str:
    pq.write_table(pa.schema([("track_id", pa.string()), ("uri", pa.string())]).empty_table(), path)
    return r"has no rows \(1 file\(s\)\): nothing to tag"


@pytest.mark.parametrize("write", [not_parquet, no_uri_column, no_rows])
def test_tag_command_refuses_an_unusable_manifest(write, model, tmp_path, ray_local) -> None:
    manifest = tmp_path / "manifest.parquet"
    problem = write(manifest)
    output = tmp_path / "tags"
    args = ["tag", "--manifest", str(manifest), "--model", model, "--output", str(output)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert f"Error: manifest {manifest}" in result.output
    assert re.search(problem, result.output), result.output
    assert not output.exists()
