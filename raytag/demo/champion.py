"""The demo's model: trained with Ray Train, evaluated and registered, or the version an
earlier demo trained with the same settings on the same catalogue, reused. Either is the
candidate that :mod:`raytag.demo.gate` promotes to ``@champion``, or not."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from raytag.demo.progress import Clock, EpochWatcher
from raytag.demo.report import ModelRecord, fmt

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from raytag.evaluate import Evaluation
    from raytag.train import TrainConfig

EXPERIMENT = "raytag-demo"
REGISTERED_MODEL = "raytag-demo"
ALIAS = "champion"
FINGERPRINT_TAG = "raytag.demo.fingerprint"


@dataclass(frozen=True)
class Candidate:
    """The version this run puts forward, and the champion it has to beat."""

    version: str
    reused: bool  # trained by an earlier demo with the same settings and catalogue
    champion: str | None  # the version holding @champion before this run; None: none does


def train_or_reuse(config: TrainConfig, workdir: Path, retrain: bool, say: Clock) -> Candidate:
    """The version an earlier demo trained the same way (the champion when it is that
    one), or one trained and registered now, without the alias."""
    import mlflow

    from raytag.train import run_training

    client = mlflow.MlflowClient()
    fingerprint = _fingerprint(config)
    champion = _champion(client)
    earlier = None if retrain else _trained_with(client, fingerprint, champion)
    if earlier is not None:
        role = f"@{ALIAS}" if earlier == champion else f"not @{ALIAS}"
        say(f"training: reusing {REGISTERED_MODEL} version {earlier} ({role}; same settings "
            f"and catalogue; --retrain trains anew)")  # fmt: skip
        return Candidate(earlier, reused=True, champion=champion)

    run_name = _run_name(fingerprint, workdir / "runs", retrain)
    config = replace(config, run_name=run_name)
    recipe = _recipe(config.model, config.init_from, config.freeze_encoder)
    say(f"training: {recipe} for up to {config.epochs} epochs with Ray Train "
        f"(run {run_name}; epochs are reported as they finish) ...")  # fmt: skip
    with EpochWatcher(client, EXPERIMENT, run_name, config.epochs, say):
        trained = run_training(config, experiment=EXPERIMENT, registered_model=REGISTERED_MODEL)
    client.set_tag(trained.run_id, FINGERPRINT_TAG, fingerprint)
    say(f"training: registered {REGISTERED_MODEL} version {trained.version}; test macro "
        f"ROC-AUC {fmt(trained.test_macro_roc_auc)}")  # fmt: skip
    return Candidate(str(trained.version), reused=False, champion=champion)


def _champion(client: MlflowClient) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(REGISTERED_MODEL, ALIAS).version)
    except MlflowException:  # no such model yet, or no version holds the alias
        return None


def _trained_with(client: MlflowClient, fingerprint: str, champion: str | None) -> str | None:
    """The registered version whose training run carries ``fingerprint``: the champion
    when it does, else the newest such version; None when there is none."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
    )
    run_ids = {run.info.run_id for run in runs}
    versions = [str(v.version) for v in client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
                if v.run_id in run_ids]  # fmt: skip
    if champion in versions:
        return champion
    return max(versions, key=int, default=None)


def _fingerprint(config: TrainConfig) -> str:
    """What the trained model depends on: the training settings and the catalogue's own
    parameters (stored in its manifest), so a changed catalogue means a new model."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("run_name", "max_failures")}
    metadata = pq.read_schema(config.manifest).metadata or {}
    settings["catalogue"] = {k.decode(): v.decode() for k, v in metadata.items()
                             if k.startswith(b"raytag")}  # fmt: skip
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _run_name(fingerprint: str, storage: Path, retrain: bool) -> str:
    """``demo-<fingerprint>``, so an interrupted training resumes from its checkpoints; a
    fresh name when that run already finished (a retrain) or lost its MLflow run."""
    from raytag.registry import find_runs

    name = f"demo-{fingerprint}"
    runs = find_runs(EXPERIMENT, name)
    finished = any(run.info.status == "FINISHED" for run in runs)
    if finished or (retrain and (runs or (storage / name).exists())):
        return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not runs and (storage / name).exists():
        shutil.rmtree(storage / name)  # checkpoints whose MLflow run is gone: start over
    return name


def model_record(version: str, workdir: Path, *, reused: bool) -> ModelRecord:
    """The champion's registered version, its training run and its test evaluation (from
    MLflow, the same whether trained now or earlier)."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = client.get_model_version(REGISTERED_MODEL, version).run_id
    run = client.get_run(run_id)
    metrics, plots = _download_evaluation(run_id, workdir)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    return ModelRecord(
        name=REGISTERED_MODEL,
        version=version,
        uri=f"models:/{REGISTERED_MODEL}@{ALIAS}",
        reused=reused,
        run_id=run_id,
        recipe=_run_recipe(run.data.params),
        epochs=len(client.get_metric_history(run_id, "val_loss")),
        run_url=run_url(run_id),
        model_url=f"{uri}/#/models/{REGISTERED_MODEL}/versions/{version}",
        metrics=metrics,
        plots=str(plots),
    )


def _recipe(model: str | None, init_from: str | None, frozen: bool) -> str | None:
    """How a model is made: a preset from scratch, or a warm start (and whether its encoder
    is frozen)."""
    if init_from is None:
        return model
    return f"warm start from {init_from}{', encoder frozen' if frozen else ''}"


def _run_recipe(params: dict[str, str]) -> str | None:
    """:func:`_recipe` from a training run's MLflow params (strings)."""
    start = params.get("init_from")
    frozen = params.get("freeze_encoder") == "True"
    return _recipe(params.get("model"), None if start == "None" else start, frozen)


def run_url(run_id: str) -> str:
    """Where the MLflow UI shows the run."""
    import mlflow

    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    return f"{os.environ['MLFLOW_TRACKING_URI']}/#/experiments/{experiment_id}/runs/{run_id}"


def _download_evaluation(run_id: str, workdir: Path) -> tuple[Evaluation, Path]:
    """The run's test evaluation (metrics.json and the four plots) into
    workdir/report/evaluation/test, so the report can point at plain files."""
    import mlflow

    from raytag.evaluate import Evaluation

    target = workdir / "report" / "evaluation"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="evaluation/test", dst_path=str(target)
        )
    )
    return Evaluation.from_dict(json.loads((folder / "metrics.json").read_text())), folder
