"""The loop on each Ray Train worker: train, validate, checkpoint and report every epoch,
resuming from the last checkpoint Ray Train hands over.

:func:`train_loop_per_worker` stays a module-level function: Ray Train pickles it by
reference, so the workers import it from here.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ray.train.torch
import torch
import torch.nn.functional as F
from ray import train
from ray.train import Checkpoint

from raytag.checkpoint import load_model, save_model
from raytag.models import TaggingModel, model_from_config
from raytag.models.inference import bf16_autocast
from raytag.train.config import InitialModel, TrainConfig

TRAIN_STATE_FILE = "train_state.pt"


def _unwrap(model: torch.nn.Module) -> TaggingModel:
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
