"""The loop on each Ray Train worker: train, validate, checkpoint and report every epoch,
resuming from the last checkpoint Ray Train hands over.

Every checkpoint holds, besides the model and the training state that rank 0 writes, one
``worker_RANK.json`` per worker (:func:`worker_record`): checksums of the state that worker
holds as it saves, the state it started this attempt from, and, with ``record_track_ids``,
the tracks it trained on. Replicas that drifted apart, a restart that did not restore what
was saved, or shards that overlapped show there.

:func:`train_loop_per_worker` stays a module-level function: Ray Train pickles it by
reference, so the workers import it from here.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ray.train.torch
import torch
import torch.nn.functional as F
from ray import train
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import Checkpoint

from raytag.checkpoint import load_model, save_model
from raytag.models import TaggingModel, model_from_config
from raytag.models.inference import bf16_autocast
from raytag.train.config import InitialModel, TrainConfig

TRAIN_STATE_FILE = "train_state.pt"
WORKER_RECORD_FILE = "worker_{rank}.json"


def _unwrap(model: torch.nn.Module) -> TaggingModel:
    return model.module if hasattr(model, "module") else model


def _all_reduce_mean(total: float, count: int, device: torch.device) -> float:
    values = torch.tensor([total, count], dtype=torch.float64, device=device)
    if train.get_context().get_world_size() > 1:
        torch.distributed.all_reduce(values)
    return (values[0] / values[1].clamp(min=1)).item()


def state_checksum(state: Any) -> str:
    """SHA-256 of a state dict (nested mappings, sequences, tensors, plain values): equal for
    equal values on whatever device or process holds them, so that replicas, and a restored
    state and the one saved, can be compared without moving the tensors."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            digest.update(b"{")
            for key in sorted(value, key=str):
                digest.update(f"{key!r}:".encode())
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, list | tuple):  # a tuple saved comes back as itself or a list
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(f"{value!r};".encode())

    feed(state)
    return digest.hexdigest()


def state_checksums(model: torch.nn.Module, optimiser: torch.optim.Optimizer) -> dict[str, str]:
    """The checksums a worker record holds. ``parameters``: the weights, which DDP keeps
    equal on every rank; ``model``: with the batch-norm statistics too, which each rank
    updates from its own batches (checkpoints hold rank 0's); ``optimiser``: Adam's moments
    and step counts."""
    model = _unwrap(model)
    return {
        "parameters": state_checksum(dict(model.named_parameters())),
        "model": state_checksum(model.state_dict()),
        "optimiser": state_checksum(optimiser.state_dict()),
    }


class _PatchBatches(NumpyBatchCollateFn):
    """Tensors of a batch's patches and targets, which Ray Data then moves to the device;
    the track ids are added to ``track_ids`` when it is a list (the thread that collates
    ahead of the loop appends, the loop reads after the epoch)."""

    def __init__(self, track_ids: list[str] | None = None) -> None:
        self.track_ids = track_ids

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.track_ids is not None:
            self.track_ids.extend(batch["track_id"].tolist())
        return {
            "patch": torch.as_tensor(batch["patch"], dtype=torch.float32),
            "target": torch.as_tensor(batch["target"], dtype=torch.float32),
        }


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
    started = {"epoch": start_epoch, "checksums": state_checksums(model, optimiser)}

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
        track_ids: list[str] | None = [] if config.record_track_ids else None
        batches = train_shard.iter_torch_batches(
            batch_size=config.batch_size,
            collate_fn=_PatchBatches(track_ids),
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
                batch_size=config.batch_size, collate_fn=_PatchBatches(), device=device
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
        record = worker_record(epoch + 1, started, model, optimiser, track_ids)
        _report(metrics, record, model, optimiser, scheduler, state, vocabulary, loop_config)


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


def worker_record(
    epoch: int,
    started: dict[str, Any],
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    track_ids: list[str] | None,
) -> dict[str, Any]:
    """What this worker writes into the checkpoint of ``epoch`` (``worker_RANK.json``):
    its rank, the checksums of the state it holds now and of the state this attempt
    ``started`` from (fresh, or restored from a checkpoint), and the tracks it trained on
    in the epoch when they were recorded."""
    context = train.get_context()
    record = {
        "rank": context.get_world_rank(),
        "world_size": context.get_world_size(),
        "epoch": epoch,
        "checksums": state_checksums(model, optimiser),
        "started": started,
    }
    if track_ids is not None:
        record["track_ids"] = sorted(set(track_ids))
    return record


def _report(metrics, record, model, optimiser, scheduler, state, vocabulary, loop_config) -> None:
    """Checkpoint and report: every worker writes its record into the checkpoint, rank 0 the
    model and training state too; MLflow gets the metrics from rank 0."""
    with tempfile.TemporaryDirectory() as folder:
        record_file = Path(folder) / WORKER_RECORD_FILE.format(rank=record["rank"])
        record_file.write_text(json.dumps(record, indent=1))
        if record["rank"] == 0:
            audio = loop_config["initial_model"].audio
            name = loop_config["train"]["run_name"]
            save_model(folder, _unwrap(model), vocabulary, audio, name=name)
            torch.save(
                {
                    "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": state,
                },
                Path(folder) / TRAIN_STATE_FILE,
            )
            if loop_config.get("mlflow_run_id"):
                _log_epoch_metrics(loop_config, metrics)
        # Ray Train gathers every worker's files into the one checkpoint folder.
        train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _log_epoch_metrics(loop_config: dict[str, Any], metrics: dict[str, float]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=loop_config["mlflow_tracking_uri"])
    step = int(metrics["epoch"])
    for key, value in metrics.items():
        if key not in ("epoch", "start_epoch"):
            client.log_metric(loop_config["mlflow_run_id"], key, float(value), step=step)
