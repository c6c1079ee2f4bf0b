"""The demo's tagging step: the generated catalogue, real full-length music and two broken
inputs, tagged by the Ray Data job with the champion and musicnn's MTT tagger at once."""

from __future__ import annotations

import glob
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from raytag.demo.progress import Clock, Ticker
from raytag.demo.report import (
    ModelRecord,
    ModelTags,
    PretrainedRecord,
    RealTrack,
    TaggerRecord,
    TaggingRecord,
    TagInputs,
    TagScore,
    Throughput,
)

if TYPE_CHECKING:
    from raytag.tagging.record import RunSummary

# Real, openly licensed full-length music from Debian packages (make setup installs both).
REAL_MUSIC = ("/usr/share/games/singularity/music/*.ogg", "/usr/share/games/asc/music/*.mp3")


def tag(
    workdir: Path,
    catalogue: str,
    model: ModelRecord,
    pretrained: PretrainedRecord | None,
    real_tracks: int,
    max_patches: int,
    bad_inputs: bool,
    say: Clock,
) -> TaggingRecord:
    """Tag catalogue + real music + broken inputs with the champion, and with the
    pretrained tagger when there is one, in one run (each track decoded once); the run's
    record."""
    from raytag.tagging import TagOptions, tag_catalogue
    from raytag.tagging.output import ERRORS, PREDICTIONS, RUN_FILE, model_output

    manifest, inputs = _tag_manifest(workdir, catalogue, real_tracks, bad_inputs)
    uris = [model.uri] + ([pretrained.uri] if pretrained else [])
    say(f"tagging: {inputs.catalogue + inputs.real + inputs.bad} tracks ({inputs.catalogue} "
        f"generated, {inputs.real} real, {inputs.bad} broken) with {' and '.join(uris)}, "
        f"at most {max_patches} patches per track ...")  # fmt: skip
    options = TagOptions(max_patches=max_patches)
    output = str(workdir / "tags")
    champion_folder = model_output(output, model.name, model.version)
    total = inputs.catalogue + inputs.real + inputs.bad
    with Ticker(say, lambda: _status(champion_folder, total)):
        summaries = tag_catalogue(manifest, uris, output, options)
    taggers = tuple(_tagger(summary) for summary in summaries)
    for tagger, summary in zip(taggers, summaries, strict=True):
        say(f"tagging: {tagger.label}: {summary.report.describe()}")
    record = summaries[0].record
    folder = Path(record["output"])
    worked = [a for a in record["attempts"] if a.get("predictions", 0) + a.get("errors", 0)]
    this = record["attempts"][-1]
    return TaggingRecord(
        manifest=manifest,
        inputs=inputs,
        output=str(folder),
        predictions=str(folder / PREDICTIONS),
        errors=str(folder / ERRORS),
        run_file=str(folder / RUN_FILE),
        counts=record["counts"],
        exactly_once=summaries[0].report.ok,
        resumed=len(record["attempts"]) > 1,
        tagged_this_run=this["predictions"] + this["errors"],
        throughput=_throughput(worked[-1] if worked else this),
        models=taggers,
        real_tracks=_real_tracks(taggers),
        max_patches=max_patches,
    )


def _status(folder: str, total: int) -> str:
    """How far the champion's output is: rows written, then the final check."""
    from raytag.tagging.output import ERRORS, PREDICTIONS, count_rows

    written = count_rows(folder, PREDICTIONS) + count_rows(folder, ERRORS)
    if written < total:
        return f"tagging: {written}/{total} rows written"
    return f"tagging: all {total} rows written; checking each model's output row by row"


def _tagger(summary: RunSummary) -> TaggerRecord:
    """A model of the run, from its ``_run.json`` and thresholds.json."""
    from raytag.tagging.output import read_thresholds

    record = summary.record
    thresholds = read_thresholds(record["output"])
    return TaggerRecord(
        name=record["model"]["name"],
        version=str(record["model"]["version"]),
        uri=record["model"]["uri"],
        output=record["output"],
        thresholds=thresholds["source"],
        policy=thresholds["policy"],
        exactly_once=summary.report.ok,
    )


def _tag_manifest(
    workdir: Path, catalogue: str, real_tracks: int, bad_inputs: bool
) -> tuple[str, TagInputs]:
    """One Parquet manifest: the generated catalogue (its split and its true tags pass
    through to the predictions, the tags as ``input_tags`` beside the job's own ``tags``),
    the first ``real_tracks`` real tracks, and two broken inputs."""
    rows = pq.read_table(catalogue, columns=["track_id", "uri", "tags", "split"]).to_pylist()
    for row in rows:
        row["source"] = "catalogue"
    real = [path for pattern in REAL_MUSIC for path in sorted(glob.glob(pattern))][:real_tracks]
    for path in real:
        package = Path(path).parts[-3] if len(Path(path).parts) > 3 else "real"
        rows.append({"track_id": f"real/{package}/{Path(path).stem}", "uri": path,
                     "tags": None, "split": None, "source": "real"})  # fmt: skip
    bad = []
    if bad_inputs:
        broken = workdir / "bad-input"
        broken.mkdir(exist_ok=True)
        (broken / "not-audio.mp3").write_text("this is not audio\n")
        bad = [("bad/not-audio", broken / "not-audio.mp3"), ("bad/missing", broken / "gone.ogg")]
        for track_id, path in bad:
            rows.append({"track_id": track_id, "uri": str(path), "tags": None, "split": None,
                         "source": "broken"})  # fmt: skip
    schema = pa.schema([("track_id", pa.string()), ("uri", pa.string()),
                        ("tags", pa.list_(pa.string())), ("split", pa.string()),
                        ("source", pa.string())])  # fmt: skip
    path = workdir / "tag-manifest.parquet"
    table = pa.Table.from_pylist(rows, schema=schema)
    if not path.exists() or not pq.read_table(path).equals(table):
        pq.write_table(table, path)
    inputs = TagInputs(catalogue=len(rows) - len(real) - len(bad), real=len(real), bad=len(bad))
    return str(path), inputs


def _throughput(attempt: dict[str, Any]) -> Throughput:
    return Throughput(**{field.name: attempt.get(field.name) for field in fields(Throughput)})


def _real_tracks(taggers: tuple[TaggerRecord, ...], limit: int = 8) -> tuple[RealTrack, ...]:
    """The first ``limit`` real tracks as each model tags them: the tags it decides at its
    thresholds, highest score first (None for a model without thresholds), and its top
    scores."""
    from raytag.tagging.output import PREDICTIONS, SCORES, TAGS, read_vocabulary

    columns = ["track_id", "uri", "duration_s", "n_patches", SCORES, TAGS, "top_tags"]
    tables = [
        {row["track_id"]: row for row in pads.dataset(
            str(Path(tagger.output) / PREDICTIONS), format="parquet"
        ).to_table(columns=columns, filter=pads.field("source") == "real").to_pylist()}
        for tagger in taggers
    ]  # fmt: skip
    vocabularies = [read_vocabulary(tagger.output) for tagger in taggers]
    return tuple(
        RealTrack(
            track_id=track_id,
            uri=tables[0][track_id]["uri"],
            duration_s=tables[0][track_id]["duration_s"],
            by_model=tuple(
                _model_tags(tagger, rows[track_id], vocabulary)
                for tagger, rows, vocabulary in zip(taggers, tables, vocabularies, strict=True)
            ),
        )
        for track_id in sorted(tables[0])[:limit]
    )


def _model_tags(tagger: TaggerRecord, row: dict[str, Any], vocabulary: list[str]) -> ModelTags:
    from raytag.tagging.output import SCORES, TAGS

    scores = dict(zip(vocabulary, row[SCORES], strict=True))
    decided = None
    if row[TAGS] is not None:
        decided = tuple(sorted((TagScore(tag, scores[tag]) for tag in row[TAGS]),
                               key=lambda t: -t.score))  # fmt: skip
    return ModelTags(
        model=tagger.label,
        n_patches=row["n_patches"],
        decided=decided,
        top=tuple(TagScore(**t) for t in row["top_tags"]),
    )
