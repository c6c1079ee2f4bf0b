"""What every benchmark result file records beside its numbers: the command that reproduces
it, the machine, the software versions and when it ran, in one format for every script in
``bench/``, so docs/benchmarks.md can cite any result file the same way."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "torchaudio", "torchcodec", "ray", "pyarrow", "numpy", "scikit-learn")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def command_line(script: str, argv: list[str]) -> str:
    """The shell command that reruns ``script`` with ``argv`` from the repository root."""
    relative = Path(os.path.relpath(Path(script).resolve(), ROOT)).as_posix()
    return shlex.join([".venv/bin/python", relative, *argv])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """CPUs, memory and GPU: what a throughput depends on besides the code."""
    import torch

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "load_avg_at_start": load_average(),
    }


def _output(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:  # not installed where the benchmark runs (a lent GPU machine has no git)
        return None


def versions() -> dict:
    """Python, the packages the numbers depend on, and the commit they were measured at."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["git_commit"] = _output(["git", "rev-parse", "HEAD"]) or None
    found["git_dirty_files"] = len((_output(["git", "status", "--porcelain"]) or "").splitlines())
    return found


def new_record(benchmark: str, script: str, argv: list[str]) -> dict:
    """The fields a result file starts with; the script adds its measurements after them."""
    return {
        "benchmark": benchmark,
        "command": command_line(script, argv),
        "started_at": now(),
        "machine": machine(),
        "versions": versions(),
    }


def save(record: dict, path: Path) -> None:
    """Write ``record`` as it stands: scripts save after every stage, so that a later failure
    keeps what was measured; the last save's end time and load average are the run's."""
    record["finished_at"] = now()
    record["machine"]["load_avg_at_end"] = load_average()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
