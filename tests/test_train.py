"""Ray Train end to end on a real local Ray: learning, MLflow, registry, failure recovery
and resume by run name."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch

from raytag import registry
from raytag.catalogue import VOCABULARY, synthesize
from raytag.checkpoint import load_model, save_model
from raytag.config import AudioConfig
from raytag.evaluate import calibrate, evaluate_model, score_tracks
from raytag.models import build_model
from raytag.thresholds import Thresholds
from raytag.train import TrainConfig, best_checkpoint, fit, initial_model, run_training

pytestmark = pytest.mark.usefixtures("ray_local")


def small_config(manifest: str, tmp_path: Path, **overrides) -> TrainConfig:
    fields = {
        "manifest": manifest, "model": "spectrogram-small", "vocabulary": VOCABULARY,
        "batch_size": 16, "storage_path": str(tmp_path / "runs"), "epochs": 2,
    }  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def learning_catalogue(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Twice the shared demo catalogue (112 training tracks): enough for register to be
    learnt by every run, not most runs (see the learning test)."""
    return synthesize(str(tmp_path_factory.mktemp("learning")), 160, seed=3, duration_s=6.0,
                      splits=(0.7, 0.15, 0.15))  # fmt: skip


def test_training_learns_and_registers_in_mlflow(
    learning_catalogue: str, tmp_path: Path, mlflow_env: str
) -> None:
    # Many small shuffled steps (4 crops per track, batches of 8) and all 10 epochs, on a
    # catalogue large enough that every run learns (a smaller one failed now and then). The
    # bar below is far above chance (0.5) and well below what runs reach, so it fails only
    # when training stops learning.
    config = small_config(learning_catalogue, tmp_path, epochs=10, batch_size=8,
                          patches_per_track=4, early_stopping_patience=100,
                          run_name="learn")  # fmt: skip
    summary = run_training(
        config, experiment="train-test", registered_model="tagger", alias="champion"
    )
    assert summary.epochs == 10
    assert summary.version == "1"
    assert list(summary.to_dict()) == [  # what `raytag train` prints, less the metrics
        "run_id", "epochs", "best_val_loss", "test_macro_roc_auc", "test_macro_pr_auc",
        "test_macro_f1", "model_uri", "registered_model", "version", "alias",
        "checkpoint_path", "thresholds", "metrics",
    ]  # fmt: skip
    assert "plots" not in summary.to_dict()["metrics"]  # logged as artifacts, not paths

    # The registered champion is the trained model, and it learnt: held-out tracks of another
    # seed are told apart on the tags that are easy to hear.
    loaded = registry.load("models:/tagger@champion")
    assert (loaded.name, loaded.version, loaded.vocabulary) == ("tagger", "1", list(VOCABULARY))
    heldout = synthesize(str(tmp_path / "heldout"), 100, seed=4, duration_s=6.0,
                         splits=(0.0, 0.0, 1.0))  # fmt: skip
    metrics = evaluate_model(loaded, heldout, split="test")
    auc = {row.tag: row.roc_auc for row in metrics.per_tag}
    assert auc["loud"] >= 0.9 and auc["quiet"] >= 0.9, auc
    assert (auc["high_register"] + auc["low_register"]) / 2 >= 0.70, auc

    # Its thresholds travel with it: those of calibrating its scores of the valid split, by
    # the default rule; the test split was evaluated at them.
    valid = score_tracks(loaded, learning_catalogue, "valid")
    expected = calibrate(valid.y_true, valid.y_score, list(VOCABULARY), split="valid",
                         manifest=learning_catalogue)  # fmt: skip
    assert loaded.thresholds.values == pytest.approx(expected.values, abs=1e-6)
    assert loaded.thresholds.policy == expected.policy
    assert expected.policy["n_tracks"] == len(valid.track_ids) > 0
    assert Thresholds.from_dict(summary.thresholds, list(VOCABULARY)) == loaded.thresholds
    decided = {row.tag: row for row in summary.metrics.per_tag}
    assert decided["loud"].threshold == loaded.thresholds.values[VOCABULARY.index("loud")]
    assert summary.test_macro_f1 == summary.metrics.macro_f1 > 0

    client = mlflow.MlflowClient()
    run = client.get_run(summary.run_id)
    assert run.data.params["model"] == "spectrogram-small"
    assert run.data.params["epochs"] == "10"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(1, 11))
    # Every epoch reports its data-path health: throughput and time spent waiting for data.
    waits = client.get_metric_history(run.info.run_id, "data_wait_fraction")
    speeds = client.get_metric_history(run.info.run_id, "train_samples_per_s_per_worker")
    assert len(waits) == len(speeds) == 10
    assert all(0.0 <= m.value < 1.0 for m in waits), [m.value for m in waits]
    assert all(m.value > 0 for m in speeds)
    assert "test_macro_roc_auc" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/test")}
    assert {"evaluation/test/roc_curves.png", "evaluation/test/per_tag_roc_auc.png"} <= artifacts
    # The calibration is logged: policy tags, the per-tag table, the thresholds file, and
    # the decisions' figures on both splits.
    assert run.data.tags["raytag.thresholds.rule"] == "max_f1"
    assert run.data.params["threshold_rule"] == "max_f1"
    assert {"valid_macro_f1", "test_macro_f1", "valid_macro_roc_auc"} <= set(run.data.metrics)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "thresholds")}
    assert logged == {"thresholds/table.json", "thresholds/thresholds.json"}
    stored = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/thresholds/thresholds.json")
    assert Thresholds.from_dict(stored, list(VOCABULARY)) == loaded.thresholds


def _registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints Ray Train has registered (not merely uploaded) for the run."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return len(json.loads(snapshot.read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return 0


def _kill_a_worker_after_first_checkpoint(
    run_dir: Path, done: threading.Event, state_api: str
) -> list[int]:
    from ray.util.state import list_actors

    killed = []
    while not done.is_set() and not killed:
        if _registered_checkpoints(run_dir):
            alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
            for actor in list_actors(address=state_api, filters=alive):
                os.kill(actor.pid, signal.SIGKILL)
                killed.append(actor.pid)
        time.sleep(0.2)
    return killed


def test_killed_worker_is_replaced_and_resumes_then_same_name_resumes(
    demo_catalogue: str, tmp_path: Path, ray_local: str
) -> None:
    # Patience beyond the run: this test is about resuming, not about early stopping. The
    # streaming data path (only the crops decoded, every epoch): the learning test above
    # trains on the cached one.
    config = small_config(demo_catalogue, tmp_path, epochs=6, run_name="survivor",
                          early_stopping_patience=100, cache_decoded=False)  # fmt: skip
    done, killed = threading.Event(), []
    killer = threading.Thread(
        target=lambda: killed.extend(
            _kill_a_worker_after_first_checkpoint(tmp_path / "runs" / "survivor", done, ray_local)
        )
    )
    killer.start()
    try:
        result = fit(config)
    finally:
        done.set()
        killer.join()
    assert killed, "no worker was killed: the test proved nothing"
    assert result.error is None
    assert result.metrics["epoch"] == 6
    assert result.metrics["start_epoch"] >= 1  # the replacement resumed from a checkpoint

    # Submitting the same run name again continues from the last checkpoint.
    again = fit(replace(config, epochs=7))
    assert again.error is None
    assert (again.metrics["start_epoch"], again.metrics["epoch"]) == (6, 7)


def test_ray_job_submit_trains_from_s3_and_registers(
    ray_head, s3_bucket: str, mlflow_env: str, tmp_path: Path
) -> None:
    """The user story: `ray job submit -- python jobs/train.py` against a running head, with
    the manifest, audio and checkpoints in object storage and the run in MLflow."""
    from raytag.storage import filesystem

    manifest = synthesize(f"{s3_bucket}/catalogue", 16, seed=5, duration_s=4.0)
    submit = ray_head.submit(
        "jobs/train.py", "--manifest", manifest, "--vocabulary", "demo", "--epochs", "2",
        "--batch-size", "8", "--no-cache-decoded", "--storage-path", f"{s3_bucket}/runs",
        "--run-name", "s3-job",
        "--experiment", "job-test", "--registered-model", "job-tagger", "--alias", "champion",
        env_vars={"MLFLOW_TRACKING_URI": mlflow_env}, submission_id="train-s3",
    )  # fmt: skip
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
    assert '"alias": "champion"' in submit.stdout
    loaded = registry.load("models:/job-tagger@champion")
    assert loaded.vocabulary == list(VOCABULARY)
    fs, root = filesystem(f"{s3_bucket}/runs/s3-job")
    # Its files, less the 0-byte folder markers that S3 lists as files.
    written = [path for path, info in fs.find(root, detail=True).items() if info["size"]]
    assert any("/checkpoint_" in path for path in written)
    # The submitter held no storage credentials (RayHead.submit), so the job used the node's.
    # The secret is in nothing Ray recorded of the job (entrypoint, runtime environment,
    # metadata, logs) and in no file it wrote.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]  # s3_bucket's, in this process's environment
    record = ray_head.job_record("train-s3")
    assert record["status"] == "SUCCEEDED" and "jobs/train.py" in record["entrypoint"]
    assert '"alias": "champion"' in record["logs"]
    assert secret not in json.dumps(record)
    assert all(secret.encode() not in fs.cat(path) for path in written)


def _start_model(folder: Path) -> Path:
    """A saved model with its own 3-tag vocabulary (two of them demo tags) and 2-s patches."""
    torch.manual_seed(7)
    model = build_model("spectrogram-small", n_tags=3)
    audio = AudioConfig(patch_seconds=2.0)
    return save_model(folder, model, ["drums", "cowbell", "loud"], audio, name="start")


def test_initial_model_carries_weights_shared_tags_and_patch_settings(tmp_path: Path) -> None:
    start = load_model(_start_model(tmp_path / "start"))
    config = TrainConfig(manifest="unused", init_from=str(tmp_path / "start"), model="waveform")
    caller_rng = torch.get_rng_state()
    initial = initial_model(config, list(VOCABULARY))
    assert torch.equal(torch.get_rng_state(), caller_rng)  # seeded inside, the caller's RNG kept
    again = initial_model(config, list(VOCABULARY)).weights["backend.classifier.weight"]
    assert torch.equal(again, initial.weights["backend.classifier.weight"])  # fresh rows: by seed

    assert initial.config == {**start.model.config_dict(), "n_tags": len(VOCABULARY)}
    assert (initial.audio.patch_seconds, initial.audio.context_samples) == (2.0, 0)
    old = start.model.state_dict()
    for key, value in initial.weights.items():
        if not key.startswith("backend.classifier."):
            assert torch.equal(value, old[key]), key
    weight, bias = (
        initial.weights["backend.classifier.weight"],
        initial.weights["backend.classifier.bias"],
    )
    drums, loud = VOCABULARY.index("drums"), VOCABULARY.index("loud")
    assert torch.equal(weight[drums], old["backend.classifier.weight"][0])
    assert torch.equal(weight[loud], old["backend.classifier.weight"][2])
    assert bias[loud] == old["backend.classifier.bias"][2]
    for fresh in set(range(len(VOCABULARY))) - {drums, loud}:  # new tags start fresh
        assert not any(torch.equal(weight[fresh], row) for row in old["backend.classifier.weight"])

    # An override that changes a weight's shape fails here, before any worker starts.
    with pytest.raises(ValueError, match="do not fit .* backend.dense.weight"):
        initial_model(replace(config, model_overrides={"dense_units": 64}), list(VOCABULARY))


def test_fine_tuning_with_a_frozen_encoder_changes_only_the_head(
    demo_catalogue: str, tmp_path: Path
) -> None:
    start = load_model(_start_model(tmp_path / "start")).model
    config = small_config(demo_catalogue, tmp_path, init_from=str(tmp_path / "start"),
                          freeze_encoder=True, epochs=1, run_name="fine-tune")  # fmt: skip
    result = fit(config)
    assert result.error is None
    with best_checkpoint(result).as_directory() as folder:
        tuned = load_model(folder)
    assert tuned.audio.patch_seconds == 2.0
    assert tuned.vocabulary == list(VOCABULARY)
    before, after = start.state_dict(), tuned.model.state_dict()
    head = tuple(name + "." for name in tuned.model.HEAD)
    changed = {key for key, value in after.items()
               if key in before and value.shape == before[key].shape
               and not torch.equal(value, before[key])}  # fmt: skip
    # Every encoder weight and batch-norm statistic as it was; the dense head trained.
    assert changed and all(key.startswith(head) for key in changed), changed
    assert "backend.dense.weight" in changed


def test_a_thresholds_rule_that_cannot_work_fails_before_training() -> None:
    with pytest.raises(ValueError, match="unknown thresholds rule 'best'"):
        TrainConfig(manifest="m", threshold_rule="best")
    with pytest.raises(ValueError, match="needs a target precision"):
        TrainConfig(manifest="m", threshold_rule="precision")
    assert TrainConfig(manifest="m", threshold_rule="precision", target_precision=0.8)
