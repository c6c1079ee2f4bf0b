"""Local services on 127.0.0.1: free ports, waiting for a server to answer, and the MLflow
tracking server (the project's own ``mlflow/serve.sh``) that ``raytag demo`` and the tests
start, so both run what operators run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from raytag.tracking import Credentials

SERVE_SCRIPT = Path(__file__).resolve().parents[1] / "mlflow" / "serve.sh"
HOST = "127.0.0.1"
# serve.sh's authentication settings (and MLflow's own), which only ``admin`` decides here.
_AUTH_VARS = ("MLFLOW_AUTH", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens on it, else a port the OS has free on 127.0.0.1."""
    if preferred is not None:
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((HOST, preferred))
            return preferred
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 2) -> int | None:
    """The HTTP status ``url`` answers with (an error status is an answer too), or None when
    nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_http(
    url: str,
    timeout: float,
    proc: subprocess.Popen | None,
    log: Path,
    *,
    waiting: Callable[[], None] | None = None,
    every: float = 15,
) -> None:
    """Until ``url`` answers; fails early when ``proc`` (the server, if this process
    started it) exits, with the end of its ``log``. ``waiting`` runs every ``every`` seconds
    meanwhile, for servers that take a while to start."""
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + every
    while http_status(url) is None:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited early; see {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer in {timeout:.0f} s; see {log}:\n{_tail(log)}")
        if waiting is not None and time.monotonic() > next_note:
            waiting()
            next_note = time.monotonic() + every
        time.sleep(0.25)


class MLflowServer:
    """``mlflow/serve.sh`` on 127.0.0.1 with sqlite under ``home``.

    ``artifacts`` is a folder (default: ``home/artifacts``) or an ``s3://`` URI; ``env``
    goes to the server process only (that is where storage credentials belong); ``port``
    None: any free port. ``admin``: run MLflow's basic-auth app (users in
    ``home/basic_auth.db``), whose admin user these credentials create on the first start,
    through the server's environment; None: no authentication, whatever the caller's
    environment says. A server that :meth:`detach` left running for the same ``home``
    (noted in ``home/server.json``) is found and used again rather than a second one
    opened on the same sqlite file.
    """

    def __init__(
        self,
        home: Path,
        *,
        port: int | None = None,
        artifacts: str | None = None,
        env: dict[str, str] | None = None,
        admin: Credentials | None = None,
    ) -> None:
        self.home = home
        self.port = port
        self.artifacts = artifacts or str(home / "artifacts")
        self.env = env or {}
        self.admin = admin
        self.state = home / "server.json"
        self.log = home / "server.log"
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.reused = False

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def backend(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    def start(self, timeout: float = 300) -> MLflowServer:
        return self.launch().wait(timeout)

    def launch(self) -> MLflowServer:
        """Start the server without waiting for it (imports and database migrations take a
        while), so other work overlaps its start-up; or find the running one."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self._find_running():
            return self
        if not SERVE_SCRIPT.is_file():
            raise FileNotFoundError(f"{SERVE_SCRIPT} not found: run from a checkout")
        self.port = self.port or free_port()
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith(_AUTH_VARS)},
            **self._auth_env(),
            **self.env,
            "PYTHON": sys.executable,
            "MLFLOW_HOME": str(self.home),
            "MLFLOW_BACKEND_STORE_URI": self.backend,
            "MLFLOW_ARTIFACTS_DESTINATION": self.artifacts,
            "MLFLOW_HOST": HOST,
            "MLFLOW_PORT": str(self.port),
        }
        # A session of its own: stop() ends the server and its uvicorn workers together,
        # and a detached server outlives this process.
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["bash", str(SERVE_SCRIPT)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=self.home, start_new_session=True,
            )  # fmt: skip
        self.pid = self.proc.pid
        return self

    def _auth_env(self) -> dict[str, str]:
        if self.admin is None:
            return {}
        return {
            "MLFLOW_AUTH": "basic",
            "MLFLOW_AUTH_ADMIN_USERNAME": self.admin.username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin.password,
        }

    def wait(
        self, timeout: float = 300, progress: Callable[[str], None] | None = None
    ) -> MLflowServer:
        """Until /health answers; a server that does not answer in time is stopped."""

        def waiting() -> None:
            if progress is not None:
                progress("MLflow: still starting (imports and database migrations) ...")

        try:
            wait_http(f"{self.uri}/health", timeout, self.proc, self.log, waiting=waiting)
        except TimeoutError:
            self.stop()
            raise
        return self

    def detach(self) -> None:
        """Leave the server running; note it so the next launch (or the user) finds it."""
        self.state.write_text(json.dumps({"pid": self.pid, "port": self.port, "uri": self.uri}))

    def stop(self) -> None:
        """End the server's process group (this process's child or a detached server)."""
        self.state.unlink(missing_ok=True)
        if self.pid is None or not _alive(self.pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(self.pid) and time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            if _alive(self.pid):
                os.killpg(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(5)

    def stop_command(self) -> str:
        return f"kill -- -{self.pid}"

    def restart_command(self) -> str:
        script = os.path.relpath(SERVE_SCRIPT)
        script = str(SERVE_SCRIPT) if script.startswith("..") else script
        auth = "MLFLOW_AUTH=basic " if self.admin else ""
        return (
            f"{auth}MLFLOW_HOME={self.home} MLFLOW_PORT={self.port} {script}, then open {self.uri}"
        )

    def _find_running(self) -> bool:
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return False
        pid, port = state.get("pid"), state.get("port")
        ours = _alive(pid) and self.backend in _cmdline(pid)  # not a recycled pid
        if ours and http_status(f"http://{HOST}:{port}/health") == 200:
            self.pid, self.port, self.reused = pid, port, True
            return True
        self.state.unlink(missing_ok=True)
        return False


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` runs; a server this process started and that has exited is reaped
    here (a zombie would still answer signals)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` (serve.sh execs python, so it names the backend)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def _tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""
