"""Tagging speed against the machine's ceilings and a naive loop, on the same inputs.

For each model (the paper's full ``spectrogram`` and ``waveform`` presets):

- decode ceiling: decode + resample + patch only, one process per core;
- model ceiling: forward passes only, on already-decoded patches, one process using every
  core, at the best batch size, in a process started with raytag's model-actor
  environment (``model_process_env``: malloc keeps freed memory; eager model;
  torch.compile; on CPU, bf16 autocast), and once more in a plain process
  (``model_plain``) for the speed-up that setting gives.
  It is measured again after ``raytag tag`` and the ratios use the mean of the two, so
  one measure taken in an unusually fast or slow moment of this shared VM skews them less;
- naive loop: for each file, decode then predict its patches one at a time (batch 1),
  as single-file taggers do;
- ``raytag tag`` end to end on a fresh local Ray: read manifest -> decode -> model
  actors -> write Parquet -> verify.

Inputs: 30-s clips cut from the Debian music packages (MP3, 44.1 kHz stereo), those
tracks at full length (OGG/MP3), and generated catalogue tracks (mixed formats). Every
stage runs in its own child process, so peak RSS figures are the stage's own.

    .venv/bin/python bench/tagging.py                   # both models, all inputs
    .venv/bin/python bench/tagging.py --models spectrogram --quick
    python bench/tagging.py --device cuda --results bench/results/tagging_gpu.json  # a GPU

On a GPU the model ceiling and the naive loop run there (bf16 autocast, as ``raytag tag``
does), ``raytag tag`` gets GPU actors, and the GPU's utilisation is sampled (NVML).

Results: bench/results/tagging.json; summary in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from record import new_record, save

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "tagging"
RESULTS = HERE / "results" / "tagging.json"
DEBIAN_MUSIC = ("/usr/share/games/singularity/music/*.ogg", "/usr/share/games/asc/music/*.mp3")
CLIP_OFFSETS_S = (30, 90, 150)
BATCH_SIZES = {"cpu": (1, 8, 32, 64, 128), "cuda": (32, 64, 128, 256, 512, 1024)}


# -- inputs ------------------------------------------------------------------------------


def make_inputs(
    n_generated: int, quick: bool, full_length: tuple[str, ...] = DEBIAN_MUSIC
) -> dict[str, list[str]]:
    """The three input kinds, made once under bench/data/tagging."""
    full = sorted(os.path.abspath(p) for pattern in full_length for p in glob.glob(pattern))
    if not full:
        sys.exit(f"no full-length music in {full_length}: `make setup` installs the Debian "
                 "packages singularity-music and asc-music")  # fmt: skip
    if quick:
        full = full[:4]
    clips_dir = DATA / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for track in full:
        for offset in CLIP_OFFSETS_S:
            clip = clips_dir / f"{Path(track).stem.replace(' ', '_')}-{offset}.mp3"
            if not clip.exists():
                subprocess.run(
                    ["ffmpeg", "-v", "error", "-y", "-ss", str(offset), "-t", "30", "-i", track,
                     "-ar", "44100", "-ac", "2", "-b:a", "192k", str(clip)],
                    check=True,
                )  # fmt: skip
            clips.append(str(clip))
    generated_dir = DATA / f"generated-{n_generated}"
    if not (generated_dir / "manifest.parquet").exists():
        from raytag.catalogue import synthesize

        synthesize(str(generated_dir), n_generated, seed=11, duration_s=30.0)
    generated = sorted(
        str(p) for p in generated_dir.rglob("*") if p.suffix in (".wav", ".flac", ".ogg", ".mp3")
    )
    return {"clips_30s": clips, "full_length": full, "generated_30s": generated}


def model_folder(name: str) -> str:
    """The full preset with fresh weights: speed does not depend on what it learnt."""
    import torch

    from raytag.catalogue import VOCABULARY
    from raytag.checkpoint import save_model
    from raytag.config import AudioConfig
    from raytag.models import build_model

    folder = DATA / f"model-{name}"
    if not (folder / "raytag.json").exists():
        torch.manual_seed(0)
        model = build_model(name, n_tags=len(VOCABULARY))
        save_model(folder, model, list(VOCABULARY), AudioConfig(), name=f"bench-{name}")
    return str(folder)


def write_manifest(files: list[str], path: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"track_id": [f"t{i:06d}" for i in range(len(files))], "uri": files})
    pq.write_table(table, path)
    return str(path)


# -- stages (each runs in a child process) ----------------------------------------------


def _audio(max_patches: int):
    from raytag.config import AudioConfig

    return AudioConfig(max_patches=max_patches)


def _decode_one(args: tuple[str, int]) -> tuple[int, float, int]:
    from raytag.audio import decode_patches

    uri, max_patches = args
    track = decode_patches(uri, _audio(max_patches))
    return len(track.patches), track.duration_s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def stage_decode(files: list[str], max_patches: int) -> dict:
    """Decode ceiling: every core decoding, nothing else."""
    from concurrent.futures import ProcessPoolExecutor

    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_one, [(files[0], max_patches)] * workers))  # warm the imports
        started = time.perf_counter()
        results = list(pool.map(_decode_one, [(f, max_patches) for f in files]))
        wall = time.perf_counter() - started
    return {
        **_rates(len(files), sum(r[1] for r in results), sum(r[0] for r in results), wall),
        "processes": workers,
        "worker_peak_rss_mb": round(max(r[2] for r in results) / 1024, 1),
    }


def _decoded_patches(files: list[str], max_patches: int):
    from raytag.audio import decode_patches

    tracks = [decode_patches(f, _audio(max_patches)) for f in files]
    return tracks


def _time_forward(embed, patches, batch_size: int, device: str, cpu_bf16: bool = False) -> float:
    """Seconds to run ``patches`` (on the host, as decoded) through ``embed`` on ``device``
    in chunks: the copy to the device and bf16 autocast included, as in ``raytag tag``."""
    import torch

    from raytag.models.inference import bf16_autocast

    target = torch.device(device)

    def run(chunk):
        with bf16_autocast(target, on_cpu=cpu_bf16):
            return embed(chunk.to(target, non_blocking=True))

    with torch.inference_mode():
        run(patches[:batch_size])  # warm-up: allocator, kernels, compilation
        _synchronize(device)
        started = time.perf_counter()
        for chunk in patches.split(batch_size):
            run(chunk)
        _synchronize(device)
        return time.perf_counter() - started


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def stage_model(
    files: list[str],
    max_patches: int,
    model_dir: str,
    device: str,
    compile_model: bool,
    bf16_ceiling: bool = True,
) -> dict:
    """Model ceiling: forward passes only over already-decoded patches, every core (or the
    GPU), the best batch size (chosen on a sample), for the eager model; with
    ``compile_model``, for the model through torch.compile (``raytag tag --compile``),
    whose outputs must stay within 1e-4 of eager; on CPU, under bf16 autocast
    (``raytag tag --cpu-bf16``, unless not ``bf16_ceiling``), with how far its scores
    move. The process's environment (``run_stage``) decides how malloc runs."""
    import numpy as np
    import torch

    from raytag.checkpoint import load_model

    tracks = _decoded_patches(files, max_patches)
    patches = torch.from_numpy(np.concatenate([t.patches for t in tracks]))
    # The inputs again and again until the largest batch runs many times: a GPU runs the
    # patches of a few files in a blink.
    copies = -(-16 * max(BATCH_SIZES[device]) // len(patches)) if device == "cuda" else 1
    patches = patches.repeat(copies, 1)
    if device == "cuda":
        patches = patches.pin_memory()
    model = load_model(model_dir).model.to(device)
    sample = patches[: min(len(patches), 2 * max(BATCH_SIZES[device]))]
    per_batch = {
        b: round(len(sample) / _time_forward(model.embed, sample, b, device), 2)
        for b in BATCH_SIZES[device]
    }
    best = max(per_batch, key=per_batch.get)
    duration = copies * sum(t.duration_s for t in tracks)
    wall = _time_forward(model.embed, patches, best, device)
    eager = _rates(copies * len(files), duration, len(patches), wall)
    return {
        **eager,
        "device": device,
        "threads": torch.get_num_threads(),
        "best_batch_size": best,
        "patches_per_s_by_batch_size": per_batch,
        "compiled": _compiled_ceiling(
            model, patches, best, device, eager, duration, copies * len(files)
        )
        if compile_model
        else {"error": "not measured (--no-compile)"},
        **(
            {"cpu_bf16": _cpu_bf16_ceiling(model, patches, best, eager, duration, len(files))}
            if device == "cpu" and bf16_ceiling
            else {}
        ),
        "peak_rss_mb": _own_peak_rss_mb(),
    }


def _cpu_bf16_ceiling(model, patches, batch_size: int, eager: dict, duration: float,
                      tracks: int) -> dict:  # fmt: skip
    """The model ceiling under CPU bf16 autocast, and how far its scores move from float32."""
    import torch

    from raytag.models.inference import predict_patches

    probe = patches[:64]
    reference, _ = predict_patches(model, probe, batch_size)
    moved, _ = predict_patches(model, probe, batch_size, cpu_bf16=True)
    wall = _time_forward(model.embed, patches, batch_size, "cpu", cpu_bf16=True)
    fast = _rates(tracks, duration, len(patches), wall)
    return {
        **fast,
        "speedup": round(fast["patches_per_s"] / eager["patches_per_s"], 3),
        "max_abs_score_diff_vs_float32": float(abs(moved - reference).max()),
        "bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }


def _compiled_ceiling(model, patches, batch_size: int, device: str, eager: dict,
                      duration: float, tracks: int) -> dict:  # fmt: skip
    """The model ceiling through torch.compile, or why it could not compile here."""
    import torch

    from raytag.models.inference import compiled_embed

    started = time.perf_counter()
    try:
        compiled = compiled_embed(model)
        with torch.inference_mode():
            probe = patches[:64].to(device)
            reference = torch.sigmoid(model(probe))
            difference = (torch.sigmoid(compiled(probe)[0]) - reference).abs().max().item()
    except Exception as error:  # torch.compile's failures have no common base class
        return {"error": f"{type(error).__name__}: {str(error)[:500]}"}
    compile_s = time.perf_counter() - started
    fast = _rates(tracks, duration, len(patches), _time_forward(compiled, patches, batch_size,
                                                                 device))  # fmt: skip
    return {
        **fast,
        "compile_s": round(compile_s, 1),
        "speedup": round(fast["patches_per_s"] / eager["patches_per_s"], 3),
        "max_abs_diff_vs_eager": difference,
    }


def stage_naive(files: list[str], max_patches: int, model_dir: str, device: str) -> dict:
    """The loop single-file taggers run: decode a file, predict its patches one by one."""
    import torch

    from raytag.audio import decode_patches
    from raytag.checkpoint import load_model
    from raytag.models.inference import bf16_autocast

    model = load_model(model_dir).model.to(device)
    target = torch.device(device)
    n_patches, duration, decode_s, model_s = 0, 0.0, 0.0, 0.0
    with torch.inference_mode():
        for uri in files:
            started = time.perf_counter()
            track = decode_patches(uri, _audio(max_patches))
            decoded = time.perf_counter()
            with bf16_autocast(target):
                scores = [
                    torch.sigmoid(model(torch.from_numpy(p[None]).to(target)).float())
                    for p in track.patches
                ]
            torch.stack(scores).mean(dim=0).cpu()
            decode_s += decoded - started
            model_s += time.perf_counter() - decoded
            n_patches += len(track.patches)
            duration += track.duration_s
    return {
        **_rates(len(files), duration, n_patches, decode_s + model_s),
        "device": device,
        "decode_s": round(decode_s, 2),
        "model_s": round(model_s, 2),
        "peak_rss_mb": _own_peak_rss_mb(),
    }


def stage_raytag(
    manifest: str,
    max_patches: int,
    model_dir: str,
    output: str,
    compile_model: bool,
    options: dict | None = None,
    data_context: dict | None = None,
) -> dict:
    """``raytag tag`` end to end on a fresh local Ray, with every Ray process's peak RSS.
    ``data_context``: Ray Data settings to try (``DataContext`` attributes)."""
    import ray
    from ray.data import DataContext

    from raytag.tagging import TagOptions, tag_catalogue

    for name, value in (data_context or {}).items():
        setattr(DataContext.get_current(), name, value)

    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    ray_started = time.perf_counter() - started
    sampler, gpu = RssSampler().start(), GpuSampler().start()
    chosen = TagOptions(max_patches=max_patches, compile=compile_model, **(options or {}))
    [summary] = tag_catalogue(manifest, [model_dir], output, chosen)
    peaks, gpus = sampler.stop(), gpu.stop()
    ray.shutdown()
    attempt = summary.record["attempts"][-1]
    return {
        **_rates(
            attempt["predictions"] + attempt["errors"],
            attempt["audio_hours"] * 3600,
            None,
            attempt["wall_s"],
        ),
        "ray_start_s": round(ray_started, 1),
        # Without the fixed costs of a run (pairing with the output, the final verify):
        # the rate a long catalogue approaches.
        "phases_s": attempt["phases_s"],
        "tag_phase_tracks_per_s": round(
            (attempt["predictions"] + attempt["errors"]) / attempt["phases_s"]["tag_s"], 3
        ),
        "exactly_once": summary.report.ok,
        "errors": attempt["errors"],
        "options": attempt["options"],
        "data_context": data_context or {},
        "driver_peak_rss_mb": _own_peak_rss_mb(),
        "driver_cpu_s": round(time.process_time(), 1),
        "workers": peaks,
        **({"gpu": gpus} if gpus else {}),
    }


STAGES: dict[str, Callable[..., dict]] = {
    "decode": stage_decode,
    "model": stage_model,
    "naive": stage_naive,
    "raytag": stage_raytag,
}


# -- measuring -------------------------------------------------------------------------


def _rates(tracks: int, audio_s: float, patches: int | None, wall: float) -> dict:
    rates = {
        "tracks": tracks,
        "wall_s": round(wall, 2),
        "tracks_per_s": round(tracks / wall, 3),
        "audio_s_per_s": round(audio_s / wall, 1),
    }
    if patches is not None:
        rates |= {"patches": patches, "patches_per_s": round(patches / wall, 2)}
    return rates


def _own_peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class RssSampler:
    """Peak RSS (the kernel's VmHWM) and CPU seconds per kind of Ray worker process.

    A process's kind is the first of KINDS its title (``ray::...``) has shown: task
    workers read ``ray::IDLE`` between tasks.
    """

    KINDS = (
        ("TagPredictor", "model_actor"),
        ("Decoder", "decode_actor"),
        ("decode_batch", "decode_task"),
    )

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.peak_kb: dict[str, int] = {}
        self.cpu: dict[str, tuple[float, float]] = {}  # pid -> (first seen, last seen)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict[str, float]]:
        self._done.set()
        self._thread.join()
        summary: dict[str, dict[str, float]] = {}
        for pid, kind in self.kinds.items():
            first, last = self.cpu[pid]
            row = summary.setdefault(kind, {"processes": 0, "peak_rss_mb": 0.0, "cpu_s": 0.0})
            row["processes"] += 1
            row["peak_rss_mb"] = max(row["peak_rss_mb"], round(self.peak_kb[pid] / 1024, 1))
            row["cpu_s"] = round(row["cpu_s"] + last - first, 1)
        return dict(sorted(summary.items()))

    def _run(self) -> None:
        while not self._done.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                    if not title.startswith("ray::"):
                        continue
                    status = Path(f"/proc/{pid}/status").read_text()
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                kind = next((k for key, k in self.KINDS if key in title), None)
                if self.kinds.get(pid) in (None, "other_ray_worker"):
                    self.kinds[pid] = kind or "other_ray_worker"
                cpu_s = (int(stat[11]) + int(stat[12])) / self._tick
                self.cpu[pid] = (self.cpu.get(pid, (cpu_s, 0))[0], cpu_s)
                hwm = next((int(line.split()[1]) for line in status.splitlines()
                            if line.startswith("VmHWM:")), 0)  # fmt: skip
                self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), hwm)
            time.sleep(0.2)


class GpuSampler:
    """GPU utilisation and memory in use over a run, read through NVML every 0.2 s from
    the driver (which opens no CUDA context). Nothing when there is no GPU or no NVML."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # no NVML library, no driver or no GPU: nothing to sample
            self._handles = []
        self.utilisation: list[int] = []
        self.memory_mb: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> GpuSampler:
        if self._handles:
            self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        if not self._handles:
            return {}
        self._done.set()
        self._thread.join()
        busy = [u for u in self.utilisation if u > 0]
        return {
            "gpus": len(self._handles),
            "name": self._nvml.nvmlDeviceGetName(self._handles[0]),
            "mean_utilisation_pct": round(sum(self.utilisation) / len(self.utilisation), 1),
            "mean_utilisation_while_busy_pct": round(sum(busy) / len(busy), 1) if busy else 0,
            "peak_memory_used_mb": max(self.memory_mb),
            "samples": len(self.utilisation),
        }

    def _run(self) -> None:
        while not self._done.is_set():
            for handle in self._handles:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                self.utilisation.append(rates.gpu)
                self.memory_mb.append(round(memory.used / 2**20, 1))
            time.sleep(0.2)


def run_stage(stage: str, env: dict[str, str] | None = None, **kwargs) -> dict:
    """One stage in a fresh child process, ``env`` added to its environment; its JSON
    result."""
    child = subprocess.run(
        [sys.executable, __file__, "--stage", stage],
        input=json.dumps(kwargs), capture_output=True, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    if child.returncode:
        raise RuntimeError(f"stage {stage} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


# -- the run ---------------------------------------------------------------------------


def add_input_arguments(parser: argparse.ArgumentParser, device_help: str) -> None:
    """The options the tagging benchmarks share: which inputs, and the device."""
    parser.add_argument("--quick", action="store_true", help="4 Debian tracks: a smoke run")
    parser.add_argument(
        "--full-length",
        nargs="+",
        default=list(DEBIAN_MUSIC),
        help="globs of the full-length tracks (default: the Debian music packages)",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help=f"{device_help} (default: cuda when there is one)",
    )


def parse_or_run_stage(
    parser: argparse.ArgumentParser, results: Path, stages: dict[str, Callable[..., dict]]
) -> argparse.Namespace | None:
    """The arguments, with ``--results``; None once this process, started as a stage's
    child (the hidden ``--stage NAME``, its arguments as JSON on stdin), has run it."""
    parser.add_argument("--results", type=Path, default=results)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.stage:
        return args
    print(json.dumps(stages[args.stage](**json.loads(sys.stdin.read()))))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["spectrogram", "waveform"])
    parser.add_argument("--generated", type=int, default=16, help="generated 30-s tracks")
    parser.add_argument("--max-patches", type=int, default=32, help="raytag tag's default")
    parser.add_argument(
        "--repeat",
        type=int,
        default=8,
        help="raytag tag and the decode ceiling go over the inputs this many times (distinct "
        "track_ids), so a run's fixed costs weigh as on a real catalogue",
    )
    add_input_arguments(parser, "where the model ceiling and naive loop run")
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="skip torch.compile: its ceiling and `raytag tag --compile`",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='extra end-to-end runs, e.g. pb64=\'{"options": {"predict_batch_size": 64}, '
        '"data_context": {"op_resource_reservation_enabled": false}}\' (TagOptions fields '
        "and Ray DataContext attributes)",
    )
    args = parse_or_run_stage(parser, RESULTS, STAGES)
    if args is None:
        return

    import torch

    from raytag.models.inference import model_process_env

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    inputs = make_inputs(args.generated, args.quick, tuple(args.full_length))
    files = [f for kind in inputs.values() for f in kind]
    repeated = files * args.repeat
    manifest = write_manifest(repeated, DATA / "manifest.parquet")
    common = {"max_patches": args.max_patches}
    model_env = model_process_env()  # as raytag's model actors run
    print(f"{len(files)} files: " + ", ".join(f"{len(v)} {k}" for k, v in inputs.items()))
    record = {
        **new_record("tagging", __file__, sys.argv[1:]),
        "inputs": {kind: len(paths) for kind, paths in inputs.items()},
        "device": device,
        "repeat": args.repeat,
        "max_patches": args.max_patches,
        "decode_ceiling": run_stage("decode", files=repeated, **common),
        "models": {},
    }
    print("decode ceiling", json.dumps(record["decode_ceiling"]), flush=True)
    for name in args.models:
        folder = model_folder(name)
        result = record["models"][name] = {}
        for key, stage, env, extra in (
            ("model_plain", "model", None, {"compile_model": False, "bf16_ceiling": False}),
            ("model", "model", model_env, {"compile_model": args.compile}),
            ("naive", "naive", None, {}),  # a plain process, as such a script is
        ):
            result[key] = run_stage(stage, env, files=files, model_dir=folder, device=device,
                                    **common, **extra)  # fmt: skip
            print(name, key, json.dumps(result[key]), flush=True)
            save(record, args.results)  # a later failure keeps what was measured
        runs = {"raytag": {"compile_model": False}}
        if args.compile:
            runs["raytag_compiled"] = {"compile_model": True}
        if device == "cpu":
            runs["raytag_cpu_bf16"] = {"compile_model": False, "options": {"cpu_bf16": True}}
        for key, settings in runs.items():
            result[key] = _end_to_end(name, folder, manifest, **settings, **common)
            print(name, key, json.dumps(result[key]), flush=True)
            save(record, args.results)
        for variant in args.variant:
            label, settings = variant.split("=", 1)
            result.setdefault("variants", {})[label] = _end_to_end(
                name, folder, manifest, compile_model=False, **json.loads(settings), **common
            )
            print(name, label, json.dumps(result["variants"][label]), flush=True)
            save(record, args.results)
        # The ceiling again, after the end-to-end runs: the ratios use the mean of both.
        result["model_after"] = run_stage("model", model_env, files=files, model_dir=folder,
                                          device=device, compile_model=False, **common)  # fmt: skip
        print(name, "model_after", json.dumps(result["model_after"]), flush=True)
        result["ratios"] = _ratios(record["decode_ceiling"], result)
        print(name, "ratios", json.dumps(result["ratios"]), flush=True)
    save(record, args.results)
    print(f"wrote {args.results}")


def _end_to_end(name: str, model_dir: str, manifest: str, **settings) -> dict:
    """The ``raytag`` stage into a fresh output folder (a leftover one would be resumed)."""
    output = DATA / f"out-{name}"
    subprocess.run(["rm", "-rf", str(output)], check=True)
    return run_stage("raytag", manifest=manifest, model_dir=model_dir, output=str(output),
                     **settings)  # fmt: skip


def _ratios(decode: dict, result: dict) -> dict:
    """End to end against the lower ceiling (eager model; compiled model for --compile; bf16
    model for --cpu-bf16) and against the naive loop, in tracks/s. The model ceiling is the
    mean of its measures before and after the end-to-end runs (the compiled one: before)."""
    before, after = result["model"], result.get("model_after", {})
    ratios = {}
    for key, ceilings in (
        ("raytag", (before, after)),
        ("raytag_compiled", (before["compiled"],)),
        ("raytag_cpu_bf16", (before.get("cpu_bf16", {}), after.get("cpu_bf16", {}))),
    ):
        measured = [c["tracks_per_s"] for c in ceilings if "tracks_per_s" in c]
        if key not in result or not measured:
            continue
        model_ceiling = sum(measured) / len(measured)
        lower = min(decode["tracks_per_s"], model_ceiling)
        end_to_end = result[key]["tracks_per_s"]
        ratios[key] = {
            "model_ceiling_tracks_per_s": [round(m, 3) for m in measured],
            "lower_ceiling": "decode" if decode["tracks_per_s"] <= lower else "model",
            "over_lower_ceiling": round(end_to_end / lower, 3),
            "tag_phase_over_lower_ceiling": round(result[key]["tag_phase_tracks_per_s"] / lower, 3),
            "over_naive": round(end_to_end / result["naive"]["tracks_per_s"], 3),
        }
        if "model_plain" in result:  # the same forwards in a process left as Python starts it
            plain = result["model_plain"]["tracks_per_s"]
            ratios[key]["model_ceiling_over_plain_process"] = round(model_ceiling / plain, 3)
            ratios[key]["over_plain_lower_ceiling"] = round(
                end_to_end / min(decode["tracks_per_s"], plain), 3
            )
        if "gpu" in result[key]:
            ratios[key]["tracks_per_s_per_gpu"] = round(end_to_end / result[key]["gpu"]["gpus"], 2)
    return ratios


if __name__ == "__main__":
    main()
