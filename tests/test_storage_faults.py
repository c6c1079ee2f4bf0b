"""Object storage going away mid-run: a SeaweedFS S3 server of this module's own (the
session's serves other tests) is stopped in the middle of a tagging run and of a training
run, and started again on the same port and data.

Each run is a process of its own with its own local Ray, as a user runs it: its Ray
workers inherit the S3 endpoint and credentials from its environment. A run whose
outage outlasts the S3 clients' retries fails with raytag's error (the retries are cut
to AWS_MAX_ATTEMPTS=2, about a second per request, so the outage outlasts them at
once); the same command run again resumes, and a tagging rerun rides out a restart of
the server midway with the default retries.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytag.audio import AudioError, AudioErrorCode
from raytag.catalogue import VOCABULARY
from raytag.services import free_port
from raytag.storage import RetryingS3FileSystem, arrow_filesystem, filesystem, join, unreachable
from raytag.tagging.output import ERRORS, PREDICTIONS, output_files
from tests.services import SeaweedS3
from tests.test_tagging import BIN, cli_args, keys, read_folder, settle, tiny_model, tone

N_ROWS = 24  # tracks of a few distinct clips, one decode task and two rows per file each
OUTAGE_RETRIES = {"AWS_MAX_ATTEMPTS": "2"}  # an outage outlasts these at once
RUN_TIMEOUT_S = 300  # a run that neither finishes nor fails by then hangs: the test fails
FIT = """
import json, sys
import ray
from raytag.train import TrainConfig, fit
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
result = fit(TrainConfig(**json.loads(sys.argv[1])))
print(json.dumps({key: result.metrics[key] for key in ("start_epoch", "epoch")}))
"""


@pytest.fixture(scope="module")
def faulty_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("faulty-s3")).start()
    yield server
    server.stop()


@pytest.fixture
def run_env(faulty_s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process and the runs it starts reach the server through the environment only."""
    for key, value in faulty_s3.env.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


def bucket(name: str) -> str:
    fs, _ = filesystem(f"s3://{name}")
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_until(ready: Callable[[], object], run: subprocess.Popen, log: Path) -> None:
    """Until ``ready()``, with the run still going (bounded)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not ready():
        assert run.poll() is None, f"the run ended first:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"never ready:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def finished_files(folder: str) -> list[str]:
    return output_files(folder, PREDICTIONS) + output_files(folder, ERRORS)


def line_starting(prefix: str, log: Path) -> str:
    """The run's line that starts with ``prefix`` (Ray may log after it)."""
    lines = [line for line in log.read_text().splitlines() if line.startswith(prefix)]
    assert lines, log.read_text()[-3000:]
    return lines[-1]


def test_s3_clients_retry_as_configured_and_ray_copies_keep_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cloudpickle

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    fs, _ = filesystem("s3://any-bucket/key")
    assert fs.config_kwargs["retries"] == {"max_attempts": 7, "mode": "standard"}
    arrow, _ = arrow_filesystem("s3://any-bucket/key")
    for copy in (pickle.loads(pickle.dumps(arrow)), cloudpickle.loads(cloudpickle.dumps(arrow))):
        assert isinstance(copy, RetryingS3FileSystem) and copy.max_attempts == 7
        assert copy == arrow  # endpoint and region too
    for wrong in ("0", "many"):
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", wrong)
        with pytest.raises(ValueError, match="AWS_MAX_ATTEMPTS"):
            filesystem("s3://any-bucket/key")


def test_storage_that_does_not_answer_is_told_from_one_that_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both clients against a port nothing listens on, with one attempt each."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SeaweedS3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SeaweedS3.secret_key)
    arrow, path = arrow_filesystem("s3://silent-bucket/key")
    with pytest.raises(OSError) as silent_arrow:
        arrow.get_file_info(path)
    assert "AWS Error NETWORK_CONNECTION" in unreachable(silent_arrow.value)
    fs, path = filesystem("s3://silent-bucket/key")
    with pytest.raises(Exception) as silent_boto:
        fs.info(path)
    # As a decode task sees it: the client's error under the row's AudioError.
    try:
        raise AudioError(
            AudioErrorCode.READ_FAILED, "s3://silent-bucket/key"
        ) from silent_boto.value
    except AudioError as wrapped:
        assert "Could not connect to the endpoint URL" in unreachable(wrapped)
    assert unreachable(FileNotFoundError("silent-bucket/key")) is None
    refused = OSError("AWS Error ACCESS_DENIED during HeadObject operation: Access Denied")
    assert unreachable(refused) is None


@pytest.mark.integration
@pytest.mark.slow
def test_tagging_fails_clearly_in_an_outage_then_resumes_through_a_restart(
    faulty_s3: SeaweedS3, run_env: dict[str, str], tmp_path: Path
) -> None:
    root = bucket("outage-tagging")
    fs, _ = filesystem(root)
    clips = [tone(tmp_path / f"clip{i}.wav", hz=220 * (i + 1), seconds=2) for i in range(4)]
    for clip in clips:
        fs.put(str(clip), join(root, "audio", clip.name))
    rows = [
        {"track_id": f"track-{i:02d}", "uri": join(root, "audio", clips[i % 4].name)}
        for i in range(N_ROWS)
    ]
    manifest = join(root, "manifest")
    with fs.open(join(root, "manifest", "part-0.parquet"), "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    output = join(root, "tags")
    folder = join(output, "tiny-tagger-v1")
    command = [str(BIN / "raytag"), "tag", *cli_args(
        manifest=manifest, model=tiny_model(tmp_path / "model", "1"), output=output,
        ray_address="local", max_patches=1, decode_batch_size=1, predict_batch_size=1,
        rows_per_file=2,
    )]  # fmt: skip

    # The server stops midway and stays down: the run fails with raytag's error, bounded.
    first_log = tmp_path / "first.log"
    first = start(command, {**run_env, **OUTAGE_RETRIES}, first_log)
    wait_until(lambda: finished_files(folder), first, first_log)
    faulty_s3.stop()
    try:
        assert first.wait(RUN_TIMEOUT_S) == 1, first_log.read_text()[-3000:]
    finally:
        first.kill()
        faulty_s3.start()
    error = line_starting("Error: ", first_log)
    assert error.startswith(f"Error: object storage ({faulty_s3.endpoint}) stopped answering")
    assert f"tagging {manifest} into {output}, after 2 attempts" in error
    assert "NETWORK_CONNECTION" in error or "Could not connect" in error, error
    assert error.endswith("run the same command again and it resumes where this run stopped.")
    settle(folder)  # the failed run's workers are gone (as after any crash)
    kept = set(finished_files(folder))
    done = read_folder(folder, PREDICTIONS).num_rows
    assert 0 < done < N_ROWS
    assert not output_files(folder, ERRORS)  # no row blamed for the storage's outage

    # The same command again, with the default retries; the server restarts midway.
    second_log = tmp_path / "second.log"
    second = start(command, run_env, second_log)
    wait_until(lambda: len(finished_files(folder)) > len(kept), second, second_log)
    faulty_s3.stop()
    faulty_s3.start()
    try:
        assert second.wait(RUN_TIMEOUT_S) == 0, second_log.read_text()[-3000:]
    finally:
        second.kill()
    assert "every row exactly once" in line_starting(f"{N_ROWS} manifest rows", second_log)
    predictions = read_folder(folder, PREDICTIONS)
    assert keys(predictions) == Counter((row["track_id"], row["uri"]) for row in rows)
    assert not output_files(folder, ERRORS)
    assert kept <= set(finished_files(folder))  # resumed: nothing written twice or redone
    record = json.loads(fs.cat(join(folder, "_run.json")))
    assert record["status"] == "complete"
    stopped, resumed = record["attempts"]
    assert "finished_at" not in stopped
    assert (resumed["predictions"], resumed["errors"]) == (N_ROWS - done, 0)


@pytest.mark.integration
@pytest.mark.slow
def test_training_fails_clearly_in_an_outage_then_resumes_from_its_last_checkpoint(
    faulty_s3: SeaweedS3, run_env: dict[str, str], demo_catalogue: str, tmp_path: Path
) -> None:
    runs = join(bucket("outage-training"), "runs")
    config = json.dumps({
        "manifest": demo_catalogue, "model": "spectrogram-small", "vocabulary": VOCABULARY,
        "batch_size": 16, "epochs": 2, "early_stopping_patience": 100, "cache_decoded": False,
        "storage_path": runs, "run_name": "outage", "max_failures": 0,
    })  # fmt: skip
    command = [sys.executable, "-c", FIT, config]
    fs, snapshot = filesystem(join(runs, "outage", "checkpoint_manager_snapshot.json"))

    def latest_checkpoint_epoch() -> int | None:
        fs.invalidate_cache()
        if not fs.exists(snapshot):
            return None
        latest = json.loads(fs.cat(snapshot))["latest_checkpoint_result"]
        return latest and latest["metrics"]["epoch"]

    # The server stops once a checkpoint is in it, and stays down: a clear error, bounded.
    first_log = tmp_path / "first.log"
    first = start(command, {**run_env, **OUTAGE_RETRIES}, first_log)
    wait_until(latest_checkpoint_epoch, first, first_log)
    faulty_s3.stop()
    try:
        assert first.wait(RUN_TIMEOUT_S) != 0, first_log.read_text()[-3000:]
    finally:
        first.kill()
        faulty_s3.start()
    error = line_starting("raytag.train.run.TrainingError: ", first_log)
    assert error.startswith("raytag.train.run.TrainingError: training run 'outage' stopped: ")
    assert f"object storage ({faulty_s3.endpoint}) stopped answering, after 2 attempts" in error
    assert error.endswith(
        f"Its checkpoints stay in {runs}/outage: once the storage answers, run it again "
        "with the same --run-name to resume from the last one."
    )
    assert latest_checkpoint_epoch() == 1  # the second epoch's never reached the storage

    # The same run again resumes from that checkpoint, not from scratch.
    again = subprocess.run(
        command, env=run_env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed == {"start_epoch": 1, "epoch": 2}
