"""Shared fixtures: real services on 127.0.0.1, started once per session."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from raytag.services import MLflowServer, free_port
from tests.services import RayHead, SeaweedS3

RAY_TOKEN_FOLDER = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Ray token authentication on for every Ray the session starts or reaches (ray_local,
    the RayHead, the fleet's child process, `ray job submit`), as on the cluster, with a
    token of the session's own passed as a user passes theirs: RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN_PATH in the environment, which child processes inherit. Set before any
    test module imports ray, which reads the mode once; never the user's ~/.ray/auth_token.
    """
    folder = Path(tempfile.mkdtemp(prefix="raytag-ray-auth-"))  # private to this user
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))  # as `ray get-auth-token --generate` makes one
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    config.stash[RAY_TOKEN_FOLDER] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    if RAY_TOKEN_FOLDER in config.stash:
        shutil.rmtree(config.stash[RAY_TOKEN_FOLDER], ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """Point this test's process at the S3 server through the environment only."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: SeaweedS3, request: pytest.FixtureRequest) -> str:
    """A fresh bucket for one test, as an ``s3://`` URI."""
    import s3fs

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = "".join(c for c in name if c.isalnum() or c == "-") + f"-{os.getpid() % 1000}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env.endpoint})
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local() -> Iterator[str]:
    """A real local Ray cluster for the whole session, in this process (2 CPUs, loopback),
    with token authentication on (pytest_configure).

    ``address="local"`` forces a new cluster even when a `ray start` head is running. The
    dashboard (on a free loopback port) serves the state API that failure tests use to
    find the worker and actor processes they kill.
    """
    import ray

    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield f"http://{context.dashboard_url}"  # the state API of this cluster, not another
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """A real MLflow tracking server (mlflow/serve.sh, sqlite, local artifacts) on 127.0.0.1."""
    server = MLflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_env(mlflow_server: MLflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point this test's MLflow client at the server through MLFLOW_TRACKING_URI only."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    # The active experiment outlives a test: one of another server (a demo's) would be
    # looked up here by its id.
    mlflow.set_experiment("Default")
    yield mlflow_server.uri
    mlflow.end_run()  # a failed test must not leave its run active for the next one


@pytest.fixture(scope="session")
def demo_catalogue(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small labelled catalogue (raytag.catalogue) for training tests: its manifest URI."""
    from raytag.catalogue import synthesize

    return synthesize(
        str(tmp_path_factory.mktemp("catalogue")), 80, seed=3, duration_s=6.0,
        splits=(0.7, 0.15, 0.15),
    )  # fmt: skip


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedS3) -> Iterator[RayHead]:
    """A `ray start --head` node for `ray job submit` tests; like a cluster node, it has the
    object-storage credentials in its environment."""
    head = RayHead(tmp_path_factory.mktemp("ray-head"), env=s3_server.env).start()
    yield head
    head.stop()


# Fixtures that start a real service (Ray, MLflow, S3) or render the demo catalogue: a test
# that uses one, directly or through another fixture, is an integration test. The rest are
# unit tests of pure logic, `make test-fast`'s inner loop.
SERVICE_FIXTURES = frozenset(
    {"ray_local", "ray_head", "mlflow_server", "s3_server", "demo_catalogue"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
