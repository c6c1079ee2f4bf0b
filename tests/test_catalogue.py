"""catalogue: the labelled demo catalogue, rendered for real with FluidSynth and ffmpeg."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import mido
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from raytag.catalogue import (
    DEFAULT_SOUNDFONTS,
    DRUM_CHANNEL,
    EXCLUSIVE,
    VOCABULARY,
    check,
    compose,
    derive_tags,
    key_range,
    synthesize,
    to_midi,
)
from raytag.storage import arrow_filesystem, filesystem

N_TRACKS, DURATION = 16, 4.0
RENDERERS = ("fluidsynth", "ffmpeg")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("catalogue")
    synthesize(str(out), N_TRACKS, seed=0, duration_s=DURATION, workers=2)
    return out


def rows_of(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def rms_db(path: str, seconds: float) -> float:
    audio, rate = sf.read(path, always_2d=True)
    audio = audio[: int(rate * seconds)]
    return float(10 * np.log10(np.mean(audio**2) + 1e-12))


def files_as_written(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under ``folder`` by its inode and modification time: a file written again
    gets a new time (and a replaced one a new inode)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_the_renderers_are_installed() -> None:
    """`make setup` installs FluidSynth and ffmpeg; without them the rendering tests below
    fail rather than skip, and this one says why."""
    missing = [tool for tool in RENDERERS if shutil.which(tool) is None]
    install = f"run `make setup` (apt-get install {' '.join(RENDERERS)})"
    assert not missing, f"{missing} not on PATH: {install}"


def test_vocabulary_follows_the_spec() -> None:
    assert len(VOCABULARY) == 21 and len(set(VOCABULARY)) == 21
    assert VOCABULARY[:3] == ("piano", "chromatic_percussion", "organ")
    assert VOCABULARY[10:13] == ("synth_pad", "drums", "slow")
    assert VOCABULARY[-2:] == ("high_register", "low_register")


def test_composed_tracks_keep_the_rules() -> None:
    """Many tracks, no rendering: the MIDI says what the labels say, in every instrument's keys."""
    for index in range(150):
        song, parts, tags = compose(7, index, duration_s=6.0 + index % 3 * 12)
        midi = io.BytesIO()
        to_midi(song, parts).save(file=midi)
        assert derive_tags(mido.MidiFile(file=io.BytesIO(midi.getvalue()))) == (tags, [])
        assert 2 <= len([p for p in parts if p.channel != DRUM_CHANNEL]) <= 4
        for part in parts:
            lo, hi = key_range(part.program) if part.channel != DRUM_CHANNEL else (0, 127)
            assert all(lo <= pitch <= hi for _, _, pitch, _ in part.notes), part.program


def test_manifest_files_and_mix(catalogue: Path) -> None:
    table = pq.read_table(catalogue / "manifest.parquet")
    assert table.schema.field("track_id").type == pa.string()
    assert table.schema.field("uri").type == pa.string()
    assert table.schema.field("tags").type == pa.list_(pa.string())
    assert table.schema.field("split").type == pa.string()
    rows = table.to_pylist()
    assert len(rows) == N_TRACKS and len({r["track_id"] for r in rows}) == N_TRACKS
    for row in rows:
        assert os.path.isabs(row["uri"]) and row["uri"].endswith("." + row["format"])
        audio, rate = sf.read(row["uri"], always_2d=True)
        assert rate == row["sample_rate"] >= 16000 and audio.shape[1] == row["channels"]
        assert DURATION - 0.1 <= len(audio) / rate <= DURATION + 0.7  # plus the release tail
        assert np.abs(audio).max() > 1e-3
        assert (catalogue / "midi" / f"{row['track_id']}.mid").is_file()
        tags = row["tags"]
        assert tags == [t for t in VOCABULARY if t in tags]  # vocabulary order, no duplicates
        assert all(sum(t in tags for t in group) == 1 for group in EXCLUSIVE), tags
        assert len([t for t in tags if VOCABULARY.index(t) < 11]) >= 1
    assert len({r["format"] for r in rows}) >= 3
    assert {r["soundfont"] for r in rows} == {os.path.basename(p) for p in DEFAULT_SOUNDFONTS}
    assert {r["split"] for r in rows} == {"train", "valid", "test"}
    assert {r["channels"] for r in rows} == {1, 2}


def test_check_passes_and_catches_tampering(catalogue: Path, tmp_path: Path) -> None:
    assert check(str(catalogue)) == []
    copy = tmp_path / "copy"
    shutil.copytree(catalogue, copy)
    table = pq.read_table(copy / "manifest.parquet")
    rows = table.to_pylist()
    swap = {"loud": "quiet", "quiet": "loud"}
    rows[0]["tags"] = [swap.get(t, t) for t in rows[0]["tags"]]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), copy / "manifest.parquet")
    problems = check(str(copy))
    assert problems and all(p.startswith(rows[0]["track_id"]) for p in problems)

    # Tampering with the MIDI instead: velocities between the loud and quiet ranges.
    midi_path = copy / "midi" / f"{rows[1]['track_id']}.mid"
    mid = mido.MidiFile(midi_path)
    for track in mid.tracks:
        for i, msg in enumerate(track):
            if msg.type == "note_on" and msg.velocity > 0:
                track[i] = msg.copy(velocity=75)
    mid.save(midi_path)
    assert any(p.startswith(rows[1]["track_id"]) and "loud" in p for p in check(str(copy)))


def test_second_run_is_skipped(catalogue: Path) -> None:
    """Same parameters again: no file is written, the manifest, audio and MIDI included."""
    before = files_as_written(catalogue)
    assert synthesize(str(catalogue), N_TRACKS, seed=0, duration_s=DURATION, workers=2) == str(
        catalogue / "manifest.parquet"
    )
    assert files_as_written(catalogue) == before


def test_deterministic_by_seed_and_index(catalogue: Path, tmp_path: Path) -> None:
    # Fewer tracks and another worker count: each track depends only on (seed, index).
    again = tmp_path / "again"
    synthesize(str(again), 5, seed=0, duration_s=DURATION, workers=3)
    first = {r["track_id"]: r for r in rows_of(catalogue)}
    for row in rows_of(again):
        assert row["tags"] == first[row["track_id"]]["tags"]
        name = f"{row['track_id']}.mid"
        assert (again / "midi" / name).read_bytes() == (catalogue / "midi" / name).read_bytes()
    other = tmp_path / "other"
    synthesize(str(other), 5, seed=1, duration_s=DURATION, workers=2)
    assert [r["tags"] for r in rows_of(other)] != [r["tags"] for r in rows_of(again)]
    midi = [sorted(p.read_bytes() for p in (d / "midi").iterdir()) for d in (again, other)]
    assert not set(midi[0]) & set(midi[1])


def test_loudness_comes_from_velocity(catalogue: Path) -> None:
    levels: dict[str, list[float]] = {"loud": [], "quiet": []}
    for row in rows_of(catalogue):
        level = "loud" if "loud" in row["tags"] else "quiet"
        levels[level].append(rms_db(row["uri"], DURATION))
    assert levels["loud"] and levels["quiet"]
    assert np.mean(levels["loud"]) > np.mean(levels["quiet"]) + 8.0, levels


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="formats"):
        synthesize(str(tmp_path), 2, formats=["aac"])
    with pytest.raises(FileNotFoundError):
        synthesize(str(tmp_path), 2, soundfonts=[str(tmp_path / "missing.sf2")])
    with pytest.raises(ValueError, match="splits"):
        synthesize(str(tmp_path), 2, splits=(0.5, 0.1, 0.1))


def test_an_unprobed_soundfont_is_rendered_with_a_warning(tmp_path: Path) -> None:
    other = tmp_path / "Other_GM.sf2"  # TimGM6mb's bytes under a name the key table never saw
    shutil.copy(DEFAULT_SOUNDFONTS[1], other)
    with pytest.warns(UserWarning, match=r"Other_GM\.sf2.*keys not probed"):
        manifest = synthesize(str(tmp_path / "cat"), 1, duration_s=2.0, soundfonts=[str(other)])
    assert pq.read_table(manifest)["soundfont"].to_pylist() == ["Other_GM.sf2"]


def test_writes_to_s3(s3_bucket: str) -> None:
    out = f"{s3_bucket}/demo"
    manifest = synthesize(out, 4, seed=3, duration_s=3.0, formats=["flac", "mp3"], workers=2)
    fs, path = arrow_filesystem(manifest)
    rows = pq.read_table(path, filesystem=fs).to_pylist()
    assert len(rows) == 4 and all(r["uri"].startswith(f"{out}/audio/") for r in rows)
    s3, _ = filesystem(out)
    for row in rows:
        audio, rate = sf.read(io.BytesIO(s3.cat_file(row["uri"])))
        assert rate >= 16000 and len(audio) >= 2.9 * rate
        assert s3.exists(filesystem(row["midi_uri"])[1])
    assert check(out) == []
    # Same parameters again renders nothing: an object replaced by other bytes stays so.
    marked = rows[0]["uri"]
    s3.pipe_file(marked, b"not rendered again")
    assert synthesize(out, 4, seed=3, duration_s=3.0, formats=["flac", "mp3"]) == manifest
    assert s3.cat_file(marked) == b"not rendered again"
