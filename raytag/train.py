"""Ray Train: fit a tagger from a labelled Parquet manifest, checkpoint every epoch,
resume after failures, evaluate, and track everything in MLflow.

Data path: manifest -> Ray Data decode on CPU (once, cached in the object store) ->
a fresh random patch per track per epoch -> ``get_dataset_shard`` -> the workers.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
import torch.nn.functional as F
from ray import train
from ray.data.expressions import col
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raytag import storage
from raytag.audio import AudioError, decode_patches, decode_random_patches, decode_track
from raytag.checkpoint import load_model, save_model
from raytag.config import AudioConfig
from raytag.models import Tagger, build_model, model_from_config
from raytag.models.inference import bf16_autocast, model_process_env
from raytag.patching import random_crops, split_patches
from raytag.settings import json_pairs, setting

if TYPE_CHECKING:
    from raytag.evaluate import Evaluation

log = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.pt"


def read_vocabulary(option: str | None) -> tuple[str, ...] | None:
    """``--vocabulary``: 'demo' (the demo catalogue's tags), a JSON list file, or None."""
    if option is None:
        return None
    if option == "demo":
        from raytag.catalogue import VOCABULARY

        return VOCABULARY
    with open(option) as f:
        return tuple(json.load(f))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; logged to MLflow as params. Each field is an
    option of ``raytag train`` (:mod:`raytag.settings`)."""

    manifest: str = setting(help="Labelled Parquet manifest (local or s3://).")
    model: str = setting("spectrogram-small", "Model preset.")
    model_overrides: dict[str, Any] = setting(
        factory=dict,
        help="Model config override key=value, the value as JSON where it parses; repeatable.",
        flag="--set",
        parse=json_pairs,
        multiple=True,
    )
    # See initial_model.
    init_from: str | None = setting(
        None,
        "Start from this model (models:/NAME@ALIAS, runs:/..., a folder) instead of a fresh "
        "--model: its architecture, weights and patch settings; shared tags keep their outputs.",
    )
    freeze_encoder: bool = setting(
        False, "Train only the dense head on the frozen encoder (transfer learning)."
    )
    vocabulary: tuple[str, ...] | None = setting(
        None,
        "'demo' (the demo catalogue's tags), a JSON list file, or unset for the sorted tags "
        "of the manifest.",
        parse=read_vocabulary,
    )
    epochs: int = setting(20, "Epochs at most; early stopping may end the run sooner.")
    batch_size: int = setting(32, "Patches per training step of each worker.")
    learning_rate: float = setting(1e-3, "Adam's learning rate.")
    weight_decay: float = setting(0.0, "Adam's weight decay.")
    early_stopping_patience: int = setting(
        5, "Epochs without a better validation loss before training stops."
    )
    lr_decay_factor: float = setting(
        0.2, "Factor of the learning rate on a validation-loss plateau."
    )
    lr_patience: int = setting(2, "Epochs without a better validation loss before it decays.")
    patches_per_track: int = setting(1, "Random training patches per track per epoch.")
    shuffle_buffer: int = setting(
        256, "Training patches mixed in a local shuffle buffer on each worker (0: off)."
    )
    val_patches_per_track: int = setting(3, "Evenly spaced, fixed validation patches per track.")
    patch_seconds: float = setting(
        3.0,
        "Length of training crops, validation patches and the patches tracks are scored by "
        "(stored with the model).",
    )
    cache_decoded: bool = setting(
        True,
        "Keep decoded audio in Ray's object store between epochs; off: every epoch decodes "
        "only the crops it trains on, for catalogues larger than the cluster's memory.",
    )
    num_workers: int = setting(1, "Ray Train workers.")
    use_gpu: bool | None = setting(None, "Default: GPUs if the cluster has any.", flag="--gpu")
    mixed_precision: bool = setting(True, "bf16 autocast on GPU workers.")
    # Opt-in: likely slower on CPUs without bf16 dot products (AVX512-BF16, AMX; not
    # measured); even with them, a training step ran no faster than float32 here.
    cpu_bf16: bool = setting(
        False,
        "bf16 autocast on CPU workers too; a training step measured no faster with it "
        "(docs/benchmarks.md).",
    )
    storage_path: str = setting("runs", "Checkpoints (local or s3://).")
    run_name: str = setting("raytag", "Same name again resumes from its last checkpoint.")
    max_failures: int = setting(3, "Worker failures to survive.")
    keep_checkpoints: int = setting(
        2, "Checkpoints kept: the best by validation loss (every epoch's metrics stay)."
    )
    seed: int = setting(0, "Seed of the fresh weights, dropout and the shuffle buffer.")

    def audio(self) -> AudioConfig:
        return AudioConfig(patch_seconds=self.patch_seconds)

    def to_params(self) -> dict[str, str]:
        """Flat string params for MLflow."""
        return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class InitialModel:
    """What every worker builds before training (or before loading a checkpoint)."""

    config: dict[str, Any]  # Tagger.config_dict(): plain data
    audio: AudioConfig
    weights: dict[str, torch.Tensor] | None  # None: freshly initialised


def initial_model(config: TrainConfig, vocabulary: list[str]) -> InitialModel:
    """A fresh ``config.model``, or the model ``config.init_from`` names: its architecture,
    weights and patch settings, with a classifier for ``vocabulary`` that keeps the rows of
    the tags both vocabularies share (new tags start from fresh rows).

    ``model_overrides`` still apply (e.g. dropout); one that changes a weight's shape fails
    here, on the driver, before any worker starts.
    """
    with torch.random.fork_rng():  # seeded fresh weights; the caller's RNG does not move
        torch.manual_seed(config.seed)
        return _initial_model(config, vocabulary)


def _initial_model(config: TrainConfig, vocabulary: list[str]) -> InitialModel:
    """``initial_model``'s work, under the seeded RNG it forks."""
    if config.init_from is None:
        fresh = build_model(config.model, n_tags=len(vocabulary), **config.model_overrides)
        return InitialModel(fresh.config_dict(), config.audio(), None)
    from raytag import registry

    start = registry.load(config.init_from)
    model_config = {
        **start.model.config_dict(),
        **config.model_overrides,
        "n_tags": len(vocabulary),
    }
    model = model_from_config(model_config)
    weights = start.model.state_dict()
    fresh = model.state_dict()
    classifier = (f"{model.CLASSIFIER}.weight", f"{model.CLASSIFIER}.bias")

    def fits(key: str) -> bool:  # the classifier has a row per tag: only its rows may differ
        old, new = weights[key].shape, fresh[key].shape
        return old[1:] == new[1:] if key in classifier else old == new

    misfits = [key for key in fresh if key not in weights or not fits(key)]
    if misfits:
        raise ValueError(
            f"the weights of {config.init_from} do not fit with overrides "
            f"{config.model_overrides}: {', '.join(misfits)}"
        )
    shared = [
        (new, start.vocabulary.index(tag))
        for new, tag in enumerate(vocabulary)
        if tag in start.vocabulary
    ]
    for key in classifier:
        rows = fresh[key].clone()
        for new, old in shared:
            rows[new] = weights[key][old]
        weights[key] = rows
    model.load_state_dict(weights)
    log.info(
        "starting from %s (%s): %d of %d tags keep their classifier rows",
        config.init_from,
        model.arch,
        len(shared),
        len(vocabulary),
    )
    audio = replace(
        config.audio(),
        patch_seconds=start.audio.patch_seconds,
        context_samples=start.audio.context_samples,
    )
    return InitialModel(model_config, audio, model.state_dict())


# --- data ------------------------------------------------------------------------------------


def manifest_vocabulary(manifest: str) -> list[str]:
    """Sorted union of every tag in a labelled manifest (reads only the ``tags`` column)."""
    fs, path = storage.arrow_filesystem(manifest)
    tags = pq.ParquetDataset(path, filesystem=fs).read(columns=["tags"]).column("tags")
    return sorted(t for t in pc.unique(pc.list_flatten(tags)).to_pylist() if t)


def read_split(manifest: str, split: str) -> ray.data.Dataset:
    fs, path = storage.arrow_filesystem(manifest)
    ds = ray.data.read_parquet(path, filesystem=fs)
    return ds.select_columns(["track_id", "uri", "tags", "split"]).filter(
        expr=col("split") == split
    )


class DecodeLabelled:
    """Decode whole tracks and turn tag lists into multi-hot targets; undecodable tracks
    are dropped from training with a warning (the tagging job is what accounts for them)."""

    def __init__(self, vocabulary: list[str], audio: AudioConfig) -> None:
        self.index = {tag: i for i, tag in enumerate(vocabulary)}
        self.audio = audio

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        decoded, targets = [], []
        for uri, tags, track_id in zip(batch["uri"], batch["tags"], batch["track_id"], strict=True):
            try:
                decoded.append(self.decode(uri))
            except AudioError as error:
                log.warning("skipping %s in training: %s (%s)", track_id, error.code, error.message)
                continue
            target = np.zeros(len(self.index), dtype=np.float32)
            target[[self.index[t] for t in tags if t in self.index]] = 1.0
            targets.append(target)
        return self.rows(decoded, targets)

    def decode(self, uri: str) -> np.ndarray:
        return decode_track(uri, self.audio)

    def rows(self, decoded: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, Any]:
        return {"waveform": _ragged(decoded), "target": np.asarray(targets, np.float32)}


class DecodeLabelledPatches(DecodeLabelled):
    """Decode only the patches one pass needs: ``per_track`` random crops (training: new
    ones every epoch) or evenly spaced fixed ones (validation). The streaming path: a
    crop of a long track costs a crop's decoding, not the track's."""

    def __init__(
        self, vocabulary: list[str], audio: AudioConfig, per_track: int, random: bool
    ) -> None:
        super().__init__(vocabulary, audio)
        self.per_track = per_track
        self.random = random

    def decode(self, uri: str) -> np.ndarray:
        if self.random:
            rng = np.random.default_rng()
            return decode_random_patches(uri, self.audio, self.per_track, rng).patches
        return decode_patches(uri, replace(self.audio, max_patches=self.per_track)).patches

    def rows(self, decoded: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, Any]:
        if not decoded:
            width = self.audio.patch_samples
            return {
                "patch": np.zeros((0, width), np.float32),
                "target": np.zeros((0, len(self.index)), np.float32),
            }
        return {
            "patch": np.concatenate(decoded),
            "target": np.repeat(np.asarray(targets, np.float32), [len(p) for p in decoded], axis=0),
        }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


class RandomPatches:
    """A fresh random crop per track every time the dataset is iterated (every epoch)."""

    def __init__(self, patch_samples: int, per_track: int) -> None:
        self.patch_samples = patch_samples
        self.per_track = per_track

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng()
        crops = [
            random_crops(w, self.patch_samples, self.per_track, rng) for w in batch["waveform"]
        ]
        return {
            "patch": np.concatenate(crops),
            "target": np.repeat(batch["target"], self.per_track, axis=0),
        }


class FixedPatches:
    """Evenly spaced patches, the same every epoch, so validation losses are comparable."""

    def __init__(self, patch_samples: int, per_track: int) -> None:
        self.patch_samples = patch_samples
        self.per_track = per_track

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        patches, targets = [], []
        for waveform, target in zip(batch["waveform"], batch["target"], strict=True):
            track_patches = split_patches(waveform, self.patch_samples, self.per_track)
            patches.extend(track_patches)
            targets.extend([target] * len(track_patches))
        return {"patch": np.stack(patches), "target": np.stack(targets)}


def build_datasets(
    config: TrainConfig, vocabulary: list[str], audio: AudioConfig
) -> dict[str, ray.data.Dataset]:
    """Decoded tracks, cropped afresh every epoch (train) or at fixed places (valid).

    With ``cache_decoded`` the decoded audio is kept in Ray's object store after the first
    pass (right for catalogues whose audio fits in the cluster's memory); without it every
    epoch streams and decodes only the patches it uses, which scales to any catalogue size.
    """
    if not config.cache_decoded:
        crops = DecodeLabelledPatches(vocabulary, audio, config.patches_per_track, random=True)
        fixed = DecodeLabelledPatches(vocabulary, audio, config.val_patches_per_track, False)
        return {
            split: read_split(config.manifest, split).map_batches(stage, batch_size=8, num_cpus=1)
            for split, stage in (("train", crops), ("valid", fixed))
        }
    decoder = DecodeLabelled(vocabulary, audio)
    decoded = {
        split: read_split(config.manifest, split)
        .map_batches(decoder, batch_size=8, num_cpus=1)
        .materialize()
        for split in ("train", "valid")
    }
    for split, ds in decoded.items():
        if ds.count() == 0:
            raise ValueError(f"no decodable {split!r} tracks in {config.manifest}")
    return {
        "train": decoded["train"].map_batches(
            RandomPatches(audio.patch_samples, config.patches_per_track), batch_size=16
        ),
        "valid": decoded["valid"].map_batches(
            FixedPatches(audio.patch_samples, config.val_patches_per_track), batch_size=16
        ),
    }


# --- the loop on each worker -------------------------------------------------------------------


def _unwrap(model: torch.nn.Module) -> Tagger:
    return model.module if hasattr(model, "module") else model


def _all_reduce_mean(total: float, count: int, device: torch.device) -> float:
    values = torch.tensor([total, count], dtype=torch.float64, device=device)
    if train.get_context().get_world_size() > 1:
        torch.distributed.all_reduce(values)
    return (values[0] / values[1].clamp(min=1)).item()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One worker's training: resumes from the last checkpoint if Ray Train hands one over."""
    config = TrainConfig(**loop_config["train"])
    vocabulary: list[str] = loop_config["vocabulary"]
    start: InitialModel = loop_config["initial_model"]
    torch.manual_seed(config.seed)
    model = model_from_config(start.config)
    if start.weights is not None:
        model.load_state_dict(start.weights)
    if config.freeze_encoder:
        model.freeze_encoder()
    optimiser = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, factor=config.lr_decay_factor, patience=config.lr_patience
    )
    state = {"epoch": 0, "best_val_loss": float("inf"), "epochs_since_best": 0}
    checkpoint = train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            model.load_state_dict(load_model(folder).model.state_dict())
            saved = torch.load(Path(folder) / TRAIN_STATE_FILE, weights_only=True)
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
    start_epoch = state["epoch"]

    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    train_shard = train.get_dataset_shard("train")
    valid_shard = train.get_dataset_shard("valid")
    use_amp, cpu_bf16 = config.mixed_precision, config.cpu_bf16

    for epoch in range(start_epoch, config.epochs):
        if state["epochs_since_best"] >= config.early_stopping_patience:
            break
        model.train()
        train_total, train_count = 0.0, 0
        batches = train_shard.iter_torch_batches(
            batch_size=config.batch_size,
            dtypes=torch.float32,
            device=device,
            local_shuffle_buffer_size=config.shuffle_buffer or None,
            local_shuffle_seed=config.seed * 100_003 + epoch if config.shuffle_buffer else None,
        )
        clock = _DataClock(batches)
        for batch in clock:
            with bf16_autocast(device, use_amp, on_cpu=cpu_bf16):
                logits = model(batch["patch"])
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch["target"])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            train_total += loss.item() * len(logits)
            train_count += len(logits)

        model.eval()
        val_total, val_count = 0.0, 0
        with torch.inference_mode():
            for batch in valid_shard.iter_torch_batches(
                batch_size=config.batch_size, dtypes=torch.float32, device=device
            ):
                with bf16_autocast(device, use_amp, on_cpu=cpu_bf16):
                    logits = model(batch["patch"])
                val_total += (
                    F.binary_cross_entropy_with_logits(
                        logits.float(), batch["target"], reduction="sum"
                    ).item()
                    / batch["target"].shape[1]
                )
                val_count += len(logits)
        train_seconds = clock.elapsed()
        train_loss = _all_reduce_mean(train_total, train_count, device)
        val_loss = _all_reduce_mean(val_total, val_count, device)
        scheduler.step(val_loss)
        improved = val_loss < state["best_val_loss"]
        state = {
            "epoch": epoch + 1,
            "best_val_loss": min(val_loss, state["best_val_loss"]),
            "epochs_since_best": 0 if improved else state["epochs_since_best"] + 1,
        }
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": state["best_val_loss"],
            "learning_rate": optimiser.param_groups[0]["lr"],
            "start_epoch": start_epoch,
            # Throughput of this worker's training pass, and the share of it spent waiting
            # for the next batch (decode, crop, transfer) rather than computing.
            "train_samples_per_s_per_worker": train_count / max(train_seconds, 1e-9),
            "data_wait_fraction": clock.waited / max(train_seconds, 1e-9),
        }
        _report(metrics, model, optimiser, scheduler, state, vocabulary, config, loop_config)


class _DataClock:
    """Iterates batches and times how long the loop waited for each one."""

    def __init__(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        self.batches = batches
        self.waited = 0.0
        self.started = time.perf_counter()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        iterator = iter(self.batches)
        while True:
            asked = time.perf_counter()
            batch = next(iterator, None)
            self.waited += time.perf_counter() - asked
            if batch is None:
                return
            yield batch

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def _report(metrics, model, optimiser, scheduler, state, vocabulary, config, loop_config) -> None:
    """Checkpoint (rank 0 writes it) and report; MLflow gets the metrics from rank 0."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if train.get_context().get_world_rank() == 0:
            audio = loop_config["initial_model"].audio
            save_model(folder, _unwrap(model), vocabulary, audio, name=config.run_name)
            torch.save(
                {
                    "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": state,
                },
                Path(folder) / TRAIN_STATE_FILE,
            )
            checkpoint = Checkpoint.from_directory(folder)
            if loop_config.get("mlflow_run_id"):
                _log_epoch_metrics(loop_config, metrics)
        train.report(metrics, checkpoint=checkpoint)


def _log_epoch_metrics(loop_config: dict[str, Any], metrics: dict[str, float]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=loop_config["mlflow_tracking_uri"])
    step = int(metrics["epoch"])
    for key, value in metrics.items():
        if key not in ("epoch", "start_epoch"):
            client.log_metric(loop_config["mlflow_run_id"], key, float(value), step=step)


# --- the driver -------------------------------------------------------------------------------


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def fit(
    config: TrainConfig, mlflow_tracking_uri: str | None = None, mlflow_run_id: str | None = None
) -> train.Result:
    """Run (or resume, when ``run_name`` already has checkpoints) a Ray Train fit."""
    vocabulary = list(config.vocabulary or manifest_vocabulary(config.manifest))
    use_gpu = cluster_has_gpus() if config.use_gpu is None else config.use_gpu
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
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu),
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
    return trainer.fit()


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
    """What :func:`run_training` did: the MLflow run, the registered version, the test split's
    evaluation and where Ray Train kept the checkpoints."""

    run_id: str
    epochs: int | None
    best_val_loss: float | None
    test_macro_roc_auc: float | None
    test_macro_pr_auc: float | None
    model_uri: str
    registered_model: str | None
    version: str | None
    alias: str | None
    checkpoint_path: str
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
    """Fit (or resume), evaluate the best checkpoint on the test split, log everything to
    MLflow (``MLFLOW_TRACKING_URI``) and register the model."""
    import mlflow

    from raytag import registry
    from raytag.evaluate import evaluate_model

    mlflow.set_experiment(experiment)
    # A resumed fit logs into the MLflow run of its earlier attempt.
    earlier = registry.find_runs(experiment, config.run_name)
    run_id = earlier[0].info.run_id if earlier else None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else config.run_name) as run:
        if run_id is None:
            mlflow.set_tag(registry.RUN_NAME_TAG, config.run_name)
            registry.log_config(asdict(config))
        result = fit(config, mlflow.get_tracking_uri(), run.info.run_id)
        if result.error:
            raise RuntimeError(f"training failed: {result.error}") from result.error
        with best_checkpoint(result).as_directory() as folder, tempfile.TemporaryDirectory() as tmp:
            loaded = load_model(folder)
            metrics = evaluate_model(loaded, config.manifest, split="test", plots_dir=tmp)
            # The plots go in as artifacts beside the JSON, not as paths of a deleted folder.
            record = metrics.to_dict()
            registry.log_run_evaluation(record, record.pop("plots", []))
            info = registry.log_model(folder, registered_model_name=registered_model, alias=alias)
    return TrainingResult(
        run_id=run.info.run_id,
        epochs=result.metrics.get("epoch"),
        best_val_loss=result.metrics.get("best_val_loss"),
        test_macro_roc_auc=metrics.macro_roc_auc,
        test_macro_pr_auc=metrics.macro_pr_auc,
        model_uri=info.model_uri,
        registered_model=registered_model,
        version=info.registered_model_version,
        alias=alias,
        checkpoint_path=result.path,
        metrics=replace(metrics, plots=None),
    )
