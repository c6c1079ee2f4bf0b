"""MLflow with authentication: mlflow/serve.sh's basic-auth server, for real on 127.0.0.1.

With credentials in the environment, training (a `ray job submit` to a head whose
environment holds them, as a cluster node's does), evaluation, the registry and tagging
from ``models:/NAME@alias`` work; without them, with wrong ones, or as a user without the
permission, each command fails with one clear line; and no password is written anywhere:
the server's files and logs, Ray's, the job's record, the MLflow run, the registered model
or the outputs."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from click.testing import CliRunner, Result
from mlflow.server import get_app_client

from raytag.cli import main
from raytag.services import MLflowServer
from raytag.tracking import Credentials, TrackingAccessError
from raytag.train import TrainConfig, run_training
from tests.services import RayHead

ADMIN = Credentials("admin", secrets.token_urlsafe(18))
TRAINER = Credentials("trainer", secrets.token_urlsafe(18))  # trains, registers, tags
VIEWER = Credentials("viewer", secrets.token_urlsafe(18))  # the default permission: READ
PASSWORDS = (ADMIN.password, TRAINER.password, VIEWER.password)
MODEL = "auth-tagger"
CHAMPION = f"models:/{MODEL}@champion"


@pytest.fixture(scope="module")
def launched_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """The authenticated server, its admin from the server's environment, still starting."""
    server = MLflowServer(tmp_path_factory.mktemp("mlflow-auth"), admin=ADMIN).launch()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_server(launched_server: MLflowServer) -> MLflowServer:
    """The server once it answers, with two users the admin creates through MLflow's auth
    API."""
    server = launched_server.wait()
    with pytest.MonkeyPatch.context() as env:
        _sign_in(env, server, ADMIN)
        users = get_app_client("basic-auth", tracking_uri=server.uri)
        for user in (TRAINER, VIEWER):
            users.create_user(user.username, user.password)
    return server


@pytest.fixture(scope="module")
def trainer_head(
    launched_server: MLflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RayHead]:
    """A `ray start --head` node with the trainer's credentials in its environment: where
    the job's driver and its Ray Train workers find them. (It starts while the server does.)"""
    head = RayHead(tmp_path_factory.mktemp("ray-head-auth"), env=TRAINER.env()).start()
    yield head
    head.stop()


@pytest.fixture(scope="module")
def small_manifest(demo_catalogue: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Twelve training, four validation and four test tracks of the demo catalogue: enough
    to train for an epoch, evaluate and tag, and no more."""
    table = pa.concat_tables(
        pq.read_table(demo_catalogue, filters=[("split", "==", split)]).slice(0, n)
        for split, n in (("train", 12), ("valid", 4), ("test", 4))
    )
    path = tmp_path_factory.mktemp("small") / "manifest.parquet"
    pq.write_table(table, path)
    return str(path)


@dataclass
class Used:
    """What the trainer did with credentials, and everything it left behind."""

    job: dict  # the training job's record in Ray (details and driver log)
    job_stdout: str
    workdir: Path  # checkpoints, evaluation, tagging output
    cli: dict[str, Result]
    logged: list[str]  # the records of MLflow's, requests' and raytag's loggers


@pytest.fixture(scope="module")
def used(
    trainer_head: RayHead,
    auth_server: MLflowServer,
    ray_local: str,
    small_manifest: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Used]:
    """One short training run as a Ray job, then evaluation, registry and tagging through
    the CLI, all as the trainer, with the client libraries' logs recorded."""
    workdir = tmp_path_factory.mktemp("used")
    logged = _LogRecorder()
    with pytest.MonkeyPatch.context() as env, logged:
        submission = f"auth-train-{secrets.token_hex(3)}"
        # No MLflow credentials leave this process: the job reaches MLflow with the node's.
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        submit = trainer_head.submit(
            "jobs/train.py", "--manifest", small_manifest, "--vocabulary", "demo",
            "--epochs", "1", "--batch-size", "16", "--val-patches-per-track", "1",
            "--storage-path", str(workdir / "runs"),
            "--run-name", "auth-job", "--experiment", "auth",
            "--registered-model", MODEL, "--alias", "champion",
            env_vars={"MLFLOW_TRACKING_URI": auth_server.uri}, submission_id=submission,
            client_env=client_env,
        )  # fmt: skip
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
        job = trainer_head.job_record(submission)

        _sign_in(env, auth_server, TRAINER)
        checkpoint = min((workdir / "runs" / "auth-job").glob("checkpoint_*"))
        commands = {
            "evaluate": ["evaluate", "--model", CHAMPION, "--manifest", small_manifest,
                         "--split", "test", "--output", str(workdir / "metrics.json")],
            "registry log": ["registry", "log", str(checkpoint), "--name", MODEL,
                             "--alias", "challenger", "--experiment", "auth"],
            "registry alias": ["registry", "alias", MODEL, "2", "staging"],
            "registry promote": ["registry", "promote", MODEL, "2", "--alias", "production"],
            "registry list": ["registry", "list", MODEL],
            "tag": ["tag", "--manifest", small_manifest, "--model", CHAMPION,
                    "--output", str(workdir / "tagged"), "--max-patches", "1"],
        }  # fmt: skip
        cli = {name: CliRunner().invoke(main, args) for name, args in commands.items()}
    yield Used(job, submit.stdout + submit.stderr, workdir, cli, logged.messages)


def test_with_credentials_training_evaluation_registry_and_tagging_work(
    used: Used, auth_server: MLflowServer, small_manifest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, result in used.cli.items():
        assert result.exit_code == 0, f"{name}: {result.output}"
    _sign_in(monkeypatch, auth_server, TRAINER)
    client = mlflow.MlflowClient()

    # Training: the driver registered version 1 as champion, and rank 0, on a Ray worker,
    # logged the epoch's metrics with the node's credentials.
    summary = json.loads(used.job_stdout[used.job_stdout.index('{"run_id"') :].splitlines()[0])
    assert (summary["version"], summary["alias"]) == ("1", "champion")
    assert client.get_run(summary["run_id"]).data.params["model"] == "spectrogram-small"
    assert [m.step for m in client.get_metric_history(summary["run_id"], "val_loss")] == [1]

    # Evaluation of the champion, the registry's versions and aliases, and tagging.
    assert json.loads(used.cli["evaluate"].stdout)["n_tracks"] > 0
    assert used.cli["registry log"].stdout.splitlines()[-1].startswith(f"{MODEL} version 2 (")
    aliases = client.get_registered_model(MODEL).aliases
    set_here = {"champion": "1", "challenger": "2", "staging": "2", "production": "2"}
    assert set_here.items() <= aliases.items()
    assert used.cli["registry list"].stdout.count(MODEL) == 2
    tagged = used.workdir / "tagged" / f"{MODEL}-v1"
    assert json.loads((tagged / "_run.json").read_text())["status"] == "complete"
    rows = pq.read_metadata(small_manifest).num_rows
    assert pq.read_table(tagged / "predictions").num_rows == rows


def test_no_password_is_written_anywhere(
    used: Used,
    auth_server: MLflowServer,
    trainer_head: RayHead,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every file the server, the Ray head (its session logs too) and the commands wrote.
    folders = [auth_server.home, trainer_head.workdir, Path(trainer_head.temp), used.workdir]
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file()]
    assert {auth_server.log, used.workdir / "tagged" / f"{MODEL}-v1" / "_run.json"} <= set(files)
    # The scan reads what is stored: the user database holds the names, not the passwords.
    assert TRAINER.username.encode() in (auth_server.home / "basic_auth.db").read_bytes()
    for path in files:
        content = path.read_bytes()
        leaked = [i for i, password in enumerate(PASSWORDS) if password.encode() in content]
        assert not leaked, f"{path} holds password {leaked}"

    # What Ray keeps of the job, what the commands printed and what the clients logged.
    said = [json.dumps(used.job), used.job_stdout, *used.logged]
    said += [result.output for result in used.cli.values()]
    assert used.logged and "MLFLOW_TRACKING_URI" in used.job["runtime_env"]["env_vars"]
    assert not [text for text in said for password in PASSWORDS if password in text]

    # The MLflow runs' params and tags, and the registered model's, read back.
    _sign_in(monkeypatch, auth_server, ADMIN)
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) >= 2  # the training run and the registry log's run
    model = client.get_registered_model(MODEL)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    stored = [model.description or "", json.dumps(model.tags)]
    stored += [json.dumps([v.description, v.tags, v.source]) for v in versions]
    stored += [json.dumps([r.data.params, r.data.tags]) for r in runs]
    assert not [text for text in stored for password in PASSWORDS if password in text]


COMMANDS = {
    "train": ["train", "--manifest", "{manifest}", "--vocabulary", "demo", "--epochs", "1",
              "--storage-path", "{tmp}/runs", "--run-name", "refused", "--experiment", "auth"],
    "evaluate": ["evaluate", "--model", CHAMPION, "--manifest", "{manifest}",
                 "--output", "{tmp}/metrics.json"],
    "registry log": ["registry", "log", "{tmp}", "--name", MODEL, "--experiment", "auth"],
    "registry alias": ["registry", "alias", MODEL, "1", "refused"],
    "registry promote": ["registry", "promote", MODEL, "1", "--alias", "refused"],
    "registry list": ["registry", "list"],
    "tag": ["tag", "--manifest", "{manifest}", "--model", CHAMPION, "--output", "{tmp}/tagged"],
}  # fmt: skip


@pytest.mark.parametrize("credentials", [None, Credentials("trainer", "not-" + TRAINER.password)])
def test_without_credentials_or_with_wrong_ones_each_command_fails_in_one_line(
    credentials: Credentials | None,
    auth_server: MLflowServer,
    ray_local: str,
    small_manifest: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sign_in(monkeypatch, auth_server, credentials)
    server = f"the MLflow server at {auth_server.uri}"
    said = (
        f"{server} requires authentication and this process has no credentials: set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in its environment"
        if credentials is None
        else f"{server} refused user 'trainer': check MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD in this process's environment"
    )
    for name, args in COMMANDS.items():
        args = [a.format(manifest=small_manifest, tmp=tmp_path) for a in args]
        result = CliRunner().invoke(main, args)
        assert (result.exit_code, result.output) == (1, f"Error: {said}\n"), name
    assert not (tmp_path / "runs").exists()  # training stopped before Ray Train started


def test_training_refuses_to_start_when_the_ray_workers_lack_credentials(
    auth_server: MLflowServer,
    ray_local: str,
    small_manifest: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """This process has the credentials, the session's Ray workers (started without them)
    do not: rank 0 could not log, so the run fails before it starts, saying where."""
    _sign_in(monkeypatch, auth_server, TRAINER)
    config = TrainConfig(manifest=small_manifest, storage_path=str(tmp_path / "runs"), epochs=1)
    (node,) = ray.nodes()  # the one node of ray_local, as Ray names it
    where = re.escape(node["NodeManagerAddress"])
    refused = rf"in a Ray worker on node {where} .*MLFLOW_TRACKING_USERNAME"
    with pytest.raises(TrackingAccessError, match=refused):
        run_training(config, experiment="auth-no-workers")
    assert mlflow.MlflowClient().get_experiment_by_name("auth-no-workers") is None
    assert not (tmp_path / "runs").exists()


def test_a_user_without_the_permission_is_told_so_until_the_admin_grants_it(
    used: Used, auth_server: MLflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The viewer may read the registry (READ, the default permission) but not move the
    trainer's aliases, until the admin grants EDIT on the model (as mlflow/README.md says)."""
    _sign_in(monkeypatch, auth_server, VIEWER)
    assert CliRunner().invoke(main, ["registry", "list", MODEL]).exit_code == 0
    alias = ["registry", "alias", MODEL, "1", "viewer-pick"]
    refused = CliRunner().invoke(main, alias)
    assert (refused.exit_code, refused.output) == (1, (
        f"Error: the MLflow server at {auth_server.uri} does not let user 'viewer' "
        "(MLFLOW_TRACKING_USERNAME) do this: an admin grants permissions on the experiment "
        "or registered model (mlflow/README.md)\n"
    ))  # fmt: skip

    _sign_in(monkeypatch, auth_server, ADMIN)
    users = get_app_client("basic-auth", tracking_uri=auth_server.uri)
    users.grant_user_permission("viewer", "registered_model", MODEL, "EDIT")
    _sign_in(monkeypatch, auth_server, VIEWER)
    granted = CliRunner().invoke(main, alias)
    assert granted.exit_code == 0, granted.output


def _sign_in(
    env: pytest.MonkeyPatch, server: MLflowServer, credentials: Credentials | None
) -> None:
    """This process as a client of ``server``, with ``credentials`` (None: none at all)."""
    env.setenv("MLFLOW_TRACKING_URI", server.uri)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        env.delenv(key, raising=False)
    for key, value in (credentials.env() if credentials else {}).items():
        env.setenv(key, value)


class _LogRecorder(logging.Handler):
    """Records what MLflow's, requests', urllib3's and raytag's loggers say, at every level."""

    LOGGERS = ("mlflow", "urllib3", "requests", "raytag")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _LogRecorder:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self.levels[name] = logger.level
            logger.setLevel(logging.DEBUG)
            logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.setLevel(self.levels[name])
