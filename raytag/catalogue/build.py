"""A whole catalogue on storage: every track rendered, the manifest written last, and
``check``, which re-derives every tag from the saved MIDI files alone.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import mido
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raytag.catalogue.labels import derive_tags
from raytag.catalogue.render import CODECS, GAIN, render_track
from raytag.catalogue.soundfonts import DEFAULT_SOUNDFONTS
from raytag.storage import arrow_filesystem, filesystem, is_local, join, local_path

GENERATOR_VERSION = 2  # bump when the music changes, so existing catalogues get re-rendered
META_KEY = b"raytag.catalogue"
DURATION_RANGE_S = (2.0, 600.0)  # the track lengths a catalogue is rendered at


def _assign_splits(n: int, seed: int, splits: tuple[float, float, float]) -> list[str]:
    """Exact split sizes (at least one valid and test track when asked for and n >= 3)."""
    valid, test = (max(int(n >= 3 and f > 0), round(n * f)) for f in splits[1:])
    names = ["valid"] * min(valid, n) + ["test"] * min(test, n - min(valid, n))
    names = ["train"] * (n - len(names)) + names
    random.Random(f"raytag-splits:{seed}").shuffle(names)
    return names


def _stored_params(manifest_uri: str) -> dict | None:
    """The parameters an existing catalogue was made with (None when there is none)."""
    fs, path = arrow_filesystem(manifest_uri)
    try:
        metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    except (FileNotFoundError, OSError):
        return None
    return json.loads(metadata[META_KEY]) if META_KEY in metadata else None


def synthesize(
    out_uri: str,
    n_tracks: int,
    seed: int = 0,
    *,
    duration_s: float = 10.0,
    soundfonts: list[str] | None = None,
    formats: list[str] | None = None,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    workers: int | None = None,
) -> str:
    """Render a labelled catalogue of ``n_tracks`` under ``out_uri``; returns the manifest URI.

    Audio goes to ``<out>/audio/``, MIDI to ``<out>/midi/`` and the manifest, written last, to
    ``<out>/manifest.parquet``. Returns at once if a manifest made with the same parameters is
    already there.
    """
    soundfonts = [os.path.abspath(p) for p in soundfonts or DEFAULT_SOUNDFONTS]
    formats = list(formats or CODECS)
    shortest, longest = DURATION_RANGE_S
    if n_tracks < 1 or not shortest <= duration_s <= longest:
        raise ValueError(f"need n_tracks >= 1 and {shortest:g} <= duration_s <= {longest:g}")
    if unknown := set(formats) - set(CODECS):
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {sorted(CODECS)}")
    if missing := [p for p in soundfonts if not os.path.isfile(p)]:
        raise FileNotFoundError(f"soundfonts not found: {missing}")
    probed = {os.path.basename(os.path.realpath(p)) for p in DEFAULT_SOUNDFONTS}
    if unprobed := [p for p in soundfonts if os.path.basename(os.path.realpath(p)) not in probed]:
        warnings.warn(
            f"{unprobed}: keys not probed; a part may fall where its instrument is silent and "
            "still be tagged. Run tools/probe_soundfonts.py on them and narrow the key table.",
            stacklevel=2,
        )
    if missing := [tool for tool in ("fluidsynth", "ffmpeg") if shutil.which(tool) is None]:
        raise FileNotFoundError(f"{missing} not on PATH (apt-get install fluidsynth ffmpeg)")
    if len(splits) != 3 or abs(sum(splits) - 1) > 1e-6 or min(splits) < 0:
        raise ValueError("splits are three fractions (train, valid, test) summing to 1")
    params = dict(version=GENERATOR_VERSION, n_tracks=n_tracks, seed=seed, gain=GAIN)
    params |= dict(duration_s=float(duration_s), soundfonts=soundfonts, formats=formats)
    params["splits"] = [float(f) for f in splits]
    manifest_uri = join(out_uri, "manifest.parquet")
    stored = _stored_params(manifest_uri)
    if stored == params:
        return manifest_uri
    fs, path = arrow_filesystem(manifest_uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)  # an old manifest must not vouch for files being rewritten
    with tempfile.TemporaryDirectory(prefix="raytag-catalogue-") as scratch:
        workdir = os.path.abspath(local_path(out_uri)) if is_local(out_uri) else scratch
        for sub in ("audio", "midi"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        render = partial(
            render_track,
            seed=seed,
            duration_s=duration_s,
            soundfonts=soundfonts,
            formats=formats,
            workdir=workdir,
            scratch=scratch,
            out_uri=out_uri,
        )
        # Threads suffice: a track spends nearly all its time in its own fluidsynth and ffmpeg
        # processes, and threads need no pickling, __main__ guard or fork (forking a process
        # that runs s3fs or Ray threads can deadlock).
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            rows = list(pool.map(render, range(n_tracks)))
        if not is_local(out_uri):
            fs, root = filesystem(out_uri)
            files = [
                f"{sub}/{row['track_id']}.{ext}"
                for row in rows
                for sub, ext in (("midi", "mid"), ("audio", row["format"]))
            ]
            fs.put([os.path.join(scratch, f) for f in files], [join(root, f) for f in files])
    for row, split in zip(rows, _assign_splits(n_tracks, seed, splits), strict=True):
        row["split"] = split
    table = pa.Table.from_pylist(rows)  # track_id, uri, tags, split and the extras
    pq.write_table(
        table.replace_schema_metadata({META_KEY: json.dumps(params)}), path, filesystem=fs
    )
    return manifest_uri


def check(out_uri: str) -> list[str]:
    """Re-derive every track's tags from its saved MIDI; list what disagrees (empty: all good)."""
    afs, path = arrow_filesystem(join(out_uri, "manifest.parquet"))
    rows = pq.read_table(path, filesystem=afs).to_pylist()
    fs, root = filesystem(out_uri)
    problems = [] if len({r["track_id"] for r in rows}) == len(rows) else ["duplicate track_ids"]
    for row in rows:
        tid = row["track_id"]
        try:
            midi_bytes = fs.cat_file(join(root, "midi", f"{tid}.mid"))
            mid = mido.MidiFile(file=io.BytesIO(midi_bytes))
        except (OSError, EOFError, ValueError) as err:  # missing, truncated or not MIDI
            problems.append(f"{tid}: MIDI unreadable ({type(err).__name__}: {err})")
            continue
        tags, issues = derive_tags(mid)
        problems += [f"{tid}: {issue}" for issue in issues]
        if list(row["tags"]) != tags:
            problems.append(f"{tid}: the manifest says {list(row['tags'])}, the MIDI gives {tags}")
        if not fs.exists(filesystem(row["uri"])[1]):
            problems.append(f"{tid}: audio {row['uri']} is missing")
    return problems
