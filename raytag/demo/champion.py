"""The demo's model: trained with Ray Train, evaluated, registered as ``@champion``; or the
champion an earlier demo trained with the same settings on the same catalogue, reused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, replace
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


def train_or_reuse(config: TrainConfig, workdir: Path, retrain: bool, say: Clock) -> ModelRecord:
    """The champion, trained now or reused when an earlier demo trained it the same way."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from raytag.train import run_training

    client = mlflow.MlflowClient()
    fingerprint = _fingerprint(config)
    if not retrain:
        try:
            champion = client.get_model_version_by_alias(REGISTERED_MODEL, ALIAS)
            run = client.get_run(champion.run_id)
        except MlflowException:
            champion = run = None
        if run is not None and run.data.tags.get(FINGERPRINT_TAG) == fingerprint:
            say(f"training: reusing {REGISTERED_MODEL} version {champion.version} "
                f"(@{ALIAS}, same settings and catalogue; --retrain trains anew)")  # fmt: skip
            return _model_record(client, champion.version, run.info.run_id, workdir, reused=True)

    run_name = _run_name(fingerprint, workdir / "runs", retrain)
    config = replace(config, run_name=run_name)
    say(f"training: {config.model} for up to {config.epochs} epochs with Ray Train "
        f"(run {run_name}; epochs are reported as they finish) ...")  # fmt: skip
    with EpochWatcher(client, EXPERIMENT, run_name, config.epochs, say):
        trained = run_training(
            config, experiment=EXPERIMENT, registered_model=REGISTERED_MODEL, alias=ALIAS
        )
    client.set_tag(trained.run_id, FINGERPRINT_TAG, fingerprint)
    say(f"training: registered {REGISTERED_MODEL} version {trained.version} as @{ALIAS}; "
        f"test macro ROC-AUC {fmt(trained.test_macro_roc_auc)}")  # fmt: skip
    return _model_record(client, trained.version, trained.run_id, workdir, reused=False)


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


def _model_record(
    client: MlflowClient, version: str, run_id: str, workdir: Path, *, reused: bool
) -> ModelRecord:
    """The registered version, its training run and its test evaluation (from MLflow, the
    same whether trained now or reused)."""
    run = client.get_run(run_id)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    metrics, plots = _download_evaluation(run_id, workdir)
    return ModelRecord(
        name=REGISTERED_MODEL,
        version=str(version),
        uri=f"models:/{REGISTERED_MODEL}@{ALIAS}",
        reused=reused,
        run_id=run_id,
        arch=run.data.params.get("model"),
        epochs=len(client.get_metric_history(run_id, "val_loss")),
        run_url=f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}",
        model_url=f"{uri}/#/models/{REGISTERED_MODEL}/versions/{version}",
        metrics=metrics,
        plots=str(plots),
    )


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
