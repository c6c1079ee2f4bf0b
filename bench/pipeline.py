"""The tagging pipeline's inference stage against its own ceiling, and one multi-model run
against one run per model, on the inputs of bench/tagging.py.

1. Inference-stage ceiling, per model (the paper's full presets, fresh weights):

   - decode: the rows as the pipeline hands them to decoding (manifest -> pending rows),
     decoded once by ``decode_batch`` (16-bit PCM, the default) before anything is timed;
   - model ceiling: forward passes only over those patches, in one process started as
     the model actors are (``model_process_env``), with an actor's thread count and forward
     batch; and, where the pool has several actors, as many such processes at once (the
     pool's ceiling: they share the cores as the actors do). Before and after the stage;
     the ratios use the means;
   - stage: the decoded rows, ``--repeat`` times under distinct track ids, in blocks of
     ``predict_batch_size`` rows in the object store, then only the model stage,
     ``map_batches(TagPredictor, ...)`` with ``tag_rows``' arguments, consumed to the end
     on a fresh local Ray. Before it, the same process runs ``TagPredictor`` on the
     blocks itself (no Ray in between), and Ray Data's own figures for the map are kept.
     Where the pool's time goes is split per patch: the forward (alone, and what sharing
     the cores with the other actors adds), the int16 -> float32 conversion
     (``stored_patches``), the rest of the predictor's call, what the call costs more in
     an actor, Ray Data's work around the call in the actor, and the pool's idle time.

2. Multi-model against N runs: the same manifest tagged by one ``tag_catalogue`` run with
   every ``--multi-models`` model (each track decoded once), then by one run per model
   into fresh outputs, each on a fresh local Ray with the same options. Default pair:
   the spectrogram preset and a musicnn-architecture model, whose patch policy differs
   (3-s non-overlapping patches with context), so each gets its own patches.

Every measurement runs in its own child process.

    .venv/bin/python bench/pipeline.py                   # ~15 min on the CPU VM
    .venv/bin/python bench/pipeline.py --quick --results /tmp/pipeline_smoke.json
    python bench/pipeline.py --device cuda --results bench/results/pipeline_gpu.json

Results: bench/results/pipeline.json; summary in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from record import load_average, new_record, save
from tagging import (
    DATA,
    GpuSampler,
    RssSampler,
    _own_peak_rss_mb,
    _time_forward,
    add_input_arguments,
    make_inputs,
    model_folder,
    parse_or_run_stage,
    write_manifest,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data._internal.stats import StatsSummary

    from raytag.tagging import TagOptions

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pipeline.json"
DECODED = "decoded.arrow"
# Patches the CPU ceilings run: enough for a steady rate, and seconds, not minutes.
CPU_CEILING_PATCHES = 512
# Ray Data's figures for the map (the summary of its operator, and its execution metrics).
_OPERATOR_TIMES = (
    "wall_time",
    "cpu_time",
    "input_prep_time",
    "function_body_time",
    "output_build_time",
)
_EXECUTION_METRICS = (
    "block_serialization_time_s",
    "task_scheduling_time_s",
    "task_submission_backpressure_time",
    "task_output_backpressure_time_s",
    "task_completion_time_s",
    "average_bytes_inputs_per_task",
    "average_bytes_outputs_per_task",
)


# -- inputs ------------------------------------------------------------------------------


def bench_model_folder(name: str) -> str:
    """A full preset with fresh weights; ``musicnn``: that architecture with musicnn's own
    patch policy (raytag.importers.musicnn.AUDIO), as an imported musicnn model has."""
    if name != "musicnn":
        return model_folder(name)
    import torch

    from raytag.catalogue import VOCABULARY
    from raytag.checkpoint import save_model
    from raytag.importers.musicnn import AUDIO
    from raytag.models import build_model

    folder = DATA / "model-musicnn"
    if not (folder / "raytag.json").exists():
        torch.manual_seed(0)
        model = build_model(
            "musicnn", n_tags=len(VOCABULARY), context_samples=AUDIO.context_samples
        )
        save_model(folder, model, list(VOCABULARY), AUDIO, name="bench-musicnn")
    return str(folder)


def _start_ray(device: str) -> float:
    """A fresh local Ray with every core (and, for ``cuda``, the GPUs); seconds it took."""
    import ray

    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        num_gpus=None if device == "cuda" else 0,
        include_dashboard=False,
        log_to_driver=False,
    )
    return time.perf_counter() - started


def _resolved_options(max_patches: int) -> TagOptions:
    import ray

    from raytag.tagging import TagOptions

    return TagOptions(max_patches=max_patches).resolved(ray.cluster_resources())


def _read_decoded(folder: str) -> pa.Table:
    """The decoded rows :func:`stage_decode` wrote, memory-mapped."""
    import pyarrow as pa

    with pa.memory_map(str(Path(folder) / DECODED)) as source:
        return pa.ipc.open_file(source).read_all()


def _blocks(table: pa.Table, rows: int) -> list[pa.Table]:
    """``table`` cut into contiguous blocks of ``rows`` rows."""
    return [table.slice(start, rows).combine_chunks() for start in range(0, table.num_rows, rows)]


def _patch_count(table: pa.Table) -> int:
    from raytag.tagging.stages import n_patches_column

    return int(table[n_patches_column(0)].to_numpy().sum())


# -- measurements (each runs in a child process) ----------------------------------------


def stage_decode(
    files: list[str], model_dir: str, max_patches: int, folder: str, device: str
) -> dict:
    """The manifest's rows as the pipeline hands them to decoding (pending, checked, with
    ``_todo_0``), decoded once under the model's patch policy into ``folder``; the options
    the cluster resolves to."""
    from dataclasses import asdict, replace

    import pyarrow as pa
    import ray

    from raytag.manifest import open_manifest
    from raytag.tagging.pipeline import resolve_model
    from raytag.tagging.reconcile import pending_part, pending_rows
    from raytag.tagging.stages import decode_batch

    _start_ray(device)
    options = _resolved_options(max_patches)
    manifest = open_manifest(write_manifest(files, Path(folder) / "manifest.parquet"))
    unmatched, _ = pending_rows(manifest, [str(Path(folder) / "no-output")])
    rows = pending_part(unmatched, manifest.normalised_schema, 1, 0, 1)
    table = pa.concat_tables(ray.get(rows.to_arrow_refs()))
    policy = replace(resolve_model(model_dir).audio, max_patches=options.max_patches)
    started = time.process_time()
    decoded = decode_batch(table, (policy,), options.pcm16)
    cpu_s = time.process_time() - started
    with (
        pa.OSFile(str(Path(folder) / DECODED), "wb") as sink,
        pa.ipc.new_file(sink, decoded.schema) as writer,
    ):
        writer.write_table(decoded)
    ray.shutdown()
    return {
        "tracks": decoded.num_rows,
        "patches": _patch_count(decoded),
        "decode_cpu_s": round(cpu_s, 2),
        "mb": round(decoded.nbytes / 2**20, 1),
        "options": asdict(options),
    }


def stage_ceiling(
    folder: str,
    model_dir: str,
    device: str,
    threads: int,
    patch_batch_size: int,
    predict_batch_size: int,
    cpu_bf16: bool,
    barrier: str | None = None,
) -> dict:
    """Model ceiling: forward passes only over the decoded patches, with an actor's
    threads and forward batch; and what their int16 -> float32 conversion costs. With
    ``barrier`` (:func:`run_stages`), the forwards start when every process is ready."""
    import numpy as np
    import torch

    from raytag.checkpoint import load_model
    from raytag.tagging.stages import stored_patches

    torch.set_num_threads(threads)
    blocks = _ceiling_blocks(folder, predict_batch_size, device)
    patches = torch.from_numpy(np.concatenate([stored_patches(block, 0) for block in blocks]))
    n_converted = len(patches)
    # Each block's floats dropped at once, as an actor's are, so that malloc hands the same
    # memory back: converting into fresh pages costs ~10x more here (page faults).
    started = time.perf_counter()
    for block in blocks:
        stored_patches(block, 0)
    conversion_s = time.perf_counter() - started
    if device == "cuda":  # enough forwards to time: a GPU runs a few files' in a blink
        patches = patches.repeat(-(-64 * patch_batch_size // len(patches)), 1)
    model = load_model(model_dir).model.to(device)
    if barrier:
        _wait_for_all(barrier)
    cpu_started = time.process_time()
    wall = _time_forward(model.embed, patches, patch_batch_size, device, cpu_bf16)
    # _time_forward's CPU time covers its warm-up batch too; its wall does not.
    cpu_per_patch = (time.process_time() - cpu_started) / (len(patches) + patch_batch_size)
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "patch_batch_size": patch_batch_size,
        "patches": len(patches),
        "wall_s": round(wall, 2),
        "patches_per_s": round(len(patches) / wall, 2),
        "forward_ms_per_patch": round(1000 * wall / len(patches), 3),
        # Below 1 where other processes took the cores (a shared machine).
        "cpu_over_wall": round(cpu_per_patch * len(patches) / wall, 3),
        "patches_per_cpu_s": round(1 / cpu_per_patch, 2),
        "int16_to_float32_ms_per_patch": round(1000 * conversion_s / n_converted, 3),
        "peak_rss_mb": _own_peak_rss_mb(),
        "load_avg": load_average(),
    }


def _ceiling_blocks(folder: str, rows: int, device: str) -> list[pa.Table]:
    """The decoded blocks the ceiling and the in-process predictor run: on CPU only the
    first ones, up to CPU_CEILING_PATCHES patches."""
    blocks = _blocks(_read_decoded(folder), rows)
    if device == "cuda":
        return blocks
    counts = [_patch_count(block) for block in blocks]
    enough = next(
        (i + 1 for i in range(len(blocks)) if sum(counts[: i + 1]) >= CPU_CEILING_PATCHES),
        len(blocks),
    )
    return blocks[:enough]


def _wait_for_all(barrier: str) -> None:
    """Say this process is ready in the ``barrier`` folder and wait for the others (the
    folder's name ends with how many there are)."""
    folder = Path(barrier)
    (folder / str(os.getpid())).touch()
    parties = int(folder.name.rsplit("-", 1)[1])
    while len(list(folder.iterdir())) < parties:
        time.sleep(0.01)


def stage_predecoded(
    folder: str, model_dir: str, max_patches: int, repeat: int, device: str
) -> dict:
    """The model stage alone on a fresh local Ray, fed decoded blocks from the object
    store; and the predictor's call on the same blocks in this process, without Ray."""
    from dataclasses import replace

    import pyarrow as pa
    import ray
    import ray.data

    from raytag.models.inference import model_process_env
    from raytag.tagging.pipeline import resolve_model
    from raytag.tagging.stages import TagPredictor

    load_at_start = load_average()
    ray_start_s = _start_ray(device)
    options = _resolved_options(max_patches)
    steady_pool = not options.may_stall(ray.cluster_resources().get("CPU", 0))
    models = [resolve_model(model_dir)]
    unique = _read_decoded(folder)
    in_process = _time_predictor(
        TagPredictor(models, [0], options),
        _ceiling_blocks(folder, options.predict_batch_size, device),
    )
    # The rows again under distinct track ids, so the pool runs long enough to measure.
    repeated = pa.concat_tables([unique] * repeat)
    track_ids = pa.array([f"t{i:07d}" for i in range(repeated.num_rows)])
    repeated = repeated.set_column(repeated.column_names.index("track_id"), "track_id", track_ids)
    blocks = _blocks(repeated, options.predict_batch_size)
    patches = _patch_count(repeated)
    stored = ray.data.from_arrow(blocks).materialize()
    del blocks, repeated
    if steady_pool:  # as tag_rows
        stored.context.autoscaling_config = replace(
            stored.context.autoscaling_config, actor_pool_util_downscaling_threshold=-1.0
        )
    tagged = stored.map_batches(
        TagPredictor,
        fn_constructor_kwargs={"models": models, "policy_of": [0], "options": options},
        batch_size=options.predict_batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            min_size=1, max_size=options.actors, initial_size=options.actors if steady_pool else 1
        ),
        num_cpus=options.cpus_per_actor,
        num_gpus=1 if options.use_gpu else 0,
        label_selector=options.model_label_selector,
        runtime_env={"env_vars": model_process_env()},
    )
    sampler, gpu = RssSampler().start(), GpuSampler().start()
    started = time.perf_counter()
    rows, first_output = 0, None
    for bundle in tagged.iter_internal_ref_bundles():  # the outputs stay in the object store
        rows += bundle.num_rows()
        first_output = first_output or time.perf_counter()
    wall = time.perf_counter() - started
    workers, gpus = sampler.stop(), gpu.stop()
    summary = tagged.get_stats_summary()
    operator = summary.operators_stats[-1]
    window = operator.time_total_s
    ray.shutdown()
    return {
        "tracks": rows,
        "patches": patches,
        "blocks": -(-rows // options.predict_batch_size),
        "actors": options.actors,
        "cpus_per_actor": options.cpus_per_actor,
        "patch_batch_size": options.patch_batch_size,
        "predict_batch_size": options.predict_batch_size,
        "use_gpu": options.use_gpu,
        "steady_pool": steady_pool,
        "ray_start_s": round(ray_start_s, 1),
        # Whole consumption, the actors' start-up included; then from the first task's
        # start to the last one's end (Ray Data's operator time).
        "wall_s": round(wall, 2),
        "first_output_s": round(first_output - started, 2) if first_output else None,
        "patches_per_s_incl_start": round(patches / wall, 2),
        "operator_s": round(window, 2),
        "patches_per_s": round(patches / window, 2),
        "tracks_per_s": round(rows / window, 3),
        "in_process": in_process,
        "ray_data": {
            **{
                f"{name}_s": _summary_dict(getattr(operator, name))
                for name in _OPERATOR_TIMES
                if getattr(operator, name) is not None
            },
            **{name: _rounded(summary.extra_metrics.get(name)) for name in _EXECUTION_METRICS},
            "streaming_exec_schedule_s": round(summary.streaming_exec_schedule_s, 3),
            "stats": summary.to_string(include_parent=False),
        },
        "workers": workers,
        **({"gpu": gpus} if gpus else {}),
        "driver_peak_rss_mb": _own_peak_rss_mb(),
        "load_avg": [load_at_start, load_average()],
    }


def _time_predictor(predictor: Callable[[pa.Table], pa.Table], blocks: list[pa.Table]) -> dict:
    """``predictor`` called on every block in this process, after one warm-up call."""
    predictor(blocks[0])
    started = time.perf_counter()
    for block in blocks:
        predictor(block)
    wall = time.perf_counter() - started
    patches = sum(_patch_count(block) for block in blocks)
    return {
        "tracks": sum(block.num_rows for block in blocks),
        "patches": patches,
        "wall_s": round(wall, 2),
        "patches_per_s": round(patches / wall, 2),
        "call_ms_per_patch": round(1000 * wall / patches, 3),
    }


def stage_tag(
    manifest: str, model_dirs: list[str], output: str, max_patches: int, device: str
) -> dict:
    """``tag_catalogue`` over ``model_dirs`` on a fresh local Ray into a fresh ``output``."""
    import ray

    from raytag.tagging import TagOptions, tag_catalogue

    load_at_start = load_average()
    ray_start_s = _start_ray(device)
    sampler, gpu = RssSampler().start(), GpuSampler().start()
    started = time.perf_counter()
    summaries = tag_catalogue(manifest, model_dirs, output, TagOptions(max_patches=max_patches))
    wall = time.perf_counter() - started
    workers, gpus = sampler.stop(), gpu.stop()
    ray.shutdown()
    attempt = summaries[0].record["attempts"][-1]
    tracks = attempt["predictions"] + attempt["errors"]
    decoding = attempt["decoding"]
    return {
        "models": [s.record["model"]["name"] for s in summaries],
        "tracks": tracks,
        "ray_start_s": round(ray_start_s, 1),
        "wall_s": round(wall, 2),
        "tracks_per_s": round(tracks / wall, 3),
        "phases_s": attempt["phases_s"],
        "decoded_tracks": decoding["tracks"],
        "decode_cpu_s": decoding["cpu_s"],
        "decode_cpu_ms_per_track": decoding["cpu_ms_per_track"],
        "exactly_once": all(s.report.ok for s in summaries),
        "errors": [s.record["attempts"][-1]["errors"] for s in summaries],
        "options": attempt["options"],
        "workers": workers,
        **({"gpu": gpus} if gpus else {}),
        "driver_peak_rss_mb": _own_peak_rss_mb(),
        "load_avg": [load_at_start, load_average()],
    }


STAGES: dict[str, Callable[..., dict]] = {
    "decode": stage_decode,
    "ceiling": stage_ceiling,
    "predecoded": stage_predecoded,
    "tag": stage_tag,
}


def _summary_dict(stats: StatsSummary) -> dict[str, float]:
    return {"mean": round(stats.mean, 4), "sum": round(stats.sum, 3), "count": stats.count}


def _rounded(value: float | None) -> float | None:
    return round(value, 3) if isinstance(value, float) else value


def run_stage(stage: str, env: dict[str, str], **kwargs) -> dict:
    """One measurement in a fresh child process, ``env`` added to its environment; its
    JSON result (the last line it prints)."""
    child = subprocess.run(
        [sys.executable, __file__, "--stage", stage],
        input=json.dumps(kwargs),
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if child.returncode:
        raise RuntimeError(f"stage {stage} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def run_stages(stage: str, env: dict[str, str], processes: int, **kwargs) -> list[dict]:
    """``stage`` in ``processes`` child processes at once, timed from a common start
    (``barrier``); their results."""
    with tempfile.TemporaryDirectory(prefix="barrier-") as parent:
        barrier = Path(parent) / f"ready-{processes}"
        barrier.mkdir()
        with ThreadPoolExecutor(processes) as pool:
            calls = [
                pool.submit(run_stage, stage, env, barrier=str(barrier), **kwargs)
                for _ in range(processes)
            ]
            return [call.result() for call in calls]


# -- the run ---------------------------------------------------------------------------


def inference_stage(
    name: str,
    files: list[str],
    work: Path,
    repeat: int,
    max_patches: int,
    device: str,
    env: dict[str, str],
) -> dict:
    """Measurement 1 for one model: decode once, ceilings, stage, ceilings again."""
    from raytag.models.inference import model_process_env

    folder = work / f"stage-{name}"
    folder.mkdir()
    common = {"model_dir": bench_model_folder(name), "device": device}
    result = {
        "decode": run_stage(
            "decode", env, files=files, folder=str(folder), max_patches=max_patches, **common
        )
    }
    options = result["decode"]["options"]
    ceiling = {
        "folder": str(folder),
        # As TagPredictor sets on CPU (and Ray's OMP_NUM_THREADS for a GPU actor).
        "threads": max(1, round(options["cpus_per_actor"])),
        "patch_batch_size": options["patch_batch_size"],
        "predict_batch_size": options["predict_batch_size"],
        "cpu_bf16": options["cpu_bf16"],
        **common,
    }
    actor_env = {**env, **model_process_env()}

    def measure_ceilings(when: str) -> None:  # one process, then as many as the pool's actors
        result[f"ceiling_{when}"] = run_stage("ceiling", actor_env, **ceiling)
        print(name, f"ceiling {when}", json.dumps(result[f"ceiling_{when}"]), flush=True)
        if options["actors"] > 1:
            pool = run_stages("ceiling", actor_env, options["actors"], **ceiling)
            result[f"pool_ceiling_{when}"] = pool
            print(name, f"pool ceiling {when}", json.dumps(pool), flush=True)

    measure_ceilings("before")
    result["stage"] = run_stage(
        "predecoded",
        actor_env,
        folder=str(folder),
        repeat=repeat,
        max_patches=max_patches,
        **common,
    )
    shown = {k: v for k, v in result["stage"].items() if k != "ray_data"}
    print(name, "stage", json.dumps(shown), flush=True)
    measure_ceilings("after")
    result["ratios"] = _stage_ratios(result)
    print(name, "ratios", json.dumps(result["ratios"]), flush=True)
    return result


def _stage_ratios(result: dict) -> dict:
    """The stage against the ceilings (means of before and after): one process's times the
    actors, and as many processes at once as the pool has actors; and the pool's time per
    patch split into where it goes."""
    stage, in_process = result["stage"], result["stage"]["in_process"]
    patches, actors = stage["patches"], stage["actors"]
    single = [result["ceiling_before"], result["ceiling_after"]]
    ceiling = _mean(c["patches_per_s"] for c in single)
    whens = ("before", "after")
    pools = [result.get(f"pool_ceiling_{w}", [c]) for w, c in zip(whens, single, strict=True)]
    # The pool's rate: every process's patches over the slowest one's wall.
    pool_rates = [
        sum(c["patches"] for c in pool) / max(c["wall_s"] for c in pool) for pool in pools
    ]
    pool_ceiling = _mean(pool_rates)
    forward = _mean(c["forward_ms_per_patch"] for c in single)
    conversion = _mean(c["int16_to_float32_ms_per_patch"] for c in single)
    cores_shared = 1000 * actors / pool_ceiling - forward
    ray_data = stage["ray_data"]
    task_ms = 1000 * ray_data["wall_time_s"]["sum"] / patches
    body_ms = 1000 * ray_data["function_body_time_s"]["sum"] / patches
    pool_ms = 1000 * actors * stage["operator_s"] / patches
    split = {
        "forward_one_process": forward,
        "forward_slower_beside_the_other_actors": cores_shared,
        "int16_to_float32": conversion,
        "rest_of_predictor_call": in_process["call_ms_per_patch"] - forward - conversion,
        "predictor_call_in_ray_beyond_that": body_ms
        - in_process["call_ms_per_patch"]
        - cores_shared,
        "ray_data_in_task_around_call": task_ms - body_ms,
        "pool_idle": pool_ms - task_ms,
    }
    return {
        "ceiling_patches_per_s": [c["patches_per_s"] for c in single],
        "pool_ceiling_patches_per_s": [round(r, 2) for r in pool_rates],
        "stage_over_actors_x_ceiling": round(stage["patches_per_s"] / (actors * ceiling), 3),
        "stage_over_pool_ceiling": round(stage["patches_per_s"] / pool_ceiling, 3),
        "stage_over_pool_ceiling_incl_start": round(
            stage["patches_per_s_incl_start"] / pool_ceiling, 3
        ),
        "in_process_predictor_over_ceiling": round(in_process["patches_per_s"] / ceiling, 3),
        # Per CPU-second, which the load of a shared machine moves less than rates.
        "stage_over_ceiling_per_cpu_s": round(
            patches / ray_data["cpu_time_s"]["sum"] / _mean(c["patches_per_cpu_s"] for c in single),
            3,
        ),
        "actor_cpu_over_task_wall": round(
            ray_data["cpu_time_s"]["sum"] / ray_data["wall_time_s"]["sum"], 3
        ),
        "ceiling_cpu_over_wall": [c["cpu_over_wall"] for c in single],
        "pool_busy_in_tasks": round(task_ms / pool_ms, 3),
        "pool_ms_per_patch": round(pool_ms, 3),
        "pool_ms_per_patch_split": {k: round(v, 3) for k, v in split.items()},
    }


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def multi_model(
    names: list[str],
    files: list[str],
    work: Path,
    max_patches: int,
    device: str,
    env: dict[str, str],
) -> dict:
    """Measurement 2: one run with every model, then one run per model."""
    folders = [bench_model_folder(name) for name in names]
    manifest = write_manifest(files, work / "multi-manifest.parquet")
    common = {"manifest": manifest, "max_patches": max_patches, "device": device}
    result = {"models": names, "tracks": len(files)}
    result["multi"] = run_stage(
        "tag", env, model_dirs=folders, output=str(work / "out-multi"), **common
    )
    print("multi-model", json.dumps(result["multi"]), flush=True)
    result["runs"] = {}
    for name, folder in zip(names, folders, strict=True):
        result["runs"][name] = run_stage(
            "tag", env, model_dirs=[folder], output=str(work / f"out-{name}"), **common
        )
        print(name, "alone", json.dumps(result["runs"][name]), flush=True)
    runs, multi = list(result["runs"].values()), result["multi"]
    n_wall = sum(r["wall_s"] for r in runs)
    n_tag = sum(r["phases_s"]["tag_s"] for r in runs)
    result["ratios"] = {
        "n_runs_wall_s": round(n_wall, 2),
        "n_runs_over_multi_wall": round(n_wall / multi["wall_s"], 3),
        "n_runs_over_multi_tag_phase": round(n_tag / multi["phases_s"]["tag_s"], 3),
        "n_runs_decode_cpu_s": round(sum(r["decode_cpu_s"] for r in runs), 2),
        "multi_decode_cpu_s": multi["decode_cpu_s"],
        "n_runs_decoded_tracks": sum(r["decoded_tracks"] for r in runs),
        "multi_decoded_tracks": multi["decoded_tracks"],
        "n_runs_ray_start_s": round(sum(r["ray_start_s"] for r in runs), 1),
    }
    print("multi-model ratios", json.dumps(result["ratios"]), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="*",
        default=["spectrogram", "waveform"],
        help="models of the inference-stage ceiling (none: skip it)",
    )
    parser.add_argument(
        "--multi-models",
        nargs="*",
        default=["spectrogram", "musicnn"],
        help="models tagged together and one by one (presets, or musicnn: that architecture "
        "with musicnn's patch policy; fewer than two: skip)",
    )
    parser.add_argument("--generated", type=int, default=16, help="generated 30-s tracks")
    parser.add_argument("--max-patches", type=int, default=32, help="raytag tag's default")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="the stage goes over the decoded inputs this many times (default: 4 on CPU, "
        "64 on a GPU, 2 with --quick)",
    )
    parser.add_argument(
        "--multi-repeat",
        type=int,
        default=None,
        help="the multi-model manifest lists the inputs this many times (default: 2, 1 with "
        "--quick)",
    )
    add_input_arguments(parser, "where the models run")
    args = parse_or_run_stage(parser, RESULTS, STAGES)
    if args is None:
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    repeat = args.repeat or (2 if args.quick else 64 if device == "cuda" else 4)
    multi_repeat = args.multi_repeat or (1 if args.quick else 2)
    # CPU: no GPU for any process, Ray's workers included (they inherit it).
    env = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
    inputs = make_inputs(args.generated, args.quick, tuple(args.full_length))
    files = [f for kind in inputs.values() for f in kind]
    print(f"{len(files)} files: " + ", ".join(f"{len(v)} {k}" for k, v in inputs.items()))
    record = {
        **new_record("pipeline", __file__, sys.argv[1:]),
        "inputs": {kind: len(paths) for kind, paths in inputs.items()},
        "device": device,
        "max_patches": args.max_patches,
        "repeat": repeat,
        "multi_repeat": multi_repeat,
        "inference_stage": {},
    }
    DATA.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pipeline-", dir=DATA))
    try:
        for name in args.models:
            record["inference_stage"][name] = inference_stage(
                name, files, work, repeat, args.max_patches, device, env
            )
            save(record, args.results)  # a later failure keeps what was measured
        if len(args.multi_models) >= 2:
            record["multi_model"] = multi_model(
                args.multi_models, files * multi_repeat, work, args.max_patches, device, env
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(record, args.results)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
