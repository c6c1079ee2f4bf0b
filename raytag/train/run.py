"""The driver: fit with Ray Train (or resume), pick the best checkpoint, calibrate its
per-tag thresholds on the valid split, evaluate it at them on the test split, and track the
run and the registered model (thresholds included) in MLflow."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import train
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
    WorkerGroupError,
)
from ray.train.torch import TorchTrainer

from raytag import storage
from raytag.checkpoint import load_model
from raytag.models.inference import model_process_env
from raytag.train.config import TrainConfig, initial_model
from raytag.train.data import build_datasets, manifest_vocabulary
from raytag.train.loop import train_loop_per_worker

if TYPE_CHECKING:
    from raytag.evaluate import Evaluation


class TrainingError(RuntimeError):
    """Ray Train gave up on a run: its workers failed more often than ``max_failures``
    allows, or its controller failed. The run's checkpoints stay; the same run name
    resumes from the last one."""


def uses_gpu(config: TrainConfig) -> bool:
    """Whether the fit's workers take a GPU each: as configured, else when the cluster has any."""
    if config.use_gpu is not None:
        return config.use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0


def fit(
    config: TrainConfig, mlflow_tracking_uri: str | None = None, mlflow_run_id: str | None = None
) -> train.Result:
    """Run (or resume, when ``run_name`` already has checkpoints) a Ray Train fit.

    Raises :class:`TrainingError` when Ray Train gives up on the run."""
    vocabulary = list(config.vocabulary or manifest_vocabulary(config.manifest))
    use_gpu = uses_gpu(config)
    storage_fs, storage_path = _run_storage(config.storage_path)
    start = initial_model(config, vocabulary)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": asdict(config),
            "vocabulary": vocabulary,
            "initial_model": start,
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "mlflow_run_id": mlflow_run_id,
        },
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=(
                None if config.cpus_per_worker is None else {"CPU": config.cpus_per_worker}
            ),  # with use_gpu, Ray Train adds a GPU to it
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            worker_runtime_env={"env_vars": model_process_env()},  # malloc keeps freed memory
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.keep_checkpoints,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
        ),
        datasets=build_datasets(config, vocabulary, start.audio),
    )
    try:
        return trainer.fit()
    except TrainingFailedError as error:
        raise TrainingError(_failure_message(config, error)) from error


def _failure_message(config: TrainConfig, error: TrainingFailedError) -> str:
    """What failed, in a few lines rather than Ray's tracebacks (chained below), and what
    to do next."""
    failures = [error, *getattr(error, "worker_failures", {}).values()]
    unreachable = next(filter(None, map(storage.unreachable, failures)), None)
    if unreachable is not None:  # no worker's fault: more max_failures would not help
        return (
            f"training run {config.run_name!r} stopped: object storage "
            f"({storage.s3_endpoint() or 'AWS S3'}) stopped answering, after "
            f"{storage.s3_max_attempts()} attempts per request (AWS_MAX_ATTEMPTS): "
            f"{unreachable}. Its checkpoints stay in {config.storage_path}/{config.run_name}: "
            "once the storage answers, run it again with the same --run-name to resume from "
            "the last one."
        )
    if isinstance(error, WorkerGroupError):
        ranks = "; ".join(
            f"rank {rank}: {_first_line(failure)}"
            for rank, failure in sorted(error.worker_failures.items())
        )
        what = (
            f"its workers failed {config.max_failures + 1} time(s), more than max_failures="
            f"{config.max_failures} allows; the last failure: {ranks}"
        )
    else:
        what = _first_line(error)
    return (
        f"training run {config.run_name!r} stopped: {what}. Its checkpoints stay in "
        f"{config.storage_path}/{config.run_name}: run it again with the same --run-name to "
        "resume from the last one, and raise --max-failures to survive more worker losses."
    )


def _first_line(error: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:limit]}"


def _run_storage(storage_path: str):
    """Local folders go to Ray as absolute paths; object storage as a pyarrow filesystem
    (which carries the S3 endpoint and credentials from the environment)."""
    if storage.is_local(storage_path):
        return None, str(Path(storage.local_path(storage_path)).resolve())
    return storage.arrow_filesystem(storage_path)


def best_checkpoint(result: train.Result) -> Checkpoint:
    if result.best_checkpoints:
        return min(result.best_checkpoints, key=lambda pair: pair[1]["val_loss"])[0]
    if result.checkpoint is None:
        raise RuntimeError("training produced no checkpoint")
    return result.checkpoint


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`run_training` did: the MLflow run, the registered version, its thresholds,
    the test split's evaluation at them and where Ray Train kept the checkpoints."""

    run_id: str
    epochs: int | None
    best_val_loss: float | None
    test_macro_roc_auc: float | None
    test_macro_pr_auc: float | None
    test_macro_f1: float | None  # at the thresholds
    model_uri: str
    registered_model: str | None
    version: str | None
    alias: str | None
    checkpoint_path: str
    thresholds: dict[str, Any]  # Thresholds.to_dict: {"values": {tag: threshold}, "policy"}
    metrics: Evaluation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, keys in field order; ``metrics`` as metrics.json holds it."""
        return asdict(self) | {"metrics": self.metrics.to_dict()}


def run_training(
    config: TrainConfig,
    *,
    experiment: str = "raytag",
    registered_model: str | None = None,
    alias: str | None = None,
) -> TrainingResult:
    """Fit (or resume), calibrate the best checkpoint's thresholds on the valid split
    (``config.threshold_rule``), evaluate it at them on the test split, log everything to
    MLflow (``MLFLOW_TRACKING_URI``) and register the model with its thresholds."""
    import mlflow

    from raytag import registry
    from raytag.evaluate import calibrate_split, evaluate_model, log_calibration, log_evaluation
    from raytag.tracking import check_access, check_ray_workers

    # Refused credentials fail here, in one line: this process's, then those of each node a
    # training worker may run on (the environment rank 0 logs each epoch's metrics with).
    check_access()
    check_ray_workers(mlflow.get_tracking_uri(), "GPU" if uses_gpu(config) else "CPU")
    mlflow.set_experiment(experiment)
    # A resumed fit logs into the MLflow run of its earlier attempt.
    earlier = registry.find_runs(experiment, config.run_name)
    run_id = earlier[0].info.run_id if earlier else None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else config.run_name) as run:
        if run_id is None:
            mlflow.set_tag(registry.RUN_NAME_TAG, config.run_name)
            registry.log_config(asdict(config))
        result = fit(config, mlflow.get_tracking_uri(), run.info.run_id)  # TrainingError
        with best_checkpoint(result).as_directory() as folder, tempfile.TemporaryDirectory() as tmp:
            loaded = load_model(folder)
            calibration = calibrate_split(
                loaded, config.manifest, "valid", rule=config.threshold_rule,
                target_precision=config.target_precision,
            )  # fmt: skip
            log_calibration(calibration)
            # The registered model carries the thresholds (save_model writes them).
            loaded = replace(loaded, thresholds=calibration.thresholds)
            metrics = evaluate_model(loaded, config.manifest, split="test", plots_dir=tmp)
            log_evaluation(metrics, prefix="test")
            info = registry.log_model(loaded, registered_model_name=registered_model, alias=alias)
    return TrainingResult(
        run_id=run.info.run_id,
        epochs=result.metrics.get("epoch"),
        best_val_loss=result.metrics.get("best_val_loss"),
        test_macro_roc_auc=metrics.macro_roc_auc,
        test_macro_pr_auc=metrics.macro_pr_auc,
        test_macro_f1=metrics.macro_f1,
        model_uri=info.model_uri,
        registered_model=registered_model,
        version=info.registered_model_version,
        alias=alias,
        checkpoint_path=result.path,
        thresholds=calibration.thresholds.to_dict(loaded.vocabulary),
        metrics=replace(metrics, plots=None),
    )
