"""Ray Train: fit a tagger from a labelled Parquet manifest, checkpoint every epoch,
resume after failures, evaluate, and track everything in MLflow.

One module per responsibility, each importing only the ones above it:

    config    TrainConfig, every setting of a run, and the model every worker starts from
    data      the manifest decoded by Ray Data into training and validation patches
    loop      the loop on each worker: train, validate, checkpoint, report
    run       the driver: fit, best checkpoint, evaluation, MLflow run and registration
"""

from raytag.train.config import InitialModel, TrainConfig, initial_model, read_vocabulary
from raytag.train.data import build_datasets, manifest_vocabulary
from raytag.train.loop import train_loop_per_worker
from raytag.train.run import TrainingError, TrainingResult, best_checkpoint, fit, run_training

__all__ = [
    "InitialModel",
    "TrainConfig",
    "TrainingError",
    "TrainingResult",
    "best_checkpoint",
    "build_datasets",
    "fit",
    "initial_model",
    "manifest_vocabulary",
    "read_vocabulary",
    "run_training",
    "train_loop_per_worker",
]
