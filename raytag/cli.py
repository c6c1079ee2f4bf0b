"""The ``raytag`` command. Thin: it parses options and calls the library."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import click

from raytag.cluster import join, ray_address_option
from raytag.config import AudioConfig
from raytag.plan import plan
from raytag.settings import SettingsCommand, build

S = TypeVar("S")

labelled_manifest_option = click.option(
    "--manifest", required=True, help="Labelled Parquet manifest (local or s3://)."
)


def _built(settings: type[S], given: dict[str, Any]) -> S:
    """The settings dataclass of a command's parsed options; a bad value is a usage error,
    not a traceback."""
    try:
        return build(settings, given)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


class _RaytagGroup(click.Group):
    """Whichever command meets the MLflow server's refusal (no, wrong or too weak
    credentials), the user reads one line naming the server and what to set."""

    def invoke(self, ctx: click.Context) -> Any:
        from raytag.tracking import access_error

        try:
            return super().invoke(ctx)
        except Exception as error:
            refused = access_error(error)
            if refused is None:
                raise
            raise click.ClickException(str(refused)) from error


@click.group(cls=_RaytagGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raytag")
def main() -> None:
    """Music audio auto-tagging at catalogue scale, on Ray."""


main.add_command(plan)  # raytag plan: capacity from measured costs


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
    help="Or take the scores a complete `raytag tag` run wrote to this model folder "
    "(OUTPUT/NAME-vVERSION, local or s3://): how a test set too big for one process is "
    "evaluated.",
)
@labelled_manifest_option
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
    from raytag.evaluate.metrics import MACRO_DECISION_KEYS
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
    summary = {"macro_roc_auc": metrics.macro_roc_auc, "macro_pr_auc": metrics.macro_pr_auc}
    if metrics.at_thresholds:  # the model's thresholds: what its tags are worth
        summary |= {key: getattr(metrics, key) for key in MACRO_DECISION_KEYS}
    summary |= {"n_tracks": metrics.n_tracks, "errors": len(metrics.errors), "output": output}
    click.echo(json.dumps(summary))


@main.command("calibrate")
@click.option(
    "--model",
    "model_uri",
    required=True,
    help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., folder.",
)
@labelled_manifest_option
@click.option("--split", default="valid", show_default=True, help="The split to calibrate on.")
@click.option(
    "--rule",
    default="max_f1",
    show_default=True,
    help="max_f1 (each tag's best F1) or precision (the most recall at --target-precision).",
)
@click.option("--target-precision", type=float, default=None, help="For --rule precision.")
@click.option(
    "--register",
    "registered_model",
    default=None,
    help="Register the calibrated model as a new version of this name (default: NAME of a "
    "models:/NAME... --model).",
)
@click.option("--alias", default=None, help="Alias for the new version, e.g. challenger.")
@click.option("--experiment", default="raytag", show_default=True, help="MLflow experiment.")
@click.option("--batch-size", default=64, show_default=True, help="Patches per forward pass.")
@click.option("--device", default="cpu", show_default=True)
def calibrate_command(
    model_uri: str, manifest: str, split: str, rule: str, target_precision: float | None,
    registered_model: str | None, alias: str | None, experiment: str, batch_size: int,
    device: str,
) -> None:  # fmt: skip
    """Choose each tag's decision threshold on a labelled split and register the model with
    them as a new version (MLflow from MLFLOW_TRACKING_URI); print the thresholds."""
    from mlflow.exceptions import MlflowException

    from raytag.evaluate import calibrate_model
    from raytag.models.inference import keep_freed_memory

    keep_freed_memory()  # the forward passes run here, not in Ray's model actors
    try:
        done = calibrate_model(
            model_uri, manifest, split=split, rule=rule, target_precision=target_precision,
            registered_model=registered_model, alias=alias, experiment=experiment,
            device=device, batch_size=batch_size,
        )  # fmt: skip
    except (ValueError, MlflowException) as error:
        raise click.ClickException(str(error)) from error
    click.echo(done.calibration.format_table())
    aliased = f" (@{alias})" if alias else ""
    click.echo(f"registered {done.name} version {done.version}{aliased}: {done.model_uri}")


@main.command(
    "compare", cls=SettingsCommand, settings="raytag.tagging:TagOptions", before="ray_address"
)
@click.option(
    "--baseline",
    "baseline_uri",
    required=True,
    help="The model serving now: models:/NAME@champion, models:/NAME/VERSION, runs:/..., folder.",
)
@click.option(
    "--candidate",
    "candidate_uri",
    required=True,
    help="The model that would replace it, e.g. models:/NAME@challenger or models:/NAME/VERSION.",
)
@labelled_manifest_option
@click.option("--split", default=None, help="Only this split (e.g. test); default: every row.")
@click.option(
    "--output",
    default=None,
    help="Keep both models' tagging outputs here (local or s3://), one folder per manifest "
    "and split; a rerun reuses them. Default: a temporary folder, which the nodes of a "
    "multi-node cluster cannot share.",
)
@click.option("--resamples", default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap.")
@click.option(
    "--experiment", default="raytag-compare", show_default=True, help="MLflow experiment."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the comparison record here.",
)
@ray_address_option
def compare_command(
    baseline_uri: str, candidate_uri: str, manifest: str, split: str | None, output: str | None,
    resamples: int, seed: int, experiment: str, json_path: str | None, ray_address: str | None,
    **settings: Any,
) -> None:  # fmt: skip
    """Score two models on the same labelled tracks (each decoded once), their per-tag and
    macro ROC-AUC / PR-AUC differences with paired bootstrap 95% intervals, how often their
    decided tags agree, and a verdict (worse: the macro ROC-AUC difference's interval lies
    below 0; better: above; else inconclusive); logged to MLflow as a comparison run."""
    from pathlib import Path

    from raytag.evaluate.compare import compare_models, format_comparison
    from raytag.tagging import IncompleteRunError, TagError, TagOptions

    options = _built(TagOptions, settings)
    join(ray_address)
    try:
        comparison = compare_models(
            baseline_uri, candidate_uri, manifest, split=split, output=output, options=options,
            resamples=resamples, seed=seed, experiment=experiment,
        )  # fmt: skip
    except (ValueError, TagError, IncompleteRunError) as error:  # ManifestError is a ValueError
        raise click.ClickException(str(error)) from error
    if json_path is not None:
        Path(json_path).write_text(json.dumps(comparison.to_dict(), indent=2) + "\n")
    click.echo(format_comparison(comparison))


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


@registry_group.command("promote")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--alias", default="champion", show_default=True, help="The alias to move.")
@click.option(
    "--force", is_flag=True, help="Promote even without a comparison, or when it says worse."
)
@click.option(
    "--manifest",
    default=None,
    help="First compare VERSION with the alias's holder on this labelled manifest, as "
    "raytag compare does (on Ray).",
)
@click.option("--split", default=None, help="With --manifest: only this split (e.g. test).")
@click.option("--output", default=None, help="With --manifest: as raytag compare --output.")
@ray_address_option
def registry_promote_command(
    name: str, version: int, alias: str, force: bool, manifest: str | None, split: str | None,
    output: str | None, ray_address: str | None,
) -> None:  # fmt: skip
    """Point models:/NAME@ALIAS at VERSION, unless its comparison with the version holding
    the alias (raytag compare, or --manifest) says it is worse, or there is none: --force
    overrides. An alias nobody holds needs no comparison."""
    from mlflow.exceptions import MlflowException

    from raytag.promotion import PromotionRefused, alias_holder, promote

    if manifest is None and (split or output):
        raise click.UsageError("--split and --output go with --manifest")
    try:
        holder = alias_holder(name, alias)
        if manifest is not None and holder not in (None, str(version)):
            from raytag.evaluate.compare import compare_models, format_comparison
            from raytag.tagging import IncompleteRunError, TagError

            join(ray_address)
            try:
                comparison = compare_models(
                    f"models:/{name}/{holder}", f"models:/{name}/{version}", manifest,
                    split=split, output=output,
                )  # fmt: skip
            except (ValueError, TagError, IncompleteRunError) as error:
                raise click.ClickException(str(error)) from error
            click.echo(format_comparison(comparison))
        promotion = promote(name, version, alias, force=force)
    except (PromotionRefused, MlflowException) as error:
        raise click.ClickException(str(error)) from error
    click.echo(promotion.line())


# The model card's tags `registry list` prints (raytag.model_card.CARD_TAGS).
CARD_COLUMNS = ("arch", "n_tags", "test_macro_roc_auc", "calibrated")


@registry_group.command("list")
@click.argument("name", required=False)
def registry_list_command(name: str | None) -> None:
    """Registered versions, newest first: name, version, aliases, run, then from the model
    card arch, number of tags, test macro ROC-AUC, calibrated (- when unknown)."""
    from raytag.registry import list_versions

    for row in list_versions(name):
        aliases = ",".join(row["aliases"]) or "-"
        card = [row["tags"].get(key, "-") for key in CARD_COLUMNS]
        fields = [row["name"], str(row["version"]), aliases, row["run_id"] or "-", *card]
        click.echo("\t".join(fields))


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
# The options of `train` and `tag` are the fields of TrainConfig and TagOptions
# (raytag.settings): their defaults and help live there, once.


@main.command(
    "train", cls=SettingsCommand, settings="raytag.train:TrainConfig", before="experiment"
)
@click.option("--experiment", default="raytag", show_default=True, help="MLflow experiment.")
@click.option("--registered-model", default=None, help="Register the model under this name.")
@click.option("--alias", default=None, help="Alias for the new version, e.g. champion.")
@ray_address_option
def train_command(
    experiment: str, registered_model: str | None, alias: str | None, ray_address: str | None,
    **settings: Any,
) -> None:  # fmt: skip
    """Train with Ray Train, evaluate the test split, log to MLflow and register the model."""
    from raytag.manifest import ManifestError
    from raytag.train import TrainConfig, TrainingError, run_training

    config = _built(TrainConfig, settings)
    join(ray_address)
    try:
        summary = run_training(
            config, experiment=experiment, registered_model=registered_model, alias=alias
        )
    except (ManifestError, TrainingError) as error:  # what to do next is in the message
        raise click.ClickException(str(error)) from error
    printed = summary.to_dict()
    del printed["metrics"]  # in MLflow, under evaluation/test
    click.echo(json.dumps(printed, default=str))


# -- batch tagging (raytag.tagging) ----------------------------------------------------


@main.command(
    "tag", cls=SettingsCommand, settings="raytag.tagging:TagOptions", before="ray_address"
)
@click.option("--manifest", required=True, help="Parquet file, folder/prefix or glob; or s3://.")
@click.option(
    "--model",
    "model_uris",
    required=True,
    multiple=True,
    help="models:/NAME@ALIAS, runs:/..., folder; repeat it to tag with several models, "
    "each track decoded once.",
)
@click.option(
    "--output",
    required=True,
    help="Output folder (local or s3://), one NAME-vVERSION folder per model in it; reruns "
    "resume, and a model added later tags only its rows.",
)
@ray_address_option
def tag_command(
    manifest: str,
    model_uris: tuple[str, ...],
    output: str,
    ray_address: str | None,
    **settings: Any,
) -> None:
    """Tag a catalogue with one or more models: per model, predictions/ and errors/
    Parquet, exactly once; reruns resume."""
    from raytag.manifest import ManifestError
    from raytag.tagging import IncompleteRunError, TagError, TagOptions, tag_catalogue

    options = _built(TagOptions, settings)
    join(ray_address)
    try:
        summaries = tag_catalogue(manifest, list(model_uris), output, options)
    # FileNotFoundError: a --model folder that is not there, or not a raytag model.
    except (ManifestError, TagError, IncompleteRunError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    for summary in summaries:
        click.echo(summary.line())


@main.command("verify")
@click.option("--manifest", required=True, help="The run's manifest.")
@click.option(
    "--output",
    required=True,
    help="The run's --output (every model in it), or one model's folder in it.",
)
@ray_address_option
def verify_command(manifest: str, output: str, ray_address: str | None) -> None:
    """Check a tagging run: every manifest row in exactly one output row of each model,
    and each prediction row's tags those its scores and the folder's thresholds.json give
    (exit 1 if not)."""
    from raytag.manifest import ManifestError
    from raytag.tagging import verify
    from raytag.tagging.output import model_outputs, read_run

    join(ray_address)
    folders = [output] if read_run(output) is not None else model_outputs(output)
    if not folders:
        raise click.ClickException(f"{output} holds no tagging run")
    ok = True
    for folder in folders:
        try:
            report = verify(manifest, folder)
        except ManifestError as error:
            raise click.ClickException(str(error)) from error
        click.echo(f"{folder}: {report.describe()}")
        ok = ok and report.ok
    if not ok:
        raise SystemExit(1)


# -- the demo (raytag.demo) ----------------------------------------------------------------


@main.command("demo", cls=SettingsCommand, settings="raytag.demo.settings:DemoSettings")
@click.option("--workdir", default="demo", show_default=True, help="Everything goes here.")
@click.option(
    "--keep-mlflow", is_flag=True, help="Leave the MLflow server running to browse its UI."
)
@click.option(
    "--retrain", is_flag=True, help="Train anew even if a version with these settings exists."
)
@click.option("--mlflow-port", type=int, default=None, help="Default: 5000 if free, else any.")
@click.option("--cpus", "num_cpus", type=int, default=None, help="Ray CPUs (default: all).")
def demo_command(
    workdir: str, keep_mlflow: bool, retrain: bool, mlflow_port: int | None,
    num_cpus: int | None, **settings: Any,
) -> None:  # fmt: skip
    """The whole product on this machine: local MLflow and Ray, a labelled catalogue,
    training, registry, tagging of real music, and a report. A second run reuses what exists."""
    from raytag.demo import DemoSettings, format_report, run_demo

    report = run_demo(
        workdir, _built(DemoSettings, settings), keep_mlflow=keep_mlflow, retrain=retrain,
        mlflow_port=mlflow_port, num_cpus=num_cpus,
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

    try:
        if wheel is None:
            wheel = str(musicnn.ensure_wheel(cache_dir))
        elif Path(wheel).is_file():
            musicnn.check_wheel(wheel)
    except musicnn.CheckpointError as error:  # not musicnn's wheel
        raise click.ClickException(str(error)) from error
    if download_only:
        click.echo(wheel)
        return
    if not register and out is None:
        raise click.UsageError("--no-register needs --out to keep the model folders")
    with tempfile.TemporaryDirectory(prefix="raytag-musicnn-") as tmp:
        try:
            folders = musicnn.write_model_folders(wheel, out or tmp, keys or ("mtt", "msd"))
        except (musicnn.CheckpointError, FileNotFoundError) as error:  # no musicnn there
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
