"""Batch tagging end to end on real Ray, real audio and a real S3 server (SeaweedFS): the
output layout, exactly-once accounting, verify, resume after a killed model actor and after
a killed job, S3 in and out, and `ray job submit` of jobs/tag.py against a real head."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
import torch
from click.testing import CliRunner

from raytag.audio import decode_patches
from raytag.catalogue import VOCABULARY
from raytag.checkpoint import load_model, save_model
from raytag.cli import main
from raytag.config import AudioConfig
from raytag.evaluate import evaluate_predictions
from raytag.manifest import ManifestError, open_manifest
from raytag.models import build_model
from raytag.models.inference import predict_patches
from raytag.storage import arrow_filesystem, filesystem
from raytag.tagging import RunSummary, TagError, TagOptions, tag_catalogue, verify
from raytag.tagging.output import ERRORS, PREDICTIONS, output_files, prediction_schema
from raytag.tagging.stages import decode_batch, stored_patches
from raytag.thresholds import Thresholds
from tests.services import SeaweedS3

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REAL_MUSIC = [
    sorted(Path("/usr/share/games/singularity/music").glob("*.ogg"))[0],
    Path("/usr/share/games/asc/music/frontiers.mp3"),
]
N_GENERATED = 12
MAX_PATCHES = 2  # keeps the real (minutes-long) tracks cheap
OPTIONS = TagOptions(
    max_patches=MAX_PATCHES,
    decode_batch_size=2,
    predict_batch_size=2,
    rows_per_file=4,
    embedding=True,
    top_k=3,
)
# What the mixed catalogue's bad rows must become.
EXPECTED_ERRORS = {
    "missing": "not_found",
    "corrupt": "undecodable",
    "null-uri": "null_uri",
    "empty-uri": "empty_uri",
    "dup": "duplicate_track_id",
}


@dataclass(frozen=True)
class Catalogue:
    manifest: str  # a folder of two Parquet files
    rows: list[dict]
    model: str

    @property
    def taggable(self) -> int:
        return sum(1 for row in self.rows if row["track_id"] not in EXPECTED_ERRORS)


def tone(path: Path, hz: int, seconds: float, channels: int = 2, rate: int = 44_100) -> Path:
    source = f"sine=frequency={hz}:duration={seconds}"
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source]
    subprocess.run([*cmd, "-ac", str(channels), "-ar", str(rate), str(path)], check=True)
    return path


@pytest.fixture(scope="module", autouse=True)
def few_footer_readers() -> Iterator[None]:
    """Ray 2.60's read_parquet starts 32 footer-reading actors per call by default: seconds
    per read on a 2-core machine. One is plenty for these manifests (and subprocesses
    inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
        yield


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    """Generated tracks in four formats, an 8-channel 96 kHz file, real music, and the bad
    rows of EXPECTED_ERRORS, with extra columns that must pass through."""
    root = tmp_path_factory.mktemp("catalogue")
    audio = root / "audio"
    audio.mkdir()
    rows = []
    for i in range(N_GENERATED):
        ext = ("wav", "flac", "mp3", "ogg")[i % 4]
        path = tone(audio / f"gen{i}.{ext}", hz=200 + 50 * i, seconds=2 + i % 5)
        rows.append({"track_id": f"gen{i}", "uri": str(path)})
    wide = tone(audio / "wide.wav", hz=440, seconds=3, channels=8, rate=96_000)
    rows.append({"track_id": "eight-channels", "uri": str(wide)})
    rows += [{"track_id": f"real{i}", "uri": str(path)} for i, path in enumerate(REAL_MUSIC)]
    (audio / "corrupt.mp3").write_bytes(b"\xff\xfb not really an mp3 " * 64)
    rows += [
        {"track_id": "missing", "uri": str(audio / "nowhere.wav")},
        {"track_id": "corrupt", "uri": str(audio / "corrupt.mp3")},
        {"track_id": "null-uri", "uri": None},
        {"track_id": "empty-uri", "uri": ""},
        {"track_id": "dup", "uri": rows[0]["uri"]},
        {"track_id": "dup", "uri": rows[1]["uri"]},
    ]
    for i, row in enumerate(rows):
        row.update(album=f"album-{i % 3}", year=2000 + i)
    model = tiny_model(root / "model", "3")
    return Catalogue(manifest=write_manifest(root / "manifest", rows), rows=rows, model=model)


@pytest.fixture(scope="module")
def long_catalogue(catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    """The same audio three times over under new ids: a run long enough to kill midway."""
    good = [row for row in catalogue.rows if row["track_id"] not in EXPECTED_ERRORS]
    rows = [{**row, "track_id": f"{row['track_id']}-{n}"} for n in range(3) for row in good]
    rows += [row for row in catalogue.rows if row["track_id"] in EXPECTED_ERRORS]
    manifest = write_manifest(tmp_path_factory.mktemp("long") / "manifest", rows)
    return Catalogue(manifest=manifest, rows=rows, model=catalogue.model)


def write_manifest(folder: Path, rows: list[dict]) -> str:
    """Two Parquet files and a _SUCCESS marker, as Spark leaves a folder."""
    folder.mkdir()
    table = pa.Table.from_pylist(rows)
    half = len(rows) // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet")
    pq.write_table(table.slice(half), folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    return str(folder)


def tiny_model(
    folder: Path, version: str, thresholds: Thresholds | None = None, name: str = "tiny-tagger"
) -> str:
    """An untrained small model: these tests check plumbing, not tagging quality. Seeded, so
    its weights (and how far bf16 moves its scores) do not depend on which tests ran first."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("spectrogram-small", n_tags=len(VOCABULARY))
    save_model(folder, model, list(VOCABULARY), AudioConfig(), name=name, version=version,
               thresholds=thresholds)  # fmt: skip
    return str(folder)


def tag_one(
    manifest: str, model: str, output: str, options: TagOptions = OPTIONS
) -> tuple[str, RunSummary]:
    """A run with one model: its folder in ``output`` and its summary."""
    [summary] = tag_catalogue(manifest, [model], output, options)
    return summary.record["output"], summary


def read_folder(output: str, folder: str) -> pa.Table:
    fs, _ = arrow_filesystem(output)
    return pads.dataset(output_files(output, folder), filesystem=fs, format="parquet").to_table()


def cli_args(**options: object) -> list[str]:
    """``--option value`` pairs for raytag tag / jobs/tag.py."""
    return [
        arg for key, value in options.items() for arg in (f"--{key.replace('_', '-')}", str(value))
    ]


def settle(output: str, quiet_s: float = 3.0) -> None:
    """Wait until no output file has appeared for ``quiet_s`` seconds."""
    files, since = None, time.monotonic()
    while time.monotonic() - since < quiet_s:
        now = output_files(output, PREDICTIONS) + output_files(output, ERRORS)
        if now != files:
            files, since = now, time.monotonic()
        time.sleep(0.2)


def count_rows(files: list[str] | set[str]) -> int:
    return sum(pq.read_metadata(path).num_rows for path in files)


def keys(table: pa.Table) -> Counter:
    return Counter(zip(table["track_id"].to_pylist(), table["uri"].to_pylist(), strict=True))


def assert_exactly_once(catalogue: Catalogue, output: str) -> tuple[pa.Table, pa.Table]:
    """Every manifest row in exactly one output row, checked directly on the files."""
    predictions, errors = read_folder(output, PREDICTIONS), read_folder(output, ERRORS)
    manifest_keys = Counter((r["track_id"], r["uri"]) for r in catalogue.rows)
    assert keys(predictions) + keys(errors) == manifest_keys
    assert not set(predictions["track_id"].to_pylist()) & set(errors["track_id"].to_pylist())
    assert verify(catalogue.manifest, output).ok
    return predictions, errors


# -- a local run and what it leaves behind ------------------------------------------------


@pytest.fixture(scope="module")
def local_run(catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory, ray_local):
    return tag_one(catalogue.manifest, catalogue.model, str(tmp_path_factory.mktemp("run")))


def test_local_run_layout_schemas_and_error_rows(catalogue: Catalogue, local_run) -> None:
    output, summary = local_run
    assert output.endswith("/tiny-tagger-v3")  # one NAME-vVERSION folder per model
    predictions, errors = assert_exactly_once(catalogue, output)
    assert len(predictions) == catalogue.taggable

    assert predictions.schema == prediction_schema(
        open_manifest(catalogue.manifest), OPTIONS.embedding
    )
    assert errors.schema.names == ["track_id", "uri", "error_code", "message"]
    codes = dict(zip(errors["track_id"].to_pylist(), errors["error_code"].to_pylist(), strict=True))
    assert codes == EXPECTED_ERRORS
    assert all(errors["message"].to_pylist())

    by_id = {row["track_id"]: row for row in predictions.to_pylist()}
    manifest_rows = {row["track_id"]: row for row in catalogue.rows}
    for track_id, row in by_id.items():
        assert (row["album"], row["year"]) == (
            manifest_rows[track_id]["album"],
            manifest_rows[track_id]["year"],
        )
        assert (row["model_name"], row["model_version"]) == ("tiny-tagger", "3")
        assert len(row["scores"]) == len(VOCABULARY) and len(row["embedding"]) == 200
        top = row["top_tags"]
        assert [t["score"] for t in top] == sorted(row["scores"], reverse=True)[:3]
        assert all(row["scores"][VOCABULARY.index(t["tag"])] == t["score"] for t in top)
    # The long-track policy: minutes of real music, MAX_PATCHES patches.
    assert by_id["real1"]["n_patches"] == MAX_PATCHES and by_id["real1"]["duration_s"] > 120
    assert by_id["gen1"]["n_patches"] == 1 and by_id["gen1"]["duration_s"] == pytest.approx(3)
    assert by_id["eight-channels"]["duration_s"] == pytest.approx(3, abs=0.05)

    # A model without thresholds (and no --thresholds) decides no tags, and says so.
    assert predictions["tags"].null_count == len(predictions)
    fs, _ = filesystem(output)
    assert json.loads(fs.cat(f"{output}/vocabulary.json")) == list(VOCABULARY)
    assert json.loads(fs.cat(f"{output}/thresholds.json")) == {
        "source": "none", "file": None, "values": None, "policy": None}  # fmt: skip
    record = json.loads(fs.cat(f"{output}/_run.json"))
    assert record["status"] == "complete"
    assert record["model"] == {"uri": catalogue.model, "name": "tiny-tagger", "version": "3"}
    assert record["thresholds"]["source"] == "none"
    assert "tags column is null on every row" in record["thresholds"]["note"]
    assert record["counts"]["manifest_rows"] == len(catalogue.rows)
    bad_rows = [row for row in catalogue.rows if row["track_id"] in EXPECTED_ERRORS]
    assert record["counts"]["errors_by_code"] == Counter(
        EXPECTED_ERRORS[row["track_id"]] for row in bad_rows
    )
    attempt = record["attempts"][0]
    assert attempt["predictions"] == catalogue.taggable and attempt["tracks_per_s"] > 0
    assert attempt["options"]["max_patches"] == MAX_PATCHES
    # Where the time went: pairing with the output, tagging, the final verify.
    phases = attempt["phases_s"]
    assert set(phases) == {"plan_s", "tag_s", "verify_s"} and min(phases.values()) > 0
    # Each of the four figures is rounded to the millisecond: up to 2 ms apart by rounding.
    assert sum(phases.values()) <= attempt["wall_s"] + 0.002
    assert record["software"]["ray"] == ray.__version__
    line = summary.line()
    assert "every row exactly once" in line and "tracks/s" in line and output in line


def test_pipeline_scores_equal_the_model_on_the_same_patches(catalogue, local_run) -> None:
    """The scores are the model's on the patches as they crossed the object store (16-bit
    PCM by default), and within 1e-4 of the model's on float32 patches."""
    output, _ = local_run
    predictions = {r["track_id"]: r for r in read_folder(output, PREDICTIONS).to_pylist()}
    loaded = load_model(catalogue.model)
    audio = replace(loaded.audio, max_patches=MAX_PATCHES)
    for track_id in ("gen3", "real1", "eight-channels"):
        row = predictions[track_id]
        one = pa.table({"track_id": [track_id], "uri": [row["uri"]],
                        "error_code": pa.nulls(1, pa.string()),
                        "message": pa.nulls(1, pa.string())})  # fmt: skip
        pcm16 = stored_patches(decode_batch(one, (audio,), pcm16=True), 0)
        scores, embeddings = predict_patches(loaded.model, pcm16, batch_size=8)
        np.testing.assert_allclose(row["scores"], scores.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(row["embedding"], embeddings.mean(axis=0), atol=1e-5)
        float32 = decode_patches(row["uri"], audio).patches
        assert np.abs(pcm16 - float32).max() > 0  # 16-bit, not float32
        exact, _ = predict_patches(loaded.model, float32, batch_size=8)
        np.testing.assert_allclose(row["scores"], exact.mean(axis=0), atol=1e-4)


def test_decode_actors_tag_as_decode_tasks_do(catalogue, local_run, tmp_path) -> None:
    """Decoding in long-lived actors (the GPU default), here with float32 patches, gives
    the same rows as decoding in tasks (the CPU default, which made ``local_run`` with
    16-bit patches), bad rows included, and scores within 1e-4 of them."""
    options = replace(OPTIONS, decode_actors=True, decode_tasks=1, pcm16=False)
    output, summary = tag_one(catalogue.manifest, catalogue.model, str(tmp_path), options)
    predictions, errors = assert_exactly_once(catalogue, output)
    assert summary.record["attempts"][0]["options"]["decode_actors"] is True
    codes = dict(zip(errors["track_id"].to_pylist(), errors["error_code"].to_pylist(), strict=True))
    assert codes == EXPECTED_ERRORS
    by_tasks = {
        r["track_id"]: r["scores"] for r in read_folder(local_run[0], PREDICTIONS).to_pylist()
    }
    by_actors = {r["track_id"]: r["scores"] for r in predictions.to_pylist()}
    assert by_actors.keys() == by_tasks.keys()
    for track_id, scores in by_actors.items():
        np.testing.assert_allclose(scores, by_tasks[track_id], atol=1e-4)
    assert any(by_actors[t] != by_tasks[t] for t in by_actors)  # float32 did reach the model


def test_rerun_of_a_finished_run_writes_nothing(catalogue: Catalogue, local_run) -> None:
    output, _ = local_run
    before = output_files(output, PREDICTIONS) + output_files(output, ERRORS)
    _, summary = tag_one(catalogue.manifest, catalogue.model, str(Path(output).parent))
    assert output_files(output, PREDICTIONS) + output_files(output, ERRORS) == before
    attempts = summary.record["attempts"]
    assert len(attempts) == 2 and attempts[1]["predictions"] == attempts[1]["errors"] == 0
    assert summary.report.ok


# -- several models, each track decoded once ----------------------------------------------

# Rows that reach decoding: the taggable ones and those whose file fails (missing, corrupt);
# rows the manifest check refuses (null or empty uri, duplicate track_id) never do.
DECODE_FAILURES = ("missing", "corrupt")


@pytest.fixture(scope="module")
def musicnn_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second model with its own patch policy: musicnn's architecture (untrained) with
    musicnn's patches (187 frames) and their STFT context on both sides."""
    from raytag.importers.musicnn import AUDIO

    folder = tmp_path_factory.mktemp("musicnn")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model(
            "musicnn", n_tags=len(VOCABULARY), context_samples=AUDIO.context_samples
        )
    save_model(folder, model, list(VOCABULARY), AUDIO, name="tiny-musicnn", version="1")
    return str(folder)


@pytest.fixture(scope="module")
def musicnn_run(catalogue, musicnn_model, tmp_path_factory, ray_local) -> tuple[str, RunSummary]:
    return tag_one(catalogue.manifest, musicnn_model, str(tmp_path_factory.mktemp("mrun")))


def scores_by_track(output: str) -> dict[str, list[float]]:
    return {r["track_id"]: r["scores"] for r in read_folder(output, PREDICTIONS).to_pylist()}


def decoded_tracks(summary: RunSummary) -> int:
    return summary.record["attempts"][-1]["decoding"]["tracks"]


def test_several_models_decode_once_and_score_as_alone(
    catalogue, local_run, musicnn_model, musicnn_run, tmp_path
) -> None:
    """Two models with different patch policies in one run: each track is decoded once,
    each model's folder verifies, and its scores are those of a run of that model alone
    (so each got its own patches from the one decode)."""
    summaries = tag_catalogue(
        catalogue.manifest, [catalogue.model, musicnn_model], str(tmp_path), OPTIONS
    )
    assert [Path(s.record["output"]).name for s in summaries] == [
        "tiny-tagger-v3", "tiny-musicnn-v1"]  # fmt: skip
    for summary, (alone, _) in zip(summaries, (local_run, musicnn_run), strict=True):
        assert_exactly_once(catalogue, summary.record["output"])
        together = scores_by_track(summary.record["output"])
        assert together.keys() == scores_by_track(alone).keys()
        for track_id, scores in together.items():
            np.testing.assert_allclose(scores, scores_by_track(alone)[track_id], atol=1e-6)
    # One decode per track for both models (a single-model run decodes as many).
    decoding = summaries[0].record["attempts"][-1]["decoding"]
    assert decoding == summaries[1].record["attempts"][-1]["decoding"]
    assert decoding["tracks"] == catalogue.taggable + len(DECODE_FAILURES)
    assert decoded_tracks(local_run[1]) == decoding["tracks"]
    assert decoding["models"] == ["tiny-tagger-v3", "tiny-musicnn-v1"]
    # `raytag verify` on the run's --output checks every model's folder.
    checked = CliRunner().invoke(
        main, ["verify", *cli_args(manifest=catalogue.manifest, output=tmp_path)]
    )
    assert checked.exit_code == 0, checked.output
    assert checked.output.count("every row exactly once") == 2

    # Resume per model: rows one model lost are decoded again, and only those.
    lost = output_files(summaries[1].record["output"], PREDICTIONS)[0]
    n_lost = count_rows([lost])
    os.remove(lost)
    again = tag_catalogue(
        catalogue.manifest, [catalogue.model, musicnn_model], str(tmp_path), OPTIONS
    )
    assert decoded_tracks(again[0]) == n_lost
    assert again[0].record["attempts"][-1]["predictions"] == 0
    assert again[1].record["attempts"][-1]["predictions"] == n_lost
    for summary in again:
        assert_exactly_once(catalogue, summary.record["output"])


def test_a_model_added_to_a_finished_run_decodes_only_for_it(
    catalogue, local_run, musicnn_model, musicnn_run, tmp_path
) -> None:
    shutil.copytree(local_run[0], tmp_path / "tiny-tagger-v3")
    finished = json.loads((tmp_path / "tiny-tagger-v3" / "_run.json").read_text())["attempts"]
    first, added = tag_catalogue(
        catalogue.manifest, [catalogue.model, musicnn_model], str(tmp_path), OPTIONS
    )
    assert first.record["attempts"][:-1] == finished  # the finished run's, then this one
    assert first.record["attempts"][-1]["predictions"] == 0
    assert added.record["attempts"][-1]["predictions"] == catalogue.taggable
    assert decoded_tracks(added) == catalogue.taggable + len(DECODE_FAILURES)
    assert_exactly_once(catalogue, added.record["output"])
    alone = scores_by_track(musicnn_run[0])
    for track_id, scores in scores_by_track(added.record["output"]).items():
        np.testing.assert_allclose(scores, alone[track_id], atol=1e-6)
    with pytest.raises(TagError, match="each model once"):
        tag_catalogue(catalogue.manifest, [catalogue.model] * 2, str(tmp_path), OPTIONS)


# -- decided tags, and the user's own columns -----------------------------------------------

TITLES = ["Café del Mar", "Ólafur’s Ballad", "東京の夜", None]
ARTISTS = ["Björk", None, "Sigur Rós", "Motörhead"]
PASSTHROUGH = ("duration_s", "title", "artist", "tags")  # album left out


@pytest.fixture(scope="module")
def label_catalogue(catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    """The mixed catalogue as a record label keeps it: its own duration_s (whole seconds
    from its metadata, some unknown), titles and artists with unicode and nulls, labels in
    tags, and an album column."""
    rows = [
        {"track_id": row["track_id"], "uri": row["uri"],
         "duration_s": None if i % 5 == 4 else 100 + i, "title": TITLES[i % 4],
         "artist": ARTISTS[i % 4], "tags": ["guitar"] if i % 2 else None, "album": row["album"]}
        for i, row in enumerate(catalogue.rows)
    ]  # fmt: skip
    manifest = write_manifest(tmp_path_factory.mktemp("label") / "manifest", rows)
    return Catalogue(manifest=manifest, rows=rows, model=catalogue.model)


@dataclass(frozen=True)
class CalibratedRun:
    output: str  # the run's --output
    models: list[str]  # tiny-tagger v5 and its twin
    summaries: list[RunSummary]
    own: Thresholds  # stored with both models
    override: Thresholds  # the twin's --thresholds file
    file: str
    options: TagOptions


@pytest.fixture(scope="module")
def calibrated_run(label_catalogue, local_run, tmp_path_factory) -> CalibratedRun:
    """One run of two models with the tiny model's weights on the label's catalogue, both
    saved with thresholds (the per-tag lower quartile of its scores there): tiny-tagger v5
    decides with its own, its twin with a --thresholds file (the upper quartile)."""
    root = tmp_path_factory.mktemp("calibrated")
    scores = np.array(list(scores_by_track(local_run[0]).values()))
    own = Thresholds(tuple(np.quantile(scores, 0.25, axis=0)), {"rule": "lower quartile"})
    override = Thresholds(tuple(np.quantile(scores, 0.75, axis=0)), {"rule": "upper quartile"})
    file = root / "upper.json"
    file.write_text(json.dumps(override.to_dict(list(VOCABULARY))))
    models = [tiny_model(root / "tiny", "5", own), tiny_model(root / "twin", "1", own, "tiny-twin")]
    options = replace(OPTIONS, thresholds=(f"{models[1]}={file}",), passthrough=PASSTHROUGH)
    output = str(root / "tags")
    summaries = tag_catalogue(label_catalogue.manifest, models, output, options)
    return CalibratedRun(output, models, summaries, own, override, str(file), options)


def test_tags_are_those_at_each_models_thresholds(label_catalogue, calibrated_run, tmp_path):
    """Each model of a run decides its tags at its own thresholds: those stored with it, or
    those of its --thresholds file, which win. Its folder records which; `raytag verify`
    checks the tags against them; a resume with other thresholds is refused."""
    run, vocabulary = calibrated_run, list(VOCABULARY)
    tags = {}
    for summary, source, thresholds, file in zip(
        run.summaries, ("model", "file"), (run.own, run.override), (None, run.file), strict=True
    ):
        output = summary.record["output"]
        predictions = read_folder(output, PREDICTIONS)
        scores = np.array(predictions["scores"].to_pylist(), dtype=np.float32)
        assert predictions["tags"].to_pylist() == thresholds.tags(scores, vocabulary)
        recorded = json.loads(Path(output, "thresholds.json").read_text())
        assert recorded == {"source": source, "file": file, **thresholds.to_dict(vocabulary)}
        assert summary.record["thresholds"] == {"source": source, "file": file}
        tags[source] = dict(
            zip(predictions["track_id"].to_pylist(), predictions["tags"].to_pylist(), strict=True)
        )
    # The same scores at higher thresholds: fewer tags, and neither model's trivial.
    assert tags["model"] != tags["file"]
    assert all(set(tags["file"][track]) <= set(tags["model"][track]) for track in tags["file"])
    decided = [row for rows in tags.values() for row in rows.values()]
    assert any(decided) and any(len(row) < len(vocabulary) for row in decided)

    checked = CliRunner().invoke(
        main, ["verify", *cli_args(manifest=label_catalogue.manifest, output=run.output)]
    )
    assert checked.exit_code == 0 and checked.output.count("every row exactly once") == 2

    # Other thresholds, or other columns, than a folder was tagged with: refused before
    # any folder is claimed.
    outputs = [summary.record["output"] for summary in run.summaries]
    records = [Path(output, "_run.json").read_text() for output in outputs]
    own_thresholds = replace(run.options, thresholds=())
    with pytest.raises(TagError, match=r"tiny-twin-v1 was tagged with other thresholds \(from "
                       r".*upper.json\) than this run's \(the model's own\)"):  # fmt: skip
        tag_catalogue(label_catalogue.manifest, run.models, run.output, own_thresholds)
    fewer_columns = replace(run.options, passthrough=("title",))
    with pytest.raises(TagError, match="holds predictions with columns track_id, uri, input_dur"):
        tag_catalogue(label_catalogue.manifest, run.models, run.output, fewer_columns)
    assert [Path(output, "_run.json").read_text() for output in outputs] == records

    # Tags that are not their scores' at the recorded thresholds fail verify.
    copy = str(tmp_path / "tiny-twin-v1")
    shutil.copytree(outputs[1], copy)
    first = output_files(copy, PREDICTIONS)[0]
    table = pq.read_table(first)
    wrong = pa.array([["not-a-tag"]] * len(table), pa.list_(pa.string()))
    pq.write_table(table.set_column(table.schema.get_field_index("tags"), "tags", wrong), first)
    report = verify(label_catalogue.manifest, copy)
    assert (report.missing, report.surplus, report.wrong_tags) == (0, 0, len(table))
    assert f"{len(table)} prediction row(s) whose tags are not" in report.describe()


def test_users_columns_arrive_under_their_documented_names(label_catalogue, calibrated_run):
    """A catalogue's own duration_s, its titles and artists (unicode, nulls) and its labels
    arrive beside raytag's columns, those named like raytag's as input_NAME; album, left
    out of --passthrough, does not. Error rows keep their four columns."""
    output = calibrated_run.summaries[0].record["output"]
    predictions, errors = assert_exactly_once(label_catalogue, output)
    assert predictions.schema.names == [
        "track_id", "uri", "input_duration_s", "title", "artist", "input_tags",
        "model_name", "model_version", "scores", "tags", "top_tags", "duration_s", "n_patches",
        "embedding"]  # fmt: skip
    assert predictions.schema.field("input_duration_s").type == pa.int64()
    assert errors.schema.names == ["track_id", "uri", "error_code", "message"]
    given = {row["track_id"]: row for row in label_catalogue.rows}
    carried = ("input_duration_s", "title", "artist", "input_tags")
    for row in predictions.to_pylist():
        assert [row[name] for name in carried] == [given[row["track_id"]][n] for n in PASSTHROUGH]
    titles = predictions["title"].to_pylist()
    assert None in titles and "東京の夜" in titles
    assert None in predictions["input_duration_s"].to_pylist()
    gen1 = next(row for row in predictions.to_pylist() if row["track_id"] == "gen1")
    assert gen1["duration_s"] == pytest.approx(3) and gen1["input_duration_s"] == 101


def test_verify_finds_duplicates_and_missing_rows(catalogue, local_run, tmp_path) -> None:
    output = str(tmp_path / "copy" / "tiny-tagger-v3")
    shutil.copytree(local_run[0], output)
    first = output_files(output, PREDICTIONS)[0]
    twice = count_rows([first])
    shutil.copy(first, first.replace(".parquet", "-again.parquet"))
    report = verify(catalogue.manifest, output)
    assert (report.missing, report.surplus) == (0, twice) and not report.ok
    assert {e["_side"] for e in report.examples} == {"prediction"}
    # A resume would add to rows it cannot account for: it refuses before any work.
    with pytest.raises(TagError, match=f"hold\\(s\\) {twice} row"):
        tag_one(catalogue.manifest, catalogue.model, str(tmp_path / "copy"))

    lost = output_files(output, ERRORS)[0]
    n_lost = count_rows([lost])
    os.remove(lost)
    report = verify(catalogue.manifest, output)
    assert (report.missing, report.surplus) == (n_lost, twice)
    assert f"{n_lost} missing, {twice} surplus" in report.describe()


@pytest.mark.parametrize(
    "layout",
    [{}, {"cpus_per_actor": 0.75}],
    ids=["steady-pool", "two-actors-leaving-no-whole-cpu"],
)
def test_a_big_manifest_runs_as_several_executions(
    catalogue, tmp_path, ray_local, monkeypatch, layout
):
    """Past ``rows_per_execution`` pending rows, the run is cut into Ray Data executions of
    whole reconciliation buckets (the driver's memory stays that of one execution), and
    still lands every row exactly once, bad rows included. Each execution cuts its rows
    into decode blocks at 1 CPU beside the model pool: with the default layout the pool
    stays whole and leaves it that CPU; with actors reserving too much for that (flagged
    by ``may_stall``) the pool shrinks when idle and the run still ends."""
    from raytag.tagging import reconcile

    monkeypatch.setattr(reconcile, "_ROWS_PER_BUCKET", 4)  # 6 buckets for 21 rows
    options = replace(OPTIONS, rows_per_execution=6, **layout)
    assert options.resolved({"CPU": 2.0}).may_stall(2.0) == bool(layout)
    output, summary = tag_one(catalogue.manifest, catalogue.model, str(tmp_path), options)
    _, errors = assert_exactly_once(catalogue, output)
    codes = dict(zip(errors["track_id"].to_pylist(), errors["error_code"].to_pylist(), strict=True))
    assert codes == EXPECTED_ERRORS
    files = output_files(output, PREDICTIONS) + output_files(output, ERRORS)
    parts = {re.search(r"-(\d{3})-\d{6}\.parquet$", name).group(1) for name in files}
    assert parts == {"000", "001", "002", "003"}
    assert summary.record["attempts"][0]["options"]["rows_per_execution"] == 6


def test_refuses_another_models_output(catalogue, local_run, tmp_path) -> None:
    """A model folder holding another model's run (renamed by hand) is not added to."""
    other = tiny_model(tmp_path / "other", "4")
    shutil.copytree(local_run[0], tmp_path / "tags" / "tiny-tagger-v4")
    with pytest.raises(TagError, match="holds a run of tiny-tagger version 3"):
        tag_one(catalogue.manifest, other, str(tmp_path / "tags"))


BAD_MANIFESTS = {  # message: (the manifest's row, --passthrough)
    "lacks column": ({"track_id": "x", "path": "/a.wav"}, None),
    r"scores \(as input_scores\), input_scores \(as input_scores\) would be carried under "
    "one name": ({"track_id": "x", "uri": "/a.wav", "scores": 1.0, "input_scores": 2.0}, None),
    r"has no column\(s\) artist": ({"track_id": "x", "uri": "/a.wav"}, ("artist",)),
}


@pytest.mark.parametrize("message", BAD_MANIFESTS)
def test_refuses_bad_manifests_before_any_work(catalogue, tmp_path, message: str) -> None:
    row, passthrough = BAD_MANIFESTS[message]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([row]), bad)
    with pytest.raises(ManifestError, match=message):
        tag_one(str(bad), catalogue.model, str(tmp_path / "never"),
                replace(OPTIONS, passthrough=passthrough))  # fmt: skip
    assert not (tmp_path / "never").exists()


def test_refuses_thresholds_that_do_not_fit_before_any_work(catalogue, musicnn_model, tmp_path):
    partial, whole = tmp_path / "partial.json", tmp_path / "whole.json"
    partial.write_text(json.dumps({tag: 0.5 for tag in VOCABULARY[1:]}))
    whole.write_text(json.dumps({tag: 0.5 for tag in VOCABULARY}))
    both = [catalogue.model, musicnn_model]
    cases = {  # message: (models, --thresholds)
        f"--thresholds of tiny-tagger version 3: {partial}: thresholds do not match the "
        f"vocabulary: missing \\['{VOCABULARY[0]}'\\]": ([catalogue.model], (str(partial),)),
        "cannot read thresholds from": ([catalogue.model], (str(tmp_path / "nowhere.json"),)),
        "with several --model, give MODEL=FILE": (both, (str(whole),)),
        f"--thresholds given twice for {musicnn_model}": (both, (f"{musicnn_model}={whole}",) * 2),
    }
    for message, (models, thresholds) in cases.items():
        with pytest.raises(TagError, match=message):
            options = replace(OPTIONS, thresholds=thresholds)
            tag_catalogue(catalogue.manifest, models, str(tmp_path / "never"), options)
    assert not (tmp_path / "never").exists()
    # MODEL=FILE names its model, whichever --model it is.
    named = replace(OPTIONS, thresholds=(f"{musicnn_model}={whole}",))
    assert named.threshold_files(both) == [None, str(whole)]


def test_automatic_options_fit_the_cluster() -> None:
    cpu = TagOptions().resolved({"CPU": 8.0})
    # CPU only: a single-threaded replica per core, small forwards, light decode tasks;
    # the reservations fit the node, so decoding never waits for a model actor to end.
    assert (cpu.use_gpu, cpu.actors, cpu.cpus_per_actor, cpu.patch_batch_size) == (
        False, 8, 0.75, 8)  # fmt: skip
    assert (cpu.decode_cpus, cpu.decode_tasks) == (0.25, 2)
    assert cpu.actors * cpu.cpus_per_actor + cpu.decode_tasks * cpu.decode_cpus <= 8
    # Executions grow with the cluster (each lasts minutes), up to a fixed driver budget.
    assert cpu.rows_per_execution == 100_000
    assert TagOptions().resolved({"CPU": 1000.0}).rows_per_execution == 1_000_000
    assert not cpu.decode_actors
    gpu = TagOptions().resolved({"CPU": 16.0, "GPU": 2.0})
    assert (gpu.use_gpu, gpu.actors, gpu.patch_batch_size) == (True, 2, 256)
    # GPUs: decode actors on every CPU the model actors leave, but one for the rest.
    assert (gpu.decode_actors, gpu.decode_cpus, gpu.decode_tasks) == (True, 1.0, 13)
    assert not gpu.may_stall(16.0)
    half = TagOptions(decode_cpus=0.5).resolved({"CPU": 16.0, "GPU": 1.0})
    assert half.decode_tasks == 28 and half.decode_reserved_cpus == 14
    # A GPU node too small to hold a decode actor beside the model decodes in tasks.
    tiny = TagOptions().resolved({"CPU": 2.0, "GPU": 1.0})
    assert (tiny.decode_actors, tiny.decode_tasks) == (False, 1)
    # What the user set wins; --no-gpu on a GPU cluster gets the CPU layout.
    mine = TagOptions(actors=3, patch_batch_size=32, use_gpu=False).resolved({"CPU": 16, "GPU": 2})
    assert (mine.use_gpu, mine.actors, mine.patch_batch_size, mine.decode_cpus) == (
        False, 3, 32, 0.25)  # fmt: skip
    # On a small node the actors reserve less, so that the full pool and decoding leave
    # the whole CPU that the step cutting rows into decode blocks needs.
    two = TagOptions().resolved({"CPU": 2.0})
    assert (two.actors, two.cpus_per_actor, two.decode_tasks) == (2, 0.375, 1)
    assert two.actors * two.cpus_per_actor + two.decode_reserved_cpus == 1.0
    # Layouts seen to stall Ray Data for good on 2 CPUs are flagged; the default is not.
    assert not two.may_stall(2.0)
    for stalled in (
        {"actors": 1, "cpus_per_actor": 1.5},
        {"actors": 1, "cpus_per_actor": 1.75},
        {"cpus_per_actor": 0.75},  # two such actors beside a decode task
        {"decode_actors": True, "decode_tasks": 4},  # four held 0.25-CPU decoders
    ):
        assert TagOptions(**stalled).resolved({"CPU": 2.0}).may_stall(2.0), stalled
    # A decode fleet (nodes labelled raytag/role=decode): decoding there alone, an actor
    # per CPU; the model actors keep off it.
    fleet = TagOptions().resolved({"CPU": 56.0, "GPU": 2.0}, decode_node_cpus=32.0)
    assert (fleet.decode_on, fleet.decode_actors, fleet.decode_cpus, fleet.decode_tasks) == (
        "decode-nodes", True, 1.0, 32)  # fmt: skip
    assert fleet.decode_label_selector == {"raytag/role": "decode"}
    assert fleet.model_label_selector == {"raytag/role": "!decode"}
    anywhere = TagOptions(decode_on="anywhere").resolved({"CPU": 56.0, "GPU": 2.0}, 32.0)
    assert anywhere.decode_label_selector is anywhere.model_label_selector is None
    assert anywhere.decode_tasks == 53  # every CPU, the fleet's too, as without one
    cpu_fleet = TagOptions().resolved({"CPU": 12.0}, decode_node_cpus=4.0)
    assert (cpu_fleet.actors, cpu_fleet.cpus_per_actor, cpu_fleet.decode_tasks) == (8, 0.75, 4)
    assert not cpu_fleet.may_stall(12.0)
    # Asked for a fleet that is not up yet: how many decoders to ask an autoscaler for.
    with pytest.raises(TagError, match="no node labelled raytag/role=decode is up: give --decode"):
        TagOptions(decode_on="decode-nodes").resolved({"CPU": 8.0, "GPU": 1.0})
    later = TagOptions(decode_on="decode-nodes", decode_tasks=64).resolved({"CPU": 8, "GPU": 1})
    assert (later.decode_tasks, later.decode_label_selector) == (64, {"raytag/role": "decode"})
    with pytest.raises(ValueError, match="decode_on must be one of"):
        TagOptions(decode_on="gpu-nodes")
    for bad in ({"patch_batch_size": 0}, {"actors": 0}, {"cpus_per_actor": -1},
                {"rows_per_execution": 0}):  # fmt: skip
        with pytest.raises(ValueError, match="must be None"):
            TagOptions(**bad)


def test_compiled_model_scores_like_the_eager_model(catalogue: Catalogue) -> None:
    """--compile runs torch.compile's code, which must score as the plain model does."""
    from raytag.models.inference import compiled_embed

    loaded = load_model(catalogue.model)
    patches = np.random.default_rng(0).standard_normal((11, 48_000)).astype(np.float32)
    eager = predict_patches(loaded.model, patches, batch_size=4)
    compiled = predict_patches(loaded.model, patches, batch_size=4,
                               embed=compiled_embed(loaded.model))  # fmt: skip
    for plain, fast in zip(eager, compiled, strict=True):
        np.testing.assert_allclose(fast, plain, atol=1e-4)


def test_cpu_bf16_actors_run_in_bf16_and_score_close_to_float32(catalogue: Catalogue) -> None:
    """A model actor scores on its device, a GPU where there is one. On a CPU, --cpu-bf16
    reaches its forwards (the scores move, as bf16 moves them, within what bf16 costs);
    without it the actor runs float32, the computation of predict_patches in float32 on
    that device in the same batches, so exactly its scores. On a GPU bf16 is the default
    and --cpu-bf16 has no say: both runs move by what bf16 costs, no more."""
    from raytag.tagging.stages import TagPredictor

    loaded = load_model(catalogue.model)
    patches = np.random.default_rng(0).standard_normal((11, 48_000)).astype(np.float32)
    threads = torch.get_num_threads()  # an actor sets its own; this process keeps its
    for cpu_bf16 in (False, True):
        options = TagOptions(cpu_bf16=cpu_bf16).resolved({"CPU": 2.0})
        try:
            replica = TagPredictor([loaded], [0], options).replicas[0]
            scores, embeddings = replica._predict(patches)
        finally:
            torch.set_num_threads(threads)
        plain = predict_patches(replica.model, patches, options.patch_batch_size, bf16=False)
        difference = np.abs(scores - plain[0]).max()
        if cpu_bf16 or next(replica.model.parameters()).is_cuda:
            assert 0 < difference < 0.05, difference
            np.testing.assert_allclose(embeddings, plain[1], atol=0.1 * np.abs(plain[1]).max())
        else:
            assert difference == 0


# -- failures: a killed model actor, a killed job -----------------------------------------


def test_killed_model_actor_is_replaced_and_nothing_is_lost(long_catalogue, tmp_path, ray_local):
    catalogue, output = long_catalogue, str(tmp_path / "tiny-tagger-v3")
    slow = replace(OPTIONS, decode_batch_size=1, predict_batch_size=1, rows_per_file=2)
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = tag_one(catalogue.manifest, catalogue.model, str(tmp_path), slow)
        except Exception as error:  # reported below, on the test's thread
            result["error"] = error

    job = threading.Thread(target=run)
    job.start()
    killed, rows_before = None, None
    deadline = time.monotonic() + 240
    while job.is_alive() and killed is None and time.monotonic() < deadline:
        # ray.util.state needs a dashboard; the session cluster runs without one.
        for actor in ray._private.state.actors().values():
            if actor["State"] == "ALIVE" and "TagPredictor" in actor["ActorClassName"]:
                rows_before = count_rows(output_files(output, PREDICTIONS))
                if rows_before:  # mid-run: the actor has delivered, more is on its way
                    os.kill(actor["Pid"], signal.SIGKILL)
                    killed = actor["ActorID"]
                    break
        time.sleep(0.1)
    job.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert killed is not None, "the model actor was never seen at work"
    assert rows_before < catalogue.taggable
    assert ray._private.state.actors()[killed]["NumRestarts"] >= 1
    predictions, _ = assert_exactly_once(catalogue, output)
    assert len(predictions) == catalogue.taggable


@pytest.mark.slow
def test_killed_job_resumes_where_it_stopped(catalogue, tmp_path, ray_local) -> None:
    output = str(tmp_path / "tags" / "tiny-tagger-v3")
    command = [str(BIN / "python"), "jobs/tag.py", *cli_args(
        manifest=catalogue.manifest, model=catalogue.model, output=tmp_path / "tags",
        ray_address="local",
        max_patches=MAX_PATCHES, decode_batch_size=1, predict_batch_size=1, rows_per_file=2,
    )]  # fmt: skip
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while len(output_files(output, PREDICTIONS)) < 2 and time.monotonic() < deadline:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the job's driver and its local Ray cluster
        first.wait()
    # Its workers leave their own process group and notice the loss a moment later; a
    # write they had begun may still land. Resume once they are gone, as after any crash.
    settle(output)

    fs, _ = filesystem(output)
    assert json.loads(fs.cat(f"{output}/_run.json"))["status"] == "running"
    checked = CliRunner().invoke(main, ["verify", *cli_args(manifest=catalogue.manifest,
                                                            output=tmp_path / "tags")])  # fmt: skip
    assert checked.exit_code == 1 and ", 0 surplus" in checked.output, checked.output
    missing = int(re.search(r"(\d+) missing", checked.output)[1])
    assert missing > 0
    kept = set(output_files(output, PREDICTIONS) + output_files(output, ERRORS))

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "every row exactly once" in second.stdout.strip().splitlines()[-1]
    assert_exactly_once(catalogue, output)
    new = set(output_files(output, PREDICTIONS) + output_files(output, ERRORS)) - kept
    assert kept <= set(output_files(output, PREDICTIONS) + output_files(output, ERRORS))
    assert count_rows(new) == missing
    record = json.loads(fs.cat(f"{output}/_run.json"))
    assert record["status"] == "complete"
    assert "finished_at" not in record["attempts"][0]  # the killed attempt, on record
    assert record["attempts"][1]["predictions"] + record["attempts"][1]["errors"] == missing


# -- object storage and `ray job submit` -------------------------------------------------


def upload_catalogue(catalogue: Catalogue, bucket: str) -> tuple[str, list[dict]]:
    """Part of the catalogue with its audio and manifest in S3 (and a local file mixed in):
    the manifest prefix and its rows."""
    fs, _ = filesystem(bucket)
    by_id = {row["track_id"]: row for row in catalogue.rows}
    rows = []
    for track_id in ("gen0", "gen1", "gen2", "gen3", "real1", "corrupt"):
        key = f"{bucket}/audio/{Path(by_id[track_id]['uri']).name}"
        fs.put(by_id[track_id]["uri"], key)
        rows.append({**by_id[track_id], "uri": key})
    rows += [
        {**by_id["missing"], "uri": f"{bucket}/audio/nowhere.wav"},
        by_id["null-uri"],
        by_id["real0"],
    ]
    table = pa.Table.from_pylist(rows)
    for i, part in enumerate((table.slice(0, 4), table.slice(4))):
        with fs.open(f"{bucket}/manifests/part-{i}.parquet", "wb") as f:
            pq.write_table(part, f)
    return f"{bucket}/manifests/", rows


def assert_s3_run(rows: list[dict], output: str, logs: str, secret: str) -> None:
    """Every row once in the S3 output; the secret key in no log line and no output object."""
    assert f"{len(rows)} manifest rows" in logs and "every row exactly once" in logs
    assert output in logs
    predictions, errors = read_folder(output, PREDICTIONS), read_folder(output, ERRORS)
    assert keys(predictions) + keys(errors) == Counter((r["track_id"], r["uri"]) for r in rows)
    codes = dict(zip(errors["track_id"].to_pylist(), errors["error_code"].to_pylist(), strict=True))
    assert codes == {"missing": "not_found", "null-uri": "null_uri", "corrupt": "undecodable"}
    fs, _ = filesystem(output)
    assert fs.exists(f"{output}/vocabulary.json") and fs.exists(f"{output}/_run.json")
    assert secret not in logs
    written = fs.find(output)
    assert written and all(secret.encode() not in fs.cat(path) for path in written)


@pytest.mark.slow
def test_s3_in_and_out_with_credentials_from_the_environment(
    catalogue: Catalogue, s3_bucket: str, s3_env: SeaweedS3
) -> None:
    manifest, rows = upload_catalogue(catalogue, s3_bucket)
    output = f"{s3_bucket}/tags/run-1/tiny-tagger-v3"
    # A process of its own: its Ray workers inherit the credentials from the environment.
    options = cli_args(manifest=manifest, model=catalogue.model, output=output.rsplit("/", 1)[0],
                       ray_address="local", max_patches=MAX_PATCHES)  # fmt: skip
    tag = subprocess.run(
        [str(BIN / "raytag"), "tag", *options], capture_output=True, text=True, timeout=300
    )
    assert tag.returncode == 0, tag.stderr[-3000:]
    assert_s3_run(rows, output, tag.stdout + tag.stderr, s3_env.secret_key)

    # The run's scores evaluated against labels, both in S3 (labels made up: a tag each).
    labels = [{"track_id": r["track_id"], "tags": [VOCABULARY[i % 2]]} for i, r in enumerate(rows)]
    fs, _ = filesystem(s3_bucket)
    with fs.open(f"{s3_bucket}/labels.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pylist([{**r, "uri": ""} for r in labels]), f)
    metrics = evaluate_predictions(output, f"{s3_bucket}/labels.parquet")
    assert metrics.n_tracks == len(rows) - 3 and len(metrics.per_tag) == len(VOCABULARY)
    errors = {e["track_id"]: e["error_code"] for e in metrics.errors}
    assert errors == {"missing": "not_found", "null-uri": "null_uri", "corrupt": "undecodable"}
    assert metrics.per_tag[0].roc_auc is not None


@pytest.mark.slow
def test_ray_job_submit_of_jobs_tag(catalogue, ray_head, s3_bucket: str, s3_env: SeaweedS3):
    """The user story: `ray job submit --working-dir . -- python jobs/tag.py ...` against a
    running head, manifest, audio and outputs in S3, credentials in the node's environment."""
    manifest, rows = upload_catalogue(catalogue, s3_bucket)
    output = f"{s3_bucket}/tags/run-2026-11"
    options = cli_args(
        manifest=manifest, model=catalogue.model, output=output, max_patches=MAX_PATCHES
    )
    output += "/tiny-tagger-v3"
    few_readers = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}  # see few_footer_readers
    submit = ray_head.submit(
        "jobs/tag.py", *options, env_vars=few_readers, submission_id="tag-s3", timeout=400
    )
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
    assert_s3_run(rows, output, submit.stdout + submit.stderr, s3_env.secret_key)
    # The submitter held no storage credentials (RayHead.submit), so the job used the node's;
    # what Ray recorded of it (entrypoint, runtime environment, metadata, logs) holds neither.
    record = ray_head.job_record("tag-s3")
    assert record["status"] == "SUCCEEDED" and "jobs/tag.py" in record["entrypoint"]
    assert output in record["logs"]
    recorded = json.dumps(record)
    assert s3_env.secret_key not in recorded and s3_env.access_key not in recorded
