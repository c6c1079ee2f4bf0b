"""The demo's tagging step: the generated catalogue, real full-length music and two broken
inputs, tagged with the champion by the Ray Data job."""

from __future__ import annotations

import glob
from dataclasses import fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from raytag.demo.progress import Clock
from raytag.demo.report import (
    ModelRecord,
    RealTrack,
    TaggingRecord,
    TagInputs,
    TagScore,
    Throughput,
)

# Real, openly licensed full-length music from Debian packages (make setup installs both).
REAL_MUSIC = ("/usr/share/games/singularity/music/*.ogg", "/usr/share/games/asc/music/*.mp3")


def tag(
    workdir: Path,
    catalogue: str,
    model: ModelRecord,
    real_tracks: int,
    max_patches: int,
    bad_inputs: bool,
    say: Clock,
) -> TaggingRecord:
    """Tag catalogue + real music + broken inputs with the champion; the run's record."""
    from raytag.tagging import TagOptions, tag_catalogue
    from raytag.tagging.output import ERRORS, PREDICTIONS, RUN_FILE

    manifest, inputs = _tag_manifest(workdir, catalogue, real_tracks, bad_inputs)
    say(f"tagging: {inputs.catalogue + inputs.real + inputs.bad} tracks ({inputs.catalogue} "
        f"generated, {inputs.real} real, {inputs.bad} broken) with {model.uri} "
        f"(version {model.version}), at most {max_patches} patches per track ...")  # fmt: skip
    options = TagOptions(max_patches=max_patches)
    [summary] = tag_catalogue(manifest, [model.uri], str(workdir / "tags"), options)
    record = summary.record
    output = Path(record["output"])
    worked = [a for a in record["attempts"] if a.get("predictions", 0) + a.get("errors", 0)]
    this = record["attempts"][-1]
    say(f"tagging: {summary.report.describe()}")
    return TaggingRecord(
        manifest=manifest,
        inputs=inputs,
        output=str(output),
        predictions=str(output / PREDICTIONS),
        errors=str(output / ERRORS),
        run_file=str(output / RUN_FILE),
        counts=record["counts"],
        exactly_once=summary.report.ok,
        resumed=len(record["attempts"]) > 1,
        tagged_this_run=this["predictions"] + this["errors"],
        throughput=_throughput(worked[-1] if worked else this),
        real_tracks=_real_top_tags(output / PREDICTIONS),
        max_patches=max_patches,
    )


def _tag_manifest(
    workdir: Path, catalogue: str, real_tracks: int, bad_inputs: bool
) -> tuple[str, TagInputs]:
    """One Parquet manifest: the generated catalogue (its tags and split pass through to the
    predictions), the first ``real_tracks`` real tracks, and two broken inputs."""
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


def _real_top_tags(predictions: Path, limit: int = 8) -> tuple[RealTrack, ...]:
    table = pads.dataset(str(predictions), format="parquet").to_table(
        columns=["track_id", "uri", "source", "top_tags", "duration_s", "n_patches"],
        filter=pads.field("source") == "real",
    )
    rows = sorted(table.to_pylist(), key=lambda r: r["track_id"])[:limit]
    return tuple(
        RealTrack(
            track_id=r["track_id"],
            uri=r["uri"],
            duration_s=r["duration_s"],
            n_patches=r["n_patches"],
            top_tags=tuple(TagScore(**t) for t in r["top_tags"]),
        )
        for r in rows
    )
