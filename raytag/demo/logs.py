"""Where the demo's noise goes: everything Ray, Ray Data and MLflow print in this process
lands in a log file, so the terminal shows the demo's own lines and its report.

:func:`output_to_log` points this process's standard output and error, the file
descriptors as well as ``sys.stdout`` / ``sys.stderr``, at the log while the demo runs.
So the log receives, whatever wrote it:

- the ``ray``, ``ray.data`` and ``mlflow`` loggers' console handlers (Ray's hold the
  ``sys.stderr`` of their creation, hence the descriptors and not only ``sys.stderr``);
- Ray Data's progress: with standard output not a terminal, Ray Data logs its progress as
  INFO lines of the ``ray.data`` logger instead of drawing bars;
- the Ray workers' output, which the driver prints as it arrives
  (``ray.init(log_to_driver=True)``);
- MLflow's printed run links and registry messages, Python's warnings, and what Ray's C++
  core writes to standard error.

The demo's own lines go to a copy of standard error taken before, the terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

LOG_FILE = "demo.log"  # in the workdir, rewritten by each run
_STDOUT, _STDERR = 1, 2


@contextlib.contextmanager
def output_to_log(path: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """While the block runs, standard output and error are ``path`` (rewritten, line by
    line); yields the log and the terminal (standard error as it was). Both are restored
    when the block ends, also on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _flush()
    saved = {fd: os.dup(fd) for fd in (_STDOUT, _STDERR)}
    try:
        with (
            path.open("w", buffering=1, encoding="utf-8") as log,
            os.fdopen(os.dup(saved[_STDERR]), "w", buffering=1, encoding="utf-8") as terminal,
        ):
            for fd in saved:
                os.dup2(log.fileno(), fd)
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    yield log, terminal
            finally:
                _flush()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
    finally:
        for copy in saved.values():
            os.close(copy)


def _flush() -> None:
    """Out with what this process's streams hold, before their descriptors change."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
