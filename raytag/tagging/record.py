"""``_run.json``: the record of a tagging run, claimed before any work and completed
by the final verify.

It names the manifest, the output, the model and where its thresholds came from, and
keeps one entry per attempt (its options, counts, throughput and the seconds spent
planning, tagging and verifying), so an interrupted run and its resumption stay on
record, with the software versions.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import ray

from raytag.manifest import Manifest
from raytag.tagging.options import TagOptions
from raytag.tagging.output import (
    ERROR_CODE,
    ERRORS,
    NO_THRESHOLDS,
    TagError,
    prediction_columns,
    read_output,
    read_run,
    read_thresholds,
    read_vocabulary,
    write_run,
    write_thresholds,
    write_vocabulary,
)
from raytag.tagging.reconcile import VerifyReport, count_values

if TYPE_CHECKING:
    from raytag.checkpoint import LoadedModel


def check_output(
    output: str, model: LoadedModel, thresholds: dict[str, Any], columns: list[str]
) -> None:
    """Refuse, before any work, to add to ``output`` rows unlike those it holds: another
    model's run, another vocabulary, other thresholds (``thresholds``: the
    :func:`~raytag.tagging.output.thresholds_record` of this run), or prediction rows with
    other ``columns`` (another --passthrough or --embedding)."""
    previous = read_run(output)
    vocabulary = read_vocabulary(output)
    if vocabulary is not None and vocabulary != model.vocabulary:
        raise TagError(f"{output} was tagged with another vocabulary; tag into a new --output")
    if previous is not None:
        ran = previous["model"]
        if (ran["name"], ran["version"]) != (model.name, model.version):
            raise TagError(
                f"{output} holds a run of {ran['name']} version {ran['version']}, not "
                f"{model.name} version {model.version}; tag into a new --output"
            )
    recorded = read_thresholds(output)
    if recorded is not None and recorded["values"] != thresholds["values"]:
        raise TagError(
            f"{output} was tagged with other thresholds ({_thresholds_source(recorded)}) "
            f"than this run's ({_thresholds_source(thresholds)}); give the --thresholds it "
            "was tagged with, or tag into a new --output"
        )
    written = prediction_columns(output)
    if written is not None and written != columns:
        raise TagError(
            f"{output} holds predictions with columns {', '.join(written)}; this run "
            f"would write {', '.join(columns)}. Give the --passthrough and --embedding it "
            "was tagged with, or tag into a new --output"
        )


def start_run(
    output: str,
    manifest: Manifest,
    model_uri: str,
    model: LoadedModel,
    thresholds: dict[str, Any],
    started: float,
) -> list[dict[str, Any]]:
    """Claim ``output`` for ``model`` and record its ``thresholds``, once
    :func:`check_output` has passed, before any work.

    Returns the attempts recorded so far; one without ``finished_at`` was interrupted.
    """
    previous = read_run(output)
    earlier = list(previous["attempts"]) if previous else []
    write_vocabulary(output, model.vocabulary)
    write_thresholds(output, thresholds)
    this = {"started_at": _iso(started)}
    record = run_record(manifest, model_uri, model, thresholds, output, None, [*earlier, this])
    write_run(output, record)
    return earlier


def attempt_record(
    started: float,
    written: Counter[str],
    decoding: dict[str, Any],
    options: TagOptions,
    phases: dict[str, float],
) -> dict:
    """This attempt's counts and rates for one model; ``decoding``: what decoding cost and
    where it and the model ran (shared by the models tagged together); ``phases``: seconds
    spent pairing the manifest with the outputs (plan), tagging, and verifying, so a run's
    fixed costs show apart from its throughput."""
    finished = time.time()
    wall_s = max(finished - started, 1e-6)
    rows = written["predictions"] + written["errors"]
    return {
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "wall_s": round(wall_s, 3),
        "predictions": written["predictions"],
        "errors": written["errors"],
        "audio_hours": round(written["audio_seconds"] / 3600, 6),
        "tracks_per_s": round(rows / wall_s, 3),
        "audio_hours_per_hour": round(written["audio_seconds"] / wall_s, 3),
        "phases_s": {name: round(seconds, 3) for name, seconds in phases.items()},
        "decoding": decoding,
        "options": asdict(options),
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
    }


def run_record(
    manifest: Manifest,
    model_uri: str,
    model: LoadedModel,
    thresholds: dict[str, Any],
    output: str,
    report: VerifyReport | None,
    attempts: list[dict[str, Any]],
) -> dict[str, Any]:
    """``_run.json``: ``running`` until the final verify says complete or incomplete;
    ``thresholds``: where those of thresholds.json came from."""
    record: dict[str, Any] = {
        "status": "running" if report is None else "complete" if report.ok else "incomplete",
        "manifest": manifest.uri,
        "output": output,
        "model": {"uri": model_uri, "name": model.name, "version": model.version},
        "thresholds": _thresholds_summary(thresholds),
    }
    if report is not None:
        record["counts"] = {
            "manifest_rows": report.manifest_rows,
            "predictions": report.predictions,
            "errors": report.errors,
            "missing": report.missing,
            "surplus": report.surplus,
            "errors_by_code": _errors_by_code(output),
        }
        record["started_at"] = attempts[0]["started_at"]
        record["finished_at"] = attempts[-1]["finished_at"]
    record["attempts"] = attempts
    record["software"] = _software()
    return record


@dataclass(frozen=True)
class RunSummary:
    """The run as recorded in ``_run.json``, and the one line a run ends with."""

    record: dict[str, Any]
    report: VerifyReport

    def line(self) -> str:
        this = self.record["attempts"][-1]
        return (
            f"{self.report.describe()}. This run: {this['predictions']} tagged, "
            f"{this['errors']} errors in {this['wall_s']:.1f} s "
            f"({this['tracks_per_s']:.2f} tracks/s, {this['audio_hours_per_hour']:.1f} "
            f"audio h/h). Outputs: {self.record['output']}"
        )


def _thresholds_summary(thresholds: dict[str, Any]) -> dict[str, Any]:
    summary = {"source": thresholds["source"], "file": thresholds["file"]}
    if thresholds["source"] == NO_THRESHOLDS:
        summary["note"] = (
            "the model has no thresholds and no --thresholds file was given: the tags "
            "column is null on every row (calibrate the model, or give --thresholds)"
        )
    return summary


def _thresholds_source(thresholds: dict[str, Any]) -> str:
    """Where a thresholds.json's thresholds came from, in words."""
    if thresholds["source"] == NO_THRESHOLDS:
        return "none: the model had no thresholds"
    return f"from {thresholds['file']}" if thresholds["file"] else "the model's own"


def _errors_by_code(output: str) -> dict[str, int]:
    errors = read_output(output, ERRORS, [ERROR_CODE])
    return {} if errors is None else dict(sorted(count_values(errors, ERROR_CODE).items()))


def _software() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("raytag", "ray", "torch", "torchcodec", "pyarrow", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
