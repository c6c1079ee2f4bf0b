"""Ray Train with two workers on CPU (gloo): the distributed path is real. DDP keeps the
replicas' weights equal while each worker trains on its own shard; a killed worker brings
the group back from the last checkpoint with its weights and optimiser state restored;
running out of failures ends the run with a TrainingError.

Every checkpoint holds one record per worker (raytag.train.loop.worker_record): checksums of
the state it held, of the state its attempt started from, and the tracks it trained on.
The tests compare those records across ranks, with the checkpoint's files and with a
fresh model built here.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from ray.train import WorkerGroupError

from raytag.catalogue import VOCABULARY
from raytag.checkpoint import load_model
from raytag.models import model_from_config
from raytag.train import TrainConfig, fit, initial_model
from raytag.train.loop import TRAIN_STATE_FILE, state_checksum
from raytag.train.run import TrainingError
from tests.test_train import _registered_checkpoints

pytestmark = pytest.mark.usefixtures("ray_local")


def two_workers(manifest: str, storage: Path, run_name: str, **overrides: Any) -> TrainConfig:
    """Two workers of half a CPU each, leaving the session cluster's other CPU to Ray Data;
    patience beyond the run, so that every epoch runs."""
    fields = {
        "manifest": manifest, "model": "spectrogram-small", "vocabulary": VOCABULARY,
        "batch_size": 8, "storage_path": str(storage), "run_name": run_name, "epochs": 2,
        "num_workers": 2, "cpus_per_worker": 0.5, "early_stopping_patience": 100,
    }  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


def worker_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every worker record in the run's checkpoints, each with the folder it lies in."""
    return [
        {**json.loads(path.read_text()), "folder": path.parent}
        for path in sorted(run_dir.glob("checkpoint_*/worker_*.json"))
    ]


def by_rank(records: list[dict[str, Any]], epoch: int, started: int) -> dict[int, dict]:
    """The records of the checkpoint of ``epoch`` written by the attempt that started at
    epoch ``started``, by rank."""
    chosen = [r for r in records if r["epoch"] == epoch and r["started"]["epoch"] == started]
    ranks = {r["rank"]: r for r in chosen}
    assert len(ranks) == len(chosen), chosen  # one checkpoint folder per epoch and attempt
    return ranks


def parameters_checksum(model: torch.nn.Module) -> str:
    return state_checksum(dict(model.named_parameters()))


@pytest.fixture(scope="module")
def two_worker_run(
    demo_catalogue: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainConfig, Path]:
    """Two epochs on two workers, each recording the tracks it trained on."""
    storage = tmp_path_factory.mktemp("two-workers")
    config = two_workers(demo_catalogue, storage, "pair", record_track_ids=True)
    result = fit(config)
    assert result.metrics["epoch"] == 2
    return config, storage / "pair"


def test_two_workers_hold_identical_weights_that_moved_from_the_start(
    two_worker_run: tuple[TrainConfig, Path],
) -> None:
    config, run_dir = two_worker_run
    records = worker_records(run_dir)
    # The fresh model every worker builds: the seeded preset (no --init-from).
    torch.manual_seed(config.seed)
    fresh = model_from_config(initial_model(config, list(VOCABULARY)).config)
    for epoch in (1, 2):
        ranks = by_rank(records, epoch, started=0)
        assert set(ranks) == {0, 1} and ranks[0]["world_size"] == 2
        # Gradients averaged by DDP: after their steps on different shards, both replicas
        # hold the same weights and the same Adam moments.
        for part in ("parameters", "optimiser"):
            assert ranks[0]["checksums"][part] == ranks[1]["checksums"][part], (epoch, part)
        # Both started from the fresh model, and the steps moved the weights away from it.
        for record in ranks.values():
            assert record["started"]["checksums"]["parameters"] == parameters_checksum(fresh)
            assert record["checksums"]["parameters"] != parameters_checksum(fresh)
        # The checkpoint holds those weights.
        saved = load_model(ranks[0]["folder"]).model
        assert parameters_checksum(saved) == ranks[1]["checksums"]["parameters"]
    assert (
        by_rank(records, 1, 0)[0]["checksums"]["parameters"]
        != by_rank(records, 2, 0)[0]["checksums"]["parameters"]
    )


def test_each_worker_trains_on_its_own_half_of_the_train_split(
    two_worker_run: tuple[TrainConfig, Path], demo_catalogue: str
) -> None:
    config, run_dir = two_worker_run
    manifest = pq.read_table(demo_catalogue, columns=["track_id", "split"]).to_pylist()
    train_split = {row["track_id"] for row in manifest if row["split"] == "train"}
    assert len(train_split) % 2 == 0  # Ray Train's equal shards then drop no track
    records = worker_records(run_dir)
    for epoch in (1, 2):
        ranks = by_rank(records, epoch, started=0)
        first, second = set(ranks[0]["track_ids"]), set(ranks[1]["track_ids"])
        assert len(first) == len(second) == len(train_split) // 2, epoch
        assert not first & second, epoch
        assert first | second == train_split, epoch


def _kill_one_worker_after_first_checkpoint(
    run_dir: Path, done: threading.Event, state_api: str
) -> list[int]:
    """SIGKILL one of the run's live train workers once Ray Train has registered a
    checkpoint; the pid killed, or none when the run ended first."""
    from ray.util.state import list_actors

    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    while not done.is_set():
        if _registered_checkpoints(run_dir):
            workers = list_actors(address=state_api, filters=alive)
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                return [workers[0].pid]
        time.sleep(0.2)
    return []


def fit_killing_one_worker(config: TrainConfig, state_api: str) -> tuple[Any, list[int]]:
    """``fit(config)`` while one worker is killed after the first checkpoint: its result or
    the exception it raised, and the pid killed."""
    done, killed = threading.Event(), []
    run_dir = Path(config.storage_path) / config.run_name
    killer = threading.Thread(
        target=lambda: killed.extend(
            _kill_one_worker_after_first_checkpoint(run_dir, done, state_api)
        )
    )
    killer.start()
    try:
        return fit(config), killed
    except TrainingError as error:
        return error, killed
    finally:
        done.set()
        killer.join()


def test_a_killed_worker_restarts_the_group_from_the_checkpoint_restored_exactly(
    demo_catalogue: str, tmp_path: Path, ray_local: str
) -> None:
    config = two_workers(demo_catalogue, tmp_path, "survivor", epochs=4, keep_checkpoints=4)
    result, killed = fit_killing_one_worker(config, ray_local)
    assert killed, "no worker was killed: the test proved nothing"
    assert not isinstance(result, Exception), result
    assert result.metrics["epoch"] == 4
    resumed_at = result.metrics["start_epoch"]
    assert resumed_at >= 1  # the group came back from a checkpoint, not from scratch

    records = worker_records(tmp_path / "survivor")
    saved = by_rank(records, resumed_at, started=0)[0]  # rank 0 wrote that checkpoint
    folder = saved["folder"]
    # Its files hold the state rank 0 had when it saved them...
    on_disk = torch.load(folder / TRAIN_STATE_FILE, weights_only=True)
    assert on_disk["state"]["epoch"] == resumed_at
    assert state_checksum(on_disk["optimiser"]) == saved["checksums"]["optimiser"]
    assert state_checksum(load_model(folder).model.state_dict()) == saved["checksums"]["model"]
    assert all(step["step"] > 0 for step in on_disk["optimiser"]["state"].values())  # trained
    # ...and both workers of the new group started from exactly that state: weights,
    # batch-norm statistics and Adam's moments, then trained to the end.
    restarted = by_rank(records, resumed_at + 1, started=resumed_at)
    assert set(restarted) == {0, 1}
    for record in restarted.values():
        assert record["started"]["checksums"] == saved["checksums"]
    finished = by_rank(records, 4, started=resumed_at)
    assert finished[0]["checksums"]["parameters"] == finished[1]["checksums"]["parameters"]


def test_running_out_of_max_failures_ends_with_a_training_error_then_resumes(
    demo_catalogue: str, tmp_path: Path, ray_local: str
) -> None:
    config = two_workers(demo_catalogue, tmp_path, "fragile", epochs=3, max_failures=0)
    error, killed = fit_killing_one_worker(config, ray_local)
    assert killed, "no worker was killed: the test proved nothing"
    assert isinstance(error, TrainingError), error
    message = str(error)
    assert "training run 'fragile' stopped" in message
    assert "more than max_failures=0 allows" in message
    assert f"{tmp_path}/fragile" in message and "same --run-name" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1
    assert isinstance(error.__cause__, WorkerGroupError)  # Ray's own error, chained

    # Doing what the message says resumes from the last checkpoint.
    again = fit(replace(config, max_failures=1))
    assert again.metrics["epoch"] == 3
    assert again.metrics["start_epoch"] >= 1
