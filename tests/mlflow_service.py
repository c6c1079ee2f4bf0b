"""A real MLflow tracking server for tests: mlflow/serve.sh on 127.0.0.1, sqlite in a tmp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.services import free_port, wait_http

SERVE_SCRIPT = Path(__file__).resolve().parents[1] / "mlflow" / "serve.sh"


class MLflowServer:
    """The project's own start script, so tests exercise what operators run.

    ``artifacts`` is a folder (default: in ``workdir``) or an ``s3://`` URI; ``env`` goes to
    the server process only (that is where storage credentials belong).
    """

    def __init__(
        self, workdir: Path, artifacts: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.artifacts = artifacts or str(workdir / "artifacts")
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "mlflow.log"

    def start(self) -> MLflowServer:
        return self.launch().wait()

    def launch(self) -> MLflowServer:
        """Start the process without waiting, so that two servers can start side by side."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.env,
            "PYTHON": sys.executable,
            "MLFLOW_HOME": str(self.workdir),
            "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{self.workdir / 'mlflow.db'}",
            "MLFLOW_ARTIFACTS_DESTINATION": self.artifacts,
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(self.port),
        }
        # Its own session: the server forks uvicorn, and stop() ends the whole group.
        self.proc = subprocess.Popen(
            ["bash", str(SERVE_SCRIPT)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        return self

    def wait(self, timeout: float = 120) -> MLflowServer:
        """Until /health answers (start-up is 10-30 s: imports and the sqlite migrations)."""
        assert self.proc is not None, "launch() first"
        wait_http(f"{self.uri}/health", timeout, self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
