"""Decoding cost per 30-s track: the ffmpeg command line, raytag's decode and the tagging
job's decode stage, on the same mixed-format files (issue 23's bar: stage <= 1.2 x ffmpeg).

Inputs: 30-s stereo clips of the Debian music (bench/tagging.py's DEBIAN_MUSIC), 8 sources
x WAV/FLAC/OGG/MP3; each source's four files at rotating rates of 22.05, 44.1 and 48 kHz, so
every format comes at every rate. Made once with the ffmpeg CLI under bench/data/decode.

CPU-ms per track, user + sys of every thread, warm (one untimed pass first):

- ffmpeg: ``ffmpeg -nostdin -v error -i F -ac 1 -ar 16000 -f f32le -`` into /dev/null (the
  f32le muxer: FFmpeg decodes, downmixes and resamples to float32 as raytag does; the null
  muxer would convert to 16-bit), from the child's getrusage, net of its start-up: the
  same command on F's first 10 ms in F's format (process start, libraries, opening and
  probing such a file). Also recorded: net of the same command on F stopped at once
  (``-t 0``), which counts F's probing as start-up too (``ffmpeg_net_of_t0``);
- decode: ``raytag.audio.decode_patches(F, config)`` in this process (time.process_time),
  config the paper's models' AudioConfig as ``raytag tag`` uses it (max_patches 32);
- stage: ``raytag.tagging.stages.decode_batch`` in this process on batches of 8 rows
  (``raytag tag``'s default; one format to a batch) shaped as the pipeline passes them,
  with the job's default 16-bit PCM patches (``stage``) and with float32 ones
  (``stage_f32``), per track. It records its node id, so a local Ray is started first,
  beside which everything is measured.

Each repeat measures each way in turn over every file; per file the median over repeats;
per format and overall the mean over files.

    .venv/bin/python bench/decode.py                       # 5 repeats, 32 files
    .venv/bin/python bench/decode.py --quick --results /tmp/decode_smoke.json

Results: bench/results/decode.json; summary in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from record import new_record, save
from tagging import DEBIAN_MUSIC

if TYPE_CHECKING:
    import pyarrow as pa

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "decode"
RESULTS = HERE / "results" / "decode.json"
FORMATS = {  # extension -> encoder arguments
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "5"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
}
RATES = (22050, 44100, 48000)
N_SOURCES, CLIP_OFFSET_S, CLIP_S = 8, 30, 30
FFMPEG = ["ffmpeg", "-nostdin", "-v", "error"]
TO_16K_FLOAT = ["-ac", "1", "-ar", "16000", "-f", "f32le", "-"]


def make_inputs(quick: bool) -> list[Path]:
    """The clips, made once: every format of each source, at rotating rates; beside each,
    its first 10 ms in the same format (:func:`startup_clip`)."""
    sources = sorted(p for pattern in DEBIAN_MUSIC for p in glob.glob(pattern))
    if not sources:
        sys.exit(f"no music in {DEBIAN_MUSIC}: `make setup` installs the Debian packages "
                 "singularity-music and asc-music")  # fmt: skip
    # Spread over both packages (OGG and MP3 sources), not the first N names.
    picked = [sources[round(i * (len(sources) - 1) / (N_SOURCES - 1))] for i in range(N_SOURCES)]
    (DATA / "startup").mkdir(parents=True, exist_ok=True)
    files = []
    for i, source in enumerate(picked[:1] if quick else picked):
        for j, (ext, codec) in enumerate(FORMATS.items()):
            rate = RATES[(i + j) % len(RATES)]
            clip = DATA / f"{Path(source).stem.replace(' ', '_')}-{rate}.{ext}"
            for path, cut in ((clip, ["-ss", str(CLIP_OFFSET_S), "-t", str(CLIP_S), "-i", source]),
                              (startup_clip(clip), ["-i", str(clip), "-t", "0.01"])):  # fmt: skip
                if not path.exists():
                    encode = ["-ac", "2", "-ar", str(rate), *codec]
                    subprocess.run([*FFMPEG, "-y", *cut, *encode, str(path)], check=True)
            files.append(clip)
    return files


def startup_clip(clip: Path) -> Path:
    """``clip``'s first 10 ms, same format, rate and channels: what ffmpeg costs to start
    and open such a file (FFmpeg's probing of a WAV alone is a few ms, and raytag pays
    it too), as good as nothing decoded."""
    return clip.parent / "startup" / clip.name


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ffmpeg_cpu_s(path: Path, *output_options: str) -> float:
    """CPU seconds of one ffmpeg run decoding ``path`` to 16 kHz mono float32. Its messages
    are kept for a failure only: the f32le muxer warns about Ogg timestamps it corrects."""
    before = children_cpu_s()
    subprocess.run(
        [*FFMPEG, "-i", str(path), *output_options, *TO_16K_FLOAT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
    )
    return children_cpu_s() - before


def process_cpu_s(call: Callable[[], object]) -> float:
    began = time.process_time()
    call()
    return time.process_time() - began


def stage_batches(files: list[Path]) -> list[pa.Table]:
    """The rows the decode stage gets: track_id, uri, and no error yet, as many to a batch
    as ``raytag tag``'s default; one format to a batch, so that each has its own figure."""
    import pyarrow as pa

    from raytag.manifest import TRACK_ID, URI
    from raytag.tagging.options import TagOptions
    from raytag.tagging.output import ERROR_CODE, MESSAGE

    rows = TagOptions().decode_batch_size
    batches = []
    for ext in FORMATS:
        same_format = [str(f) for f in files if f.suffix == f".{ext}"]
        for first in range(0, len(same_format), rows):
            chunk = same_format[first : first + rows]
            batches.append(
                pa.table(
                    {
                        TRACK_ID: [f"t{len(batches)}-{i}" for i in range(len(chunk))],
                        URI: chunk,
                        ERROR_CODE: pa.nulls(len(chunk), pa.string()),
                        MESSAGE: pa.nulls(len(chunk), pa.string()),
                    }
                )
            )
    return batches


def measure(files: list[Path], repeats: int) -> dict[str, dict[str, list[float]]]:
    """CPU seconds per file and repeat, for each way of decoding."""
    import pyarrow.compute as pc

    from raytag.audio import decode_patches
    from raytag.config import AudioConfig
    from raytag.manifest import URI
    from raytag.tagging.options import TagOptions
    from raytag.tagging.output import ERROR_CODE
    from raytag.tagging.stages import decode_batch

    config = AudioConfig(max_patches=TagOptions().max_patches)
    batches = stage_batches(files)

    def stage(pcm16: bool) -> dict[str, float]:
        per_track = {}
        for batch in batches:
            began = time.process_time()
            decoded = decode_batch(batch, (config,), pcm16)
            cpu = time.process_time() - began
            if pc.any(pc.is_valid(decoded[ERROR_CODE])).as_py():
                sys.exit(f"the decode stage failed a track: {decoded.to_pylist()}")
            per_track.update(dict.fromkeys(batch[URI].to_pylist(), cpu / batch.num_rows))
        return per_track

    ways: dict[str, Callable[[], dict[str, float]]] = {
        "ffmpeg_full": lambda: {str(f): ffmpeg_cpu_s(f) for f in files},
        "ffmpeg_startup": lambda: {str(f): ffmpeg_cpu_s(startup_clip(f)) for f in files},
        "ffmpeg_stop_at_once": lambda: {str(f): ffmpeg_cpu_s(f, "-t", "0") for f in files},
        "decode": lambda: {
            str(f): process_cpu_s(lambda f=f: decode_patches(str(f), config)) for f in files
        },
        "stage": lambda: stage(pcm16=True),
        "stage_f32": lambda: stage(pcm16=False),
    }
    for way in ways.values():  # warm: imports, allocator, the page cache
        way()
    per_file: dict[str, dict[str, list[float]]] = {
        name: {str(f): [] for f in files} for name in ways
    }
    for repeat in range(repeats):
        for name, way in ways.items():
            for f, cpu in way().items():
                per_file[name][f].append(cpu)
        print(f"repeat {repeat + 1}/{repeats} done", flush=True)
    for net, startup in (("ffmpeg", "ffmpeg_startup"), ("ffmpeg_net_of_t0", "ffmpeg_stop_at_once")):
        per_file[net] = {
            f: [full - start for full, start in zip(runs, per_file[startup][f], strict=True)]
            for f, runs in per_file["ffmpeg_full"].items()
        }
    return per_file


def summarise(per_file: dict[str, dict[str, list[float]]]) -> dict:
    """Mean over files of each file's median, in CPU-ms per track: per format and overall."""
    medians = {
        name: {f: statistics.median(runs) * 1000 for f, runs in files.items()}
        for name, files in per_file.items()
    }
    groups = {"all": list(medians["decode"])}
    for ext in FORMATS:
        groups[ext] = [f for f in groups["all"] if f.endswith(f".{ext}")]
    summary = {}
    for group, files in groups.items():
        if not files:
            continue
        row = {name: round(statistics.mean(m[f] for f in files), 2) for name, m in medians.items()}
        row["n_files"] = len(files)
        row["stage_over_ffmpeg"] = round(row["stage"] / row["ffmpeg"], 3)
        row["stage_f32_over_ffmpeg"] = round(row["stage_f32"] / row["ffmpeg"], 3)
        row["decode_over_ffmpeg"] = round(row["decode"] / row["ffmpeg"], 3)
        summary[group] = row
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one source (4 files), 1 repeat")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    import ray

    files = make_inputs(args.quick)
    record = new_record("decode", __file__, sys.argv[1:])
    record["inputs"] = {
        "files": [str(f.relative_to(HERE.parent)) for f in files],
        "clip_seconds": CLIP_S,
        "ffmpeg_version": subprocess.run(
            ["ffmpeg", "-version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0],
    }
    record["repeats"] = repeats
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        per_file = measure(files, repeats)
    finally:
        ray.shutdown()
    record["cpu_ms_per_track"] = summarise(per_file)
    record["per_file_cpu_ms"] = {
        name: {Path(f).name: [round(s * 1000, 2) for s in runs] for f, runs in files_runs.items()}
        for name, files_runs in per_file.items()
    }
    save(record, args.results)
    print(f"{len(files)} files, {repeats} repeats; CPU-ms per 30-s track (mean of medians):")
    names = ("ffmpeg", "ffmpeg_net_of_t0", "ffmpeg_startup", "decode", "stage", "stage_f32")
    print(f"{'':6s}" + "".join(f"{n:>17s}" for n in names) + f"{'stage/ffmpeg':>14s}")
    for group, row in record["cpu_ms_per_track"].items():
        cells = "".join(f"{row[n]:17.1f}" for n in names)
        print(f"{group:6s}{cells}{row['stage_over_ffmpeg']:14.2f}")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
