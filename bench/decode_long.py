"""Decoding full-length tracks for two models with different patch policies at once: what
one decode stage costs against each policy alone and against decoding the whole track.

A track longer than ``--max-patches`` patches is tagged from K evenly spaced windows, which
the decode stage seeks to and decodes one by one. Two models with different patch policies
(the paper's 3-s patches, musicnn's 2.992-s patches with 256 samples of context) want
different windows of such a track. The decode stage opens the file once and decodes each
policy's windows from it, so each model's patches are exactly those of a run of its own.
The alternative, one decode of the whole track cut into both policies' windows, is
measured here as ``whole``: it would pay for the whole track once instead of two sets of
windows (and would change the scores of a track against a single-model run).

Inputs: the Debian music at full length (bench/tagging.py's DEBIAN_MUSIC: 13 OGG and 3
MP3 songs, 1.5-5.5 min) and an MP3 (192 kbit/s, 44.1 kHz) made once from each OGG under
bench/data/decode_long. CPU-ms per track, in this process (time.process_time), warm:

- ``paper``, ``musicnn``: ``raytag.audio.decode_policies(F, [policy])``, each policy alone
  with ``raytag tag``'s default ``max_patches`` (32);
- ``both``: ``decode_policies(F, [paper, musicnn])``, what the decode stage of a run with
  both models does;
- ``whole``: ``raytag.audio.decode_track(F, ...)``, the whole track at 16 kHz once.

    .venv/bin/python bench/decode_long.py                    # 3 repeats
    .venv/bin/python bench/decode_long.py --quick --results /tmp/decode_long_smoke.json

Results: bench/results/decode_long.json; summary in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from decode import FFMPEG, process_cpu_s
from record import new_record, save
from tagging import DEBIAN_MUSIC

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "decode_long"
RESULTS = HERE / "results" / "decode_long.json"
WAYS = ("paper", "musicnn", "both", "whole")


def make_inputs(quick: bool) -> list[Path]:
    """The Debian songs as they are, and an MP3 of each OGG song, made once."""
    sources = sorted(Path(p) for pattern in DEBIAN_MUSIC for p in glob.glob(pattern))
    if not sources:
        sys.exit(f"no music in {DEBIAN_MUSIC}: `make setup` installs it")
    DATA.mkdir(parents=True, exist_ok=True)
    files = []
    for source in sources[:2] if quick else sources:
        files.append(source)
        if source.suffix == ".ogg":
            mp3 = DATA / f"{source.stem}.mp3"
            if not mp3.exists():
                encode = ["-c:a", "libmp3lame", "-b:a", "192k", "-ar", "44100"]
                subprocess.run([*FFMPEG, "-y", "-i", str(source), *encode, str(mp3)], check=True)
            files.append(mp3)
    return files


def measure(files: list[Path], repeats: int) -> tuple[dict[str, dict[str, list[float]]], dict]:
    """CPU seconds per way, file and repeat; and each file's duration and patch counts."""
    from raytag.audio import decode_policies, decode_track
    from raytag.config import AudioConfig
    from raytag.importers.musicnn import AUDIO as MUSICNN_AUDIO
    from raytag.tagging.options import TagOptions

    k = TagOptions().max_patches
    paper = AudioConfig(max_patches=k)
    musicnn = AudioConfig(**{**MUSICNN_AUDIO.to_dict(), "max_patches": k})
    ways: dict[str, Callable[[str], object]] = {
        "paper": lambda f: decode_policies(f, [paper]),
        "musicnn": lambda f: decode_policies(f, [musicnn]),
        "both": lambda f: decode_policies(f, [paper, musicnn]),
        "whole": lambda f: decode_track(f, paper),
    }
    shape = {}
    for f in files:  # warm, and check that both policies window the track
        tracks = decode_policies(str(f), [paper, musicnn])
        shape[f.name] = {
            "duration_s": round(tracks[0].duration_s, 1),
            "patches": [int(t.patches.shape[0]) for t in tracks],
        }
        for way in ways.values():
            way(str(f))
    per_file = {name: {f.name: [] for f in files} for name in ways}
    for repeat in range(repeats):
        for name, way in ways.items():
            for f in files:
                per_file[name][f.name].append(process_cpu_s(lambda f=f, way=way: way(str(f))))
        print(f"repeat {repeat + 1}/{repeats} done", flush=True)
    return per_file, shape


def summarise(per_file: dict[str, dict[str, list[float]]], files: list[Path]) -> dict:
    """Per format and overall: the mean over files of each file's median CPU-ms, and the
    ratios that say what one stage for both models saves."""
    medians = {
        name: {f: statistics.median(runs) * 1000 for f, runs in runs_of.items()}
        for name, runs_of in per_file.items()
    }
    groups = {"all": [f.name for f in files]}
    for ext in sorted({f.suffix for f in files}):
        groups[ext.lstrip(".")] = [f.name for f in files if f.suffix == ext]
    summary = {}
    for group, names in groups.items():
        row = {way: round(statistics.mean(medians[way][n] for n in names), 1) for way in WAYS}
        row["n_files"] = len(names)
        row["both_over_separate"] = round(row["both"] / (row["paper"] + row["musicnn"]), 3)
        row["both_over_whole"] = round(row["both"] / row["whole"], 3)
        summary[group] = row
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="two songs, 1 repeat")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    files = make_inputs(args.quick)
    record = new_record("decode_long", __file__, sys.argv[1:])
    record["repeats"] = repeats
    per_file, shape = measure(files, repeats)
    record["inputs"] = {"files": shape}
    record["cpu_ms_per_track"] = summarise(per_file, files)
    record["per_file_cpu_ms"] = {
        way: {f: [round(s * 1000, 1) for s in runs] for f, runs in runs_of.items()}
        for way, runs_of in per_file.items()
    }
    save(record, args.results)
    print(f"{len(files)} files, {repeats} repeats; CPU-ms per track (mean of medians):")
    print(f"{'':6s}" + "".join(f"{w:>10s}" for w in WAYS) + f"{'both/sep':>10s}{'both/whole':>12s}")
    for group, row in record["cpu_ms_per_track"].items():
        cells = "".join(f"{row[w]:10.1f}" for w in WAYS)
        print(f"{group:6s}{cells}{row['both_over_separate']:10.2f}{row['both_over_whole']:12.2f}")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
