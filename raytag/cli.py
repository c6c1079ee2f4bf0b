"""The ``raytag`` command. Thin: it parses options and calls the library."""

from __future__ import annotations

import json
from typing import Any

import click

from raytag.config import AudioConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raytag")
def main() -> None:
    """Music audio auto-tagging at catalogue scale, on Ray."""


@main.command("models")
@click.option(
    "--n-tags", default=50, show_default=True, help="Output tags to count parameters for."
)
def models_command(n_tags: int) -> None:
    """List the model presets with their parameter counts."""
    from raytag.models import build_model, list_models

    width = max(map(len, list_models()))
    for name in list_models():
        model = build_model(name, n_tags=n_tags)
        count = sum(p.numel() for p in model.parameters())
        click.echo(f"{name:{width}s}  {model.arch:12s} {count:>11,d} parameters")


@main.command("decode")
@click.argument("uris", nargs=-1, required=True)
@click.option("--patch-seconds", default=3.0, show_default=True)
@click.option("--max-patches", type=int, default=None, help="K evenly spaced patches per track.")
@click.option("--max-seconds", type=float, default=None, help="Reject longer tracks.")
def decode_command(
    uris: tuple[str, ...], patch_seconds: float, max_patches: int | None, max_seconds: float | None
) -> None:
    """Decode audio as the pipeline would; print one JSON line per URI (or its error code)."""
    from raytag.audio import AudioError, decode_patches

    config = AudioConfig(
        patch_seconds=patch_seconds, max_patches=max_patches, max_seconds=max_seconds
    )
    failures = 0
    for uri in uris:
        try:
            track = decode_patches(uri, config)
        except AudioError as error:
            failures += 1
            record = {"uri": uri, "error_code": str(error.code), "message": error.message}
        else:
            record = {
                "uri": uri,
                "duration_s": round(track.duration_s, 3),
                "n_patches": int(track.patches.shape[0]),
            }
        click.echo(json.dumps(record))
    if failures:
        raise SystemExit(1)


# -- evaluation and the model registry (raytag.evaluate, raytag.registry) -------------


@main.command("evaluate")
@click.option(
    "--model", "model_uri", help="Score with this model: models:/NAME@ALIAS, runs:/..., folder."
)
@click.option(
    "--predictions",
    help="Or take the scores a complete `raytag tag` run wrote to this --output (local or "
    "s3://): how a test set too big for one process is evaluated.",
)
@click.option("--manifest", required=True, help="Labelled Parquet manifest (local or s3://).")
@click.option("--output", required=True, type=click.Path(), help="Where to write metrics.json.")
@click.option("--split", default=None, help="Only this split (train, valid, test).")
@click.option("--plots", "plots_dir", type=click.Path(), default=None, help="Write PNGs here.")
@click.option("--batch-size", default=64, show_default=True, help="Patches per forward pass.")
@click.option("--device", default="cpu", show_default=True)
def evaluate_command(
    model_uri: str | None,
    predictions: str | None,
    manifest: str,
    output: str,
    split: str | None,
    plots_dir: str | None,
    batch_size: int,
    device: str,
) -> None:
    """Per-tag and macro ROC-AUC / PR-AUC of a labelled manifest's tracks, scored here by
    --model (every patch of each track) or taken from a tagging run's --predictions (the
    patches its --max-patches chose)."""
    from raytag.evaluate import evaluate_model, evaluate_predictions, write_metrics
    from raytag.models.inference import keep_freed_memory
    from raytag.registry import load

    if (model_uri is None) == (predictions is None):
        raise click.UsageError("give exactly one of --model and --predictions")
    if predictions is not None:
        metrics = evaluate_predictions(predictions, manifest, split=split, plots_dir=plots_dir)
    else:
        keep_freed_memory()  # the forward passes run here, not in Ray's model actors
        loaded = load(model_uri, device=device)
        metrics = evaluate_model(
            loaded, manifest, split=split, plots_dir=plots_dir, batch_size=batch_size
        )
    write_metrics(metrics, output)
    summary = {k: metrics[k] for k in ("macro_roc_auc", "macro_pr_auc", "n_tracks")}
    click.echo(json.dumps({**summary, "errors": len(metrics["errors"]), "output": output}))


@main.group("registry")
def registry_group() -> None:
    """Registered models in MLflow (server from MLFLOW_TRACKING_URI)."""


@registry_group.command("log")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Registered model name.")
@click.option("--alias", default=None, help="Alias to point at the new version.")
@click.option("--experiment", default=None, help="Experiment of the run (default: Default).")
def registry_log_command(folder: str, name: str, alias: str | None, experiment: str | None) -> None:
    """Log a local model folder in a new run and register it as a new version of NAME."""
    from raytag.registry import register_folder

    info = register_folder(folder, name, alias=alias, experiment=experiment)
    click.echo(f"{name} version {info.registered_model_version} ({info.model_uri})")


@registry_group.command("alias")
@click.argument("name")
@click.argument("version", type=int)
@click.argument("alias")
def registry_alias_command(name: str, version: int, alias: str) -> None:
    """Point models:/NAME@ALIAS at VERSION."""
    from raytag.registry import set_alias

    set_alias(name, version, alias)
    click.echo(f"models:/{name}@{alias} -> version {version}")


@registry_group.command("list")
@click.argument("name", required=False)
def registry_list_command(name: str | None) -> None:
    """Registered versions, newest first, with their aliases."""
    from raytag.registry import list_versions

    for row in list_versions(name):
        aliases = ",".join(row["aliases"]) or "-"
        click.echo(f"{row['name']}\t{row['version']}\t{aliases}\t{row['run_id'] or '-'}")


# -- the labelled demo catalogue (raytag.catalogue) ------------------------------------


@main.group("catalogue")
def catalogue_group() -> None:
    """The labelled demo catalogue: MIDI arrangements rendered with FluidSynth."""


@catalogue_group.command("synth")
@click.argument("out")
@click.option("--tracks", "n_tracks", default=300, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--duration", "duration_s", default=10.0, show_default=True, help="Seconds.")
@click.option(
    "--soundfont",
    "soundfonts",
    multiple=True,
    help="SoundFonts (default: the four `make setup` installs).",
)
@click.option("--format", "formats", multiple=True, help="wav, flac, ogg, mp3 (default: all).")
@click.option("--splits", default="0.8,0.1,0.1", show_default=True, help="train,valid,test.")
@click.option("--workers", type=int, default=None, help="Parallel renders (default: cores).")
def catalogue_synth_command(
    out: str, n_tracks: int, seed: int, duration_s: float, soundfonts: tuple[str, ...],
    formats: tuple[str, ...], splits: str, workers: int | None,
) -> None:  # fmt: skip
    """Render N labelled tracks and their Parquet manifest to OUT (a folder or s3://)."""
    from raytag.catalogue import synthesize

    fractions = tuple(float(f) for f in splits.split(","))
    manifest = synthesize(
        out, n_tracks, seed, duration_s=duration_s, soundfonts=list(soundfonts) or None,
        formats=list(formats) or None, splits=fractions, workers=workers,
    )  # fmt: skip
    click.echo(manifest)


@catalogue_group.command("check")
@click.argument("out")
def catalogue_check_command(out: str) -> None:
    """Re-derive every tag from the catalogue's MIDI; exit 1 on any mismatch."""
    from raytag.catalogue import check

    problems = check(out)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"{out}: every tag matches its MIDI")


# -- training (raytag.train) ----------------------------------------------------------


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON (numbers, lists)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


@main.command("train")
@click.option("--manifest", required=True, help="Labelled Parquet manifest (local or s3://).")
@click.option("--model", default="spectrogram-small", show_default=True, help="Model preset.")
@click.option("--set", "overrides", multiple=True, help="Model config override key=value.")
@click.option(
    "--init-from",
    default=None,
    help="Start from this model (models:/NAME@ALIAS, runs:/..., a folder) instead of a fresh "
    "--model: its architecture, weights and patch settings; shared tags keep their outputs.",
)
@click.option(
    "--freeze-encoder",
    is_flag=True,
    help="Train only the dense head on the frozen encoder (transfer learning; cheap on CPU).",
)
@click.option(
    "--vocabulary",
    default=None,
    help="'demo' (the demo catalogue's 21 tags), a JSON list file, or unset for the "
    "sorted tags of the manifest.",
)
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--learning-rate", default=1e-3, show_default=True)
@click.option("--early-stopping-patience", default=5, show_default=True)
@click.option("--patches-per-track", default=1, show_default=True)
@click.option(
    "--shuffle-buffer",
    default=256,
    show_default=True,
    help="Training patches mixed in a local shuffle buffer on each worker (0: off).",
)
@click.option(
    "--cache-decoded/--no-cache-decoded",
    default=True,
    show_default=True,
    help="Keep decoded audio in Ray's object store between epochs; off: every epoch decodes "
    "only the crops it trains on, for catalogues larger than the cluster's memory.",
)
@click.option("--num-workers", default=1, show_default=True, help="Ray Train workers.")
@click.option(
    "--gpu/--no-gpu", "use_gpu", default=None, help="Default: GPUs if the cluster has any."
)
@click.option(
    "--cpu-bf16/--no-cpu-bf16",
    default=False,
    show_default=True,
    help="bf16 autocast on CPU workers too (GPU workers use it by default). A training step "
    "measured no faster with it on a CPU with AVX512-BF16 (docs/benchmarks.md).",
)
@click.option(
    "--storage-path", default="runs", show_default=True, help="Checkpoints (local or s3://)."
)
@click.option(
    "--run-name",
    default="raytag",
    show_default=True,
    help="Same name again resumes from its last checkpoint.",
)
@click.option("--max-failures", default=3, show_default=True, help="Worker failures to survive.")
@click.option("--experiment", default="raytag", show_default=True, help="MLflow experiment.")
@click.option("--registered-model", default=None, help="Register the model under this name.")
@click.option("--alias", default=None, help="Alias for the new version, e.g. champion.")
@click.option(
    "--ray-address",
    default=None,
    envvar="RAY_ADDRESS",
    help="Cluster to join (default: Ray's own choice, a local one if none runs).",
)
@click.option("--seed", default=0, show_default=True)
def train_command(
    manifest: str, model: str, overrides: tuple[str, ...], init_from: str | None,
    freeze_encoder: bool, vocabulary: str | None, epochs: int,
    batch_size: int, learning_rate: float, early_stopping_patience: int, patches_per_track: int,
    shuffle_buffer: int, cache_decoded: bool, num_workers: int, use_gpu: bool | None,
    cpu_bf16: bool,
    storage_path: str, run_name: str, max_failures: int, experiment: str,
    registered_model: str | None, alias: str | None, ray_address: str | None, seed: int,
) -> None:  # fmt: skip
    """Train with Ray Train, evaluate the test split, log to MLflow and register the model."""
    import ray

    from raytag.train import TrainConfig, run_training

    config = TrainConfig(
        manifest=manifest, model=model, model_overrides=_parse_overrides(overrides),
        init_from=init_from, freeze_encoder=freeze_encoder,
        vocabulary=_vocabulary(vocabulary), epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, early_stopping_patience=early_stopping_patience,
        patches_per_track=patches_per_track, shuffle_buffer=shuffle_buffer,
        cache_decoded=cache_decoded,
        num_workers=num_workers, use_gpu=use_gpu, cpu_bf16=cpu_bf16,
        storage_path=storage_path, run_name=run_name, max_failures=max_failures, seed=seed,
    )  # fmt: skip
    ray.init(address=ray_address)
    summary = run_training(
        config, experiment=experiment, registered_model=registered_model, alias=alias
    )
    summary.pop("metrics")
    click.echo(json.dumps(summary, default=str))


def _vocabulary(option: str | None) -> tuple[str, ...] | None:
    if option is None:
        return None
    if option == "demo":
        from raytag.catalogue import VOCABULARY

        return VOCABULARY
    with open(option) as f:
        return tuple(json.load(f))


# -- batch tagging (raytag.tagging) ----------------------------------------------------

_ray_address_option = click.option(
    "--ray-address",
    default=None,
    envvar="RAY_ADDRESS",
    help="Cluster to join (default: Ray's own choice, a local one if none runs; "
    "'local' always starts a new one).",
)


def _join_ray(address: str | None) -> None:
    """Join (or start) the cluster; inside a process already connected, use that one."""
    import ray

    ray.init(address=address, ignore_reinit_error=True)


@main.command("tag")
@click.option("--manifest", required=True, help="Parquet file, folder/prefix or glob; or s3://.")
@click.option("--model", "model_uri", required=True, help="models:/NAME@ALIAS, runs:/..., folder.")
@click.option("--output", required=True, help="Output folder (local or s3://); reruns resume.")
@click.option(
    "--max-patches",
    default=32,
    show_default=True,
    help="Evenly spaced patches per track (0: all); bounds memory for long tracks.",
)
@click.option("--top-k", default=5, show_default=True, help="Tags kept in top_tags.")
@click.option(
    "--embedding/--no-embedding", default=False, show_default=True, help="Write the embedding."
)
@click.option("--decode-batch-size", default=8, show_default=True, help="Tracks per decode task.")
@click.option(
    "--decode-actors/--no-decode-actors",
    default=None,
    help="Decode in long-lived actors, not tasks (default: actors with GPUs, tasks without).",
)
@click.option(
    "--decode-tasks",
    type=int,
    default=None,
    help="Concurrent decode tasks, or actors (default: with GPUs every CPU the model actors "
    "leave but one; without, one per 4 CPUs).",
)
@click.option(
    "--decode-cpus",
    type=float,
    default=None,
    help="CPUs a decode task reserves (default: 1 with GPUs, 0.25 on CPU-only clusters).",
)
@click.option("--decode-memory-mb", default=1024, show_default=True, help="Per decode task.")
@click.option("--predict-batch-size", default=16, show_default=True, help="Tracks per model call.")
@click.option(
    "--patch-batch-size",
    type=int,
    default=None,
    help="Patches per forward pass (default: 256 on GPU, 8 on CPU).",
)
@click.option(
    "--actors", type=int, default=None, help="Model replicas (default: one per GPU, else per CPU)."
)
@click.option(
    "--cpus-per-actor",
    type=float,
    default=None,
    help="CPUs an actor reserves; CPU actors run that many torch threads, at least 1 "
    "(default: 1 on GPU nodes; on CPU-only clusters 0.75, less on 4 CPUs or fewer so that a whole "
    "CPU stays free, 0.375 on 2: one single-threaded replica per core).",
)
@click.option(
    "--gpu/--no-gpu", "use_gpu", default=None, help="Default: GPUs if the cluster has any."
)
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast on GPU.")
@click.option(
    "--cpu-bf16/--no-cpu-bf16",
    default=False,
    show_default=True,
    help="bf16 autocast on CPU actors too: faster on CPUs with bf16 units (AVX512-BF16, AMX), "
    "likely slower elsewhere (not measured); scores move by up to ~0.03 (docs/benchmarks.md).",
)
@click.option(
    "--compile/--no-compile",
    default=False,
    show_default=True,
    help="torch.compile the model in each actor (7-70 s to compile; see docs/benchmarks.md).",
)
@click.option("--rows-per-file", default=1000, show_default=True, help="Rows per write task.")
@click.option(
    "--rows-per-execution",
    type=int,
    default=None,
    help="Pending rows per Ray Data execution; bounds the driver's memory (default: 12,500 "
    "per CPU, at most 1,000,000).",
)
@_ray_address_option
def tag_command(
    manifest: str, model_uri: str, output: str, max_patches: int, top_k: int, embedding: bool,
    decode_batch_size: int, decode_actors: bool | None, decode_tasks: int | None,
    decode_cpus: float | None, decode_memory_mb: int, predict_batch_size: int,
    patch_batch_size: int | None,
    actors: int | None, cpus_per_actor: float | None,
    use_gpu: bool | None, bf16: bool, cpu_bf16: bool, compile: bool, rows_per_file: int,
    rows_per_execution: int | None, ray_address: str | None,
) -> None:  # fmt: skip
    """Tag a catalogue: predictions/ and errors/ Parquet, exactly once; reruns resume."""
    from raytag.manifest import ManifestError
    from raytag.tagging import IncompleteRunError, TagError, TagOptions, tag_catalogue

    options = TagOptions(
        max_patches=max_patches or None, top_k=top_k, embedding=embedding,
        decode_batch_size=decode_batch_size, decode_actors=decode_actors,
        decode_tasks=decode_tasks, decode_cpus=decode_cpus, decode_memory_mb=decode_memory_mb,
        predict_batch_size=predict_batch_size,
        patch_batch_size=patch_batch_size, actors=actors, cpus_per_actor=cpus_per_actor,
        use_gpu=use_gpu, bf16=bf16, cpu_bf16=cpu_bf16, compile=compile,
        rows_per_file=rows_per_file, rows_per_execution=rows_per_execution,
    )  # fmt: skip
    _join_ray(ray_address)
    try:
        summary = tag_catalogue(manifest, model_uri, output, options)
    except (ManifestError, TagError, IncompleteRunError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(summary.line())


@main.command("verify")
@click.option("--manifest", required=True, help="The run's manifest.")
@click.option("--output", required=True, help="The run's output folder.")
@_ray_address_option
def verify_command(manifest: str, output: str, ray_address: str | None) -> None:
    """Check a tagging run: every manifest row in exactly one output row (exit 1 if not)."""
    from raytag.manifest import ManifestError
    from raytag.tagging import verify

    _join_ray(ray_address)
    try:
        report = verify(manifest, output)
    except ManifestError as error:
        raise click.ClickException(str(error)) from error
    click.echo(report.describe())
    if not report.ok:
        raise SystemExit(1)


# -- the demo (raytag.demo) ----------------------------------------------------------------


@main.command("demo")
@click.option("--workdir", default="demo", show_default=True, help="Everything goes here.")
@click.option("--tracks", "n_tracks", default=300, show_default=True, help="Labelled tracks.")
@click.option("--duration", "duration_s", default=8.0, show_default=True, help="Seconds each.")
@click.option("--epochs", default=15, show_default=True)
@click.option("--model", default="spectrogram-small", show_default=True, help="Model preset.")
@click.option("--real-tracks", default=8, show_default=True, help="Real music tracks to tag.")
@click.option("--max-patches", default=8, show_default=True, help="Patches per tagged track.")
@click.option(
    "--keep-mlflow", is_flag=True, help="Leave the MLflow server running to browse its UI."
)
@click.option("--retrain", is_flag=True, help="Train anew even if the champion matches.")
@click.option("--mlflow-port", type=int, default=None, help="Default: 5000 if free, else any.")
@click.option("--cpus", "num_cpus", type=int, default=None, help="Ray CPUs (default: all).")
def demo_command(
    workdir: str, n_tracks: int, duration_s: float, epochs: int, model: str, real_tracks: int,
    max_patches: int, keep_mlflow: bool, retrain: bool, mlflow_port: int | None,
    num_cpus: int | None,
) -> None:  # fmt: skip
    """The whole product on this machine: local MLflow and Ray, a labelled catalogue,
    training, registry, tagging of real music, and a report. A second run reuses what exists."""
    from raytag.demo import format_report, run_demo

    report = run_demo(
        workdir, n_tracks=n_tracks, duration_s=duration_s, epochs=epochs, model=model,
        real_tracks=real_tracks, max_patches=max_patches, keep_mlflow=keep_mlflow,
        retrain=retrain, mlflow_port=mlflow_port, num_cpus=num_cpus,
    )  # fmt: skip
    click.echo(format_report(report))


# -- pretrained models from elsewhere (raytag.importers) ---------------------------------


@main.group("import")
def import_group() -> None:
    """Import pretrained taggers as raytag models (no TensorFlow needed)."""


@import_group.command("musicnn")
@click.option(
    "--wheel",
    type=click.Path(exists=True),
    default=None,
    help="The musicnn 0.1.0 wheel, an unpacked one, or its musicnn/ folder "
    "(default: fetched with `pip download --no-deps` into the cache).",
)
@click.option("--cache-dir", default=None, help="Default: $RAYTAG_CACHE or ~/.cache/raytag.")
@click.option(
    "--model", "keys", multiple=True, type=click.Choice(["mtt", "msd"]), help="Default: both."
)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Keep folders here.")
@click.option("--register/--no-register", default=True, show_default=True, help="In MLflow.")
@click.option("--alias", default="champion", show_default=True, help="Alias of the new version.")
@click.option("--experiment", default="musicnn-import", show_default=True)
@click.option("--download-only", is_flag=True, help="Only fetch the wheel into the cache.")
def import_musicnn_command(
    wheel: str | None, cache_dir: str | None, keys: tuple[str, ...], out: str | None,
    register: bool, alias: str, experiment: str, download_only: bool,
) -> None:  # fmt: skip
    """musicnn's MTT and MSD taggers as musicnn-mtt and musicnn-msd, registered in MLflow
    (MLFLOW_TRACKING_URI) with their 50-tag vocabularies and musicnn's own patching."""
    import tempfile
    from pathlib import Path

    from raytag.importers import musicnn

    if wheel is None:
        wheel = str(musicnn.ensure_wheel(cache_dir))
    elif Path(wheel).is_file():
        musicnn.check_wheel(wheel)
    if download_only:
        click.echo(wheel)
        return
    if not register and out is None:
        raise click.UsageError("--no-register needs --out to keep the model folders")
    with tempfile.TemporaryDirectory(prefix="raytag-musicnn-") as tmp:
        try:
            folders = musicnn.write_model_folders(wheel, out or tmp, keys or ("mtt", "msd"))
        except musicnn.CheckpointError as error:
            raise click.ClickException(str(error)) from error
        for folder in folders.values():
            record = {"name": folder.name, "folder": str(folder) if out else None}
            if register:
                from raytag.registry import register_folder

                info = register_folder(folder, folder.name, alias=alias, experiment=experiment)
                record["version"] = info.registered_model_version
                record["uri"] = f"models:/{folder.name}@{alias}"
            click.echo(json.dumps(record))


if __name__ == "__main__":
    main()
