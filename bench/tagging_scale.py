"""Driver memory against catalogue size for `raytag tag` (the tagging issue's scale check).

Tags manifests of N short clips (N = 10,000 and 100,000 by default) end to end, each in a
fresh driver process on a fresh local Ray, and records the driver's peak RSS, the time to
the first output file, wall time, throughput, the time spent planning (pairing the manifest
with the output) and verifying, and the number of output files. ``--plan-only`` sizes run
only the planning of a fresh run (open the manifest, pair it with an empty output), for
sizes too big to tag here. ``--rerun-at N`` reruns `raytag tag` on an N-row manifest whose
output is already complete: the largest tagged run's prediction files copied N / rows
times with the track_ids shifted (row i and row i + rows point at the same clip, so each
copy holds exactly the rows a real run writes), which measures planning and verifying N
rows in the driver without tagging them. The model is the spectrogram preset shrunk
to almost nothing (this measures the pipeline and the driver, not the network), and the
rows point at a handful of real short audio files, decoded every time as usual.

    .venv/bin/python bench/tagging_scale.py                 # 10k and 100k rows
    .venv/bin/python bench/tagging_scale.py --rows 2000 20000
    .venv/bin/python bench/tagging_scale.py --rows 100000 --plan-only 100000 1000000 \
        --rerun-at 100000 1000000

Results: bench/results/tagging_scale.json; summary in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from record import new_record, save

from raytag.tagging import TagOptions

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "scale"
RESULTS = HERE / "results" / "tagging_scale.json"
N_CLIPS = 8


def make_inputs(rows: int, clip_seconds: float) -> tuple[str, str]:
    """Clips, a tiny model folder and a manifest of ``rows`` rows cycling over the clips."""
    from raytag.catalogue import VOCABULARY
    from raytag.checkpoint import save_model
    from raytag.config import AudioConfig
    from raytag.models import build_model

    clips = DATA / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    for i in range(N_CLIPS):
        path = clips / f"clip{i}.wav"
        if not path.exists():
            tone = f"sine=frequency={220 * (i + 1)}:sample_rate=16000:duration={clip_seconds}"
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", tone, str(path)],
                           check=True)  # fmt: skip
    model = DATA / "model"
    tiny = build_model("spectrogram-small", n_tags=len(VOCABULARY), num_filt=1,
                       backend_filters=8, dense_units=8)  # fmt: skip
    save_model(model, tiny, list(VOCABULARY), AudioConfig(), name="scale-bench")
    manifest = DATA / f"manifest-{rows}.parquet"
    table = pa.table({
        "track_id": [f"t{i:08d}" for i in range(rows)],
        "uri": [str(clips / f"clip{i % N_CLIPS}.wav") for i in range(rows)],
    })  # fmt: skip
    pq.write_table(table, manifest)
    return str(manifest), str(model)


def run_one(manifest: str, model: str, output: str, decode_batch_size: int) -> dict:
    """Runs in a child process: a fresh driver, so its peak RSS is this run's alone."""
    import ray

    from raytag.tagging import TagOptions, tag_catalogue

    first_output: list[float] = []
    started = time.monotonic()

    def watch() -> None:
        while not first_output:  # the model's folder is NAME-vVERSION in the output
            if any(Path(output).glob("*/predictions/*.parquet")):
                first_output.append(time.monotonic() - started)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    options = TagOptions(max_patches=1, decode_batch_size=decode_batch_size)
    [summary] = tag_catalogue(manifest, [model], output, options)
    wall = time.monotonic() - started
    ray.shutdown()
    attempt = summary.record["attempts"][-1]
    files = {side: len(list(Path(summary.record["output"]).glob(f"{side}/*.parquet")))
             for side in ("predictions", "errors")}  # fmt: skip
    return {
        "verified_rows": summary.report.manifest_rows,
        "predictions": attempt["predictions"],
        "errors": attempt["errors"],
        "wall_s": round(wall, 1),
        "time_to_first_output_s": round(first_output[0], 1) if first_output else None,
        "tracks_per_s": round(attempt["predictions"] / wall, 1),
        "driver_peak_rss_mb": peak_rss_mb(),
        "exactly_once": summary.report.ok,
        "phases_s": attempt["phases_s"],
        "output_files": files,
        "rows_per_file": options.rows_per_file,
        "executions": executions(attempt),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM). Not getrusage's
    ru_maxrss: Linux carries that across exec, so a child would report its parent's peak
    (the parent builds the big manifests)."""
    status = Path("/proc/self/status").read_text()
    [kb] = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
    return round(int(kb) / 1024, 1)


def executions(attempt: dict) -> int:
    """Ray Data executions the attempt ran (none when nothing was pending)."""
    rows = attempt["predictions"] + attempt["errors"]
    return -(-rows // attempt["options"]["rows_per_execution"]) if rows else 0


def complete_output(tagged: Path, tagged_rows: int, rows: int, output: Path) -> None:
    """``output`` as a finished run over ``rows`` rows, from the finished run ``tagged``
    over the first ``tagged_rows`` of the same manifest (``make_inputs``)."""
    if rows % tagged_rows or tagged_rows % N_CLIPS:
        raise SystemExit(f"--rerun-at {rows} needs a multiple of a tagged size ({tagged_rows})")
    subprocess.run(["rm", "-rf", str(output)], check=True)
    [source] = tagged.glob("*/predictions")
    target = output / source.parent.name
    (target / "predictions").mkdir(parents=True)
    for name in ("vocabulary.json", "thresholds.json"):
        (target / name).write_bytes((source.parent / name).read_bytes())
    for copy in range(rows // tagged_rows):
        for file in sorted(source.glob("*.parquet")):
            table = pq.read_table(file)
            shifted = [f"t{int(t[1:]) + copy * tagged_rows:08d}"
                       for t in table["track_id"].to_pylist()]  # fmt: skip
            index = table.schema.get_field_index("track_id")
            table = table.set_column(index, "track_id", pa.array(shifted, pa.string()))
            pq.write_table(table, target / "predictions" / f"copy{copy:03d}-{file.name}")


def plan_one(manifest: str, output: str) -> dict:
    """Runs in a child process: only a fresh run's planning, as tag_catalogue does it."""
    import ray

    from raytag.manifest import open_manifest
    from raytag.tagging.reconcile import pending_rows

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    started = time.monotonic()
    _, pending = pending_rows(open_manifest(manifest), [output])
    plan_s = time.monotonic() - started
    ray.shutdown()
    return {
        "pending_rows": pending,
        "plan_s": round(plan_s, 1),
        "driver_peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--plan-only", type=int, nargs="*", default=[],
                        help="manifest sizes whose planning alone is measured")  # fmt: skip
    parser.add_argument("--rerun-at", type=int, nargs="*", default=[],
                        help="sizes rerun over a complete output (plan + verify)")  # fmt: skip
    parser.add_argument("--runs-from", type=Path,
                        help="the --rows runs of an earlier invocation (its printed JSON "
                        "lines; their outputs still in bench/data/scale)")  # fmt: skip
    parser.add_argument("--clip-seconds", type=float, default=1.5)
    parser.add_argument("--decode-batch-size", type=int, default=TagOptions().decode_batch_size)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=4, metavar=("MANIFEST", "MODEL", "OUTPUT", "BATCH"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--plan-child", nargs=2, metavar=("MANIFEST", "OUTPUT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*args.child[:3], int(args.child[3]))))
        return
    if args.plan_child:
        print(json.dumps(plan_one(*args.plan_child)))
        return
    record = {
        **new_record("tagging_scale", __file__, sys.argv[1:]),
        "decode_batch_size": args.decode_batch_size,
        "runs": [],
        "plan_only": [],
        "rerun_complete": [],
    }
    if args.runs_from:
        lines = args.runs_from.read_text().splitlines()
        record["runs"] = [json.loads(line) for line in lines if '"verified_rows"' in line]
        args.rows = [run["manifest_rows"] for run in record["runs"]]
    for rows in [] if args.runs_from else args.rows:
        manifest, model = make_inputs(rows, args.clip_seconds)
        output = DATA / f"out-{rows}"
        subprocess.run(["rm", "-rf", str(output)], check=True)
        child = subprocess.run(
            [sys.executable, __file__, "--child", manifest, model, str(output),
             str(args.decode_batch_size)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = {"manifest_rows": rows, **json.loads(child.stdout.strip().splitlines()[-1])}
        print(json.dumps(result), flush=True)
        record["runs"].append(result)
    for rows in args.plan_only:
        manifest, model = make_inputs(rows, args.clip_seconds)
        output = DATA / f"plan-{rows}"
        subprocess.run(["rm", "-rf", str(output)], check=True)
        child = subprocess.run([sys.executable, __file__, "--plan-child", manifest, str(output)],
                               capture_output=True, text=True, check=True)  # fmt: skip
        result = {"manifest_rows": rows, **json.loads(child.stdout.strip().splitlines()[-1])}
        print(json.dumps(result), flush=True)
        record["plan_only"].append(result)
    tagged = max(args.rows)
    for rows in args.rerun_at:
        manifest, model = make_inputs(rows, args.clip_seconds)
        output = DATA / f"complete-{rows}"
        complete_output(DATA / f"out-{tagged}", tagged, rows, output)
        child = subprocess.run(
            [sys.executable, __file__, "--child", manifest, model, str(output),
             str(args.decode_batch_size)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = {"manifest_rows": rows, "copied_from_rows": tagged,
                  **json.loads(child.stdout.strip().splitlines()[-1])}  # fmt: skip
        print(json.dumps(result), flush=True)
        record["rerun_complete"].append(result)
    base = record["runs"][0]["driver_peak_rss_mb"]
    record["driver_rss_growth"] = [round(r["driver_peak_rss_mb"] / base, 3) for r in record["runs"]]
    save(record, args.results)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
