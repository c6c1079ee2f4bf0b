"""What the demo says while it runs: time-stamped lines, each training epoch as it ends,
and a periodic status for steps that report nothing themselves."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from raytag.demo.report import format_duration


def printer(stream: TextIO) -> Callable[[str], None]:
    """A progress sink writing lines to ``stream``: this one, even after ``sys.stderr`` has
    been pointed elsewhere (the demo points it at its log)."""

    def say(message: str) -> None:
        print(message, file=stream, flush=True)

    return say


def both(*sinks: Callable[[str], None]) -> Callable[[str], None]:
    """One progress sink that says each line to all of ``sinks``."""

    def say(message: str) -> None:
        for sink in sinks:
            sink(message)

    return say


class Clock:
    """Progress lines stamped with the time since the demo started."""

    def __init__(self, sink: Callable[[str], None], started: float) -> None:
        self.sink, self.started = sink, started

    def __call__(self, message: str) -> None:
        self.sink(f"[demo {format_duration(time.monotonic() - self.started):>5}] {message}")


def since(started: float) -> float:
    """Seconds since ``started`` (a time.monotonic()), as the report records them."""
    return round(time.monotonic() - started, 1)


class _Watcher(threading.Thread):
    """A daemon thread for the length of a ``with`` block: ``poll`` runs every ``every``
    seconds, and (with ``last_look``) once more as the block ends."""

    def __init__(self, every: float, join_s: float, *, last_look: bool) -> None:
        super().__init__(daemon=True)
        self.every, self.join_s, self.last_look = every, join_s, last_look
        self.done = threading.Event()

    def __enter__(self) -> _Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(self.join_s)

    def run(self) -> None:
        while True:
            stopping = self.done.wait(self.every)
            if stopping and not self.last_look:
                return
            with contextlib.suppress(Exception):  # progress only: never fail the demo
                self.poll()
            if stopping:
                return

    def poll(self) -> None:
        raise NotImplementedError


class EpochWatcher(_Watcher):
    """Reports each finished epoch while Ray Train runs, from the metrics that rank 0 logs
    to MLflow (the training workers' own output stays in Ray's logs); one last look after
    training ends catches the final epoch."""

    def __init__(self, client: Any, experiment: str, run_name: str, epochs: int, say: Clock):
        super().__init__(every=3, join_s=15, last_look=True)
        self.client, self.experiment, self.run_name = client, experiment, run_name
        self.epochs, self.say = epochs, say
        self.run_id: str | None = None
        self.seen = 0

    def poll(self) -> None:
        from raytag.registry import find_runs

        if self.run_id is None:
            runs = find_runs(self.experiment, self.run_name)
            self.run_id = runs[0].info.run_id if runs else None
        if self.run_id is None:
            return
        history = {
            key: {m.step: m.value for m in self.client.get_metric_history(self.run_id, key)}
            for key in ("train_loss", "val_loss")
        }
        for step in sorted(history["val_loss"]):
            if step > self.seen and step in history["train_loss"]:
                self.seen = step
                self.say(f"training: epoch {step}/{self.epochs}  train loss "
                         f"{history['train_loss'][step]:.4f}  val loss "
                         f"{history['val_loss'][step]:.4f}")  # fmt: skip


class Ticker(_Watcher):
    """Says ``status()`` every ``every`` seconds until the block ends; silent for steps that
    end sooner."""

    def __init__(self, say: Clock, status: Callable[[], str], every: float = 15) -> None:
        super().__init__(every=every, join_s=5, last_look=False)
        self.say, self.status = say, status

    def poll(self) -> None:
        self.say(self.status())
