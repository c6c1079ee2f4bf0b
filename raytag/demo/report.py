"""The demo's report: what it holds (written to report.json) and how a newcomer reads it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from raytag.demo.settings import DemoSettings

if TYPE_CHECKING:
    from raytag.evaluate import Evaluation


@dataclass(frozen=True)
class Timings:
    """Seconds each step took."""

    catalogue: float
    mlflow_start: float
    training: float
    tagging: float
    total: float


@dataclass(frozen=True)
class CatalogueRecord:
    tracks: int
    splits: dict[str, int]  # tracks per split
    manifest: str
    reused: bool  # found as an earlier run rendered it


@dataclass(frozen=True)
class MLflowRecord:
    """The tracking server and, depending on whether it was kept running, how to stop it
    (``pid``, ``stop``) or start it again (``restart``)."""

    uri: str
    home: str
    reused: bool  # left running by an earlier demo
    running: bool
    pid: int | None = None
    stop: str | None = None
    restart: str | None = None

    def to_dict(self) -> dict[str, Any]:
        optional = ("pid", "stop", "restart")
        return {k: v for k, v in asdict(self).items() if v is not None or k not in optional}


@dataclass(frozen=True)
class RayRecord:
    cpus: int


@dataclass(frozen=True)
class ModelRecord:
    """The champion: its registered version, training run and test evaluation."""

    name: str
    version: str
    uri: str  # models:/NAME@ALIAS
    reused: bool  # trained by an earlier demo with the same settings and catalogue
    run_id: str
    arch: str | None
    epochs: int
    run_url: str
    model_url: str
    metrics: Evaluation  # on the held-out test split
    plots: str  # folder of the evaluation's PNGs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"metrics": self.metrics.to_dict()}


@dataclass(frozen=True)
class TagInputs:
    """Rows of the tagging manifest by where they come from."""

    catalogue: int
    real: int
    bad: int


@dataclass(frozen=True)
class Throughput:
    """The last tagging attempt that tagged anything, as its run record has it."""

    wall_s: float | None
    predictions: int | None
    errors: int | None
    audio_hours: float | None
    tracks_per_s: float | None
    audio_hours_per_hour: float | None
    cluster: dict[str, float]  # the Ray resources it ran on
    started_at: str | None


@dataclass(frozen=True)
class TagScore:
    tag: str
    score: float


@dataclass(frozen=True)
class RealTrack:
    track_id: str
    uri: str
    duration_s: float
    n_patches: int
    top_tags: tuple[TagScore, ...]


@dataclass(frozen=True)
class TaggingRecord:
    """The tagging run: its inputs, outputs, counts (from its ``_run.json``) and speed."""

    manifest: str
    inputs: TagInputs
    output: str
    predictions: str
    errors: str
    run_file: str
    counts: dict[str, Any]  # the run record's counts: manifest_rows, predictions, errors...
    exactly_once: bool  # verify found every manifest row in the output exactly once
    resumed: bool
    tagged_this_run: int
    throughput: Throughput
    real_tracks: tuple[RealTrack, ...]
    max_patches: int


@dataclass(frozen=True)
class DemoReport:
    workdir: str
    settings: DemoSettings
    timings_s: Timings
    catalogue: CatalogueRecord
    mlflow: MLflowRecord
    ray: RayRecord
    model: ModelRecord
    tagging: TaggingRecord
    report_path: str  # where report.json is

    def to_dict(self) -> dict[str, Any]:
        """report.json: every field but ``report_path``."""
        return {
            "workdir": self.workdir,
            "settings": asdict(self.settings),
            "timings_s": asdict(self.timings_s),
            "catalogue": asdict(self.catalogue),
            "mlflow": self.mlflow.to_dict(),
            "ray": asdict(self.ray),
            "model": self.model.to_dict(),
            "tagging": asdict(self.tagging),
        }


def format_report(report: DemoReport) -> str:
    """The report as a newcomer reads it: quality, real tracks, counts, speed, where things are."""
    model, tagging, catalogue = report.model, report.tagging, report.catalogue
    metrics = model.metrics
    timings = report.timings_s
    lines = [
        f"raytag demo: done in {format_duration(timings.total)}",
        "",
        f"Catalogue  {catalogue.tracks} labelled tracks "
        f"({', '.join(f'{n} {s}' for s, n in catalogue.splits.items())}), "
        f"{'reused' if catalogue.reused else 'rendered now'}: {catalogue.manifest}",
        f"Model      {model.name} version {model.version} = {model.uri} "
        f"({model.arch}, {_plural(model.epochs, 'epoch')}, "
        f"{'reused: same settings and catalogue' if model.reused else 'trained now'})",
        "",
        f"Held-out test split ({metrics.n_tracks} tracks): macro ROC-AUC "
        f"{fmt(metrics.macro_roc_auc)}, macro PR-AUC {fmt(metrics.macro_pr_auc)} "
        f"({metrics.n_tags_scored} of {metrics.n_tags} tags scored)",
        f"  {'tag':<22}{'ROC-AUC':>8}{'PR-AUC':>8}{'positives':>11}",
    ]
    for row in metrics.per_tag:
        lines.append(
            f"  {row.tag:<22}{fmt(row.roc_auc):>8}{fmt(row.pr_auc):>8}"
            f"{row.n_positive:>11}" + (f"  ({row.reason})" if row.reason else "")
        )
    lines += ["", f"Real music, top tags (at most {tagging.max_patches} patches per track)"]
    for track in tagging.real_tracks:
        tags = ", ".join(f"{t.tag} {t.score:.2f}" for t in track.top_tags[:4])
        name = track.track_id.removeprefix("real/")
        lines.append(f"  {name:<34} {format_duration(track.duration_s):>6}  {tags}")
    if not tagging.real_tracks:
        lines.append("  none found (make setup installs singularity-music)")
    counts, speed = tagging.counts, tagging.throughput
    fresh = tagging.tagged_this_run > 0
    by_code = ", ".join(f"{code} {n}" for code, n in counts["errors_by_code"].items()) or "none"
    lines += [
        "",
        f"Tagging    {counts['manifest_rows']} manifest rows = {counts['predictions']} "
        f"predictions + {counts['errors']} errors ({by_code}); "
        f"{'every row exactly once' if tagging.exactly_once else 'INCOMPLETE'}",
        f"           {fmt(speed.tracks_per_s, 2)} tracks/s, "
        f"{fmt(speed.audio_hours_per_hour, 1)} audio hours per hour on "
        f"{_int(speed.cluster.get('CPU'))} CPUs "
        f"({speed.predictions} + {speed.errors} rows in {fmt(speed.wall_s, 1)} s"
        + ("; by an earlier run: this one found nothing left to tag)" if not fresh else ")"),
        "",
        "Where things are",
        f"  predictions   {tagging.predictions}/*.parquet",
        f"  errors        {tagging.errors}/*.parquet",
        f"  run summary   {tagging.run_file}",
        f"  plots         {model.plots}/*.png",
        f"  report        {report.report_path}",
        f"  MLflow run    {model.run_url}",
        f"  model         {model.model_url}",
    ]
    server = report.mlflow
    if server.running:
        lines += [f"  MLflow UI     open {server.uri} (running; stop: {server.stop})"]
    else:
        lines += [f"  MLflow UI     stopped; to browse: {server.restart}"]
    steps = {k: v for k, v in asdict(timings).items() if k != "total"}
    lines += [
        "",
        "Timings    " + ", ".join(f"{k} {format_duration(v)}" for k, v in steps.items()),
    ]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def _plural(n: float | None, noun: str) -> str:
    return f"{_int(n)} {noun}{'' if n == 1 else 's'}"


def _int(value: float | None) -> str:
    return "?" if value is None else str(int(value))
