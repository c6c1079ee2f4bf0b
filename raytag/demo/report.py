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
    comparison: float  # comparing a new version with the champion, and promoting it
    pretrained: float  # importing musicnn, or finding it imported
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
    reused: bool  # trained by an earlier demo: same settings, or the champion kept
    run_id: str
    recipe: str | None  # a preset from scratch, or "warm start from URI[, encoder frozen]"
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
class PretrainedRecord:
    """The pretrained tagger the real music is also tagged with (musicnn's MTT model),
    imported into the demo's MLflow by this run or an earlier one."""

    name: str
    version: str
    uri: str  # models:/NAME@ALIAS
    reused: bool  # imported by an earlier demo
    model_url: str


@dataclass(frozen=True)
class TaggerRecord:
    """A model of the tagging run, and the thresholds its ``tags`` were decided at (its
    folder's thresholds.json)."""

    name: str
    version: str
    uri: str
    output: str  # its folder of the tagging output
    thresholds: str  # where they came from: "model", "file", or "none" (no tags decided)
    policy: dict[str, Any] | None  # how they were chosen, as the model stores it
    exactly_once: bool

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class TagScore:
    tag: str
    score: float


@dataclass(frozen=True)
class ModelTags:
    """One model's view of one track."""

    model: str  # TaggerRecord.label
    n_patches: int
    decided: tuple[TagScore, ...] | None  # at its thresholds, highest first; None: it has none
    top: tuple[TagScore, ...]  # its highest scores


@dataclass(frozen=True)
class RealTrack:
    track_id: str
    uri: str
    duration_s: float
    by_model: tuple[ModelTags, ...]  # in the order of TaggingRecord.models


@dataclass(frozen=True)
class TaggingRecord:
    """The tagging run: its inputs; the champion's outputs, counts (from its ``_run.json``)
    and speed; every model of the run; the real tracks as each model tags them."""

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
    models: tuple[TaggerRecord, ...]  # the champion first
    real_tracks: tuple[RealTrack, ...]
    max_patches: int


@dataclass(frozen=True)
class MetricChange:
    """One figure of the candidate against the baseline on the same tracks."""

    metric: str  # e.g. "macro ROC-AUC"
    baseline: float | None
    candidate: float | None
    delta: float | None  # candidate - baseline
    ci_low: float | None = None  # confidence interval of the delta
    ci_high: float | None = None


@dataclass(frozen=True)
class ComparisonRecord:
    """A new version against the champion it had to beat, on the same test tracks
    (``raytag compare``), and whether the gate promoted it. The report has one when this
    run put a version forward while another was champion, or reused a champion that has
    a comparison recorded on it."""

    baseline: str  # the champion it was compared with, e.g. "raytag-demo v1"
    candidate: str
    n_tracks: int
    changes: tuple[MetricChange, ...]
    agreement: float | None  # share of (track, tag) decisions the two models agree on
    verdict: str  # better, worse or inconclusive (raytag.evaluate.compare's rule)
    promoted: bool  # the candidate holds the champion alias after this run
    compared_now: bool  # False: as an earlier run recorded it on the version
    confidence_level: float = 0.95  # of the deltas' intervals
    run_url: str | None = None  # the comparison's MLflow run
    plots: tuple[str, ...] = ()  # its PNGs


@dataclass(frozen=True)
class DemoReport:
    workdir: str
    settings: DemoSettings
    timings_s: Timings
    catalogue: CatalogueRecord
    mlflow: MLflowRecord
    ray: RayRecord
    model: ModelRecord
    pretrained: PretrainedRecord | None  # None: musicnn's wheel was not at hand
    tagging: TaggingRecord
    log_path: str  # Ray's, Ray Data's and MLflow's output
    report_path: str  # where report.json is
    html_path: str  # where report.html is
    comparison: ComparisonRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        """report.json: every field but the report's own paths; ``comparison`` when set."""
        record = {
            "workdir": self.workdir,
            "settings": asdict(self.settings),
            "timings_s": asdict(self.timings_s),
            "catalogue": asdict(self.catalogue),
            "mlflow": self.mlflow.to_dict(),
            "ray": asdict(self.ray),
            "model": self.model.to_dict(),
            "pretrained": None if self.pretrained is None else asdict(self.pretrained),
            "tagging": asdict(self.tagging),
            "log": self.log_path,
        }
        if self.comparison is not None:
            record["comparison"] = asdict(self.comparison)
        return record


def format_report(report: DemoReport) -> str:
    """The report as a newcomer reads it: quality, real tracks, counts, speed, where things are."""
    model, tagging, catalogue = report.model, report.tagging, report.catalogue
    timings = report.timings_s
    steps = {k: v for k, v in asdict(timings).items() if k != "total"}
    lines = [
        f"raytag demo: done in {format_duration(timings.total)}",
        "",
        f"Catalogue  {catalogue.tracks} labelled tracks "
        f"({', '.join(f'{n} {s}' for s, n in catalogue.splits.items())}), "
        f"{'reused' if catalogue.reused else 'rendered now'}: {catalogue.manifest}",
        f"Model      {model.name} version {model.version} = {model.uri} "
        f"({model.recipe}, {_plural(model.epochs, 'epoch')}, {model_status(report)})",
        "",
        *_quality_lines(model.metrics),
        *_comparison_lines(report.comparison),
        "",
        *_real_music_lines(tagging),
        "",
        *_tagging_lines(tagging),
        "",
        *_where_lines(report),
        "",
        "Timings    " + ", ".join(f"{k} {format_duration(v)}" for k, v in steps.items()),
    ]
    return "\n".join(lines)


# What a model's tags were decided at, by thresholds.json's "source".
THRESHOLDS_SOURCES = {
    "model": "at the thresholds stored with it",
    "file": "at thresholds from a file",
    "none": "no thresholds stored: top scores only",
}
# Per-tag columns of the terminal table: (field of TagMetrics, heading, width).
_AUC_COLUMNS = (("roc_auc", "ROC-AUC", 8), ("pr_auc", "PR-AUC", 8))
_DECISION_COLUMNS = (("threshold", "thresh", 8), ("precision", "prec", 7),
                     ("recall", "recall", 7), ("f1", "F1", 7))  # fmt: skip


def _quality_lines(metrics: Evaluation) -> list[str]:
    """The test split's macro figures and one line per tag; the figures at the stored
    thresholds when the evaluation has them."""
    columns = _AUC_COLUMNS + (_DECISION_COLUMNS if metrics.at_thresholds else ())
    lines = [
        f"Held-out test split ({metrics.n_tracks} tracks): macro ROC-AUC "
        f"{fmt(metrics.macro_roc_auc)}, macro PR-AUC {fmt(metrics.macro_pr_auc)} "
        f"({metrics.n_tags_scored} of {metrics.n_tags} tags scored)"
    ]
    if metrics.at_thresholds:
        lines.append(
            f"  at the stored thresholds: macro precision {fmt(metrics.macro_precision)}, "
            f"recall {fmt(metrics.macro_recall)}, F1 {fmt(metrics.macro_f1)}"
        )
    heading = "".join(f"{label:>{width}}" for _, label, width in columns)
    lines.append(f"  {'tag':<20}{'pos':>5}{heading}")
    for row in metrics.per_tag:
        figures = "".join(f"{fmt(getattr(row, key)):>{width}}" for key, _, width in columns)
        reason = f"  ({row.reason})" if row.reason else ""
        lines.append(f"  {row.tag:<20}{row.n_positive:>5}{figures}{reason}")
    return lines


def model_status(report: DemoReport) -> str:
    """How this run came by its champion: trained now, reused, or kept because the gate
    refused the version trained to replace it."""
    comparison = report.comparison
    if comparison is not None and not comparison.promoted:
        return f"kept: {comparison.candidate} was not promoted"
    return "reused: same settings and catalogue" if report.model.reused else "trained now"


# How the verdict follows from the interval of the macro ROC-AUC change.
VERDICT_RULES = {"better": "lies above 0", "worse": "lies below 0", "inconclusive": "contains 0"}


def comparison_outcome(comparison: ComparisonRecord) -> str:
    """The verdict, the rule that gave it and what the promotion gate made of it."""
    rule = (f"the {comparison.confidence_level:.0%} interval of the macro ROC-AUC change "
            f"{VERDICT_RULES[comparison.verdict]}")  # fmt: skip
    if comparison.promoted:
        outcome = f"{comparison.candidate} was promoted to champion"
    else:
        outcome = (f"the gate refuses a worse version, so {comparison.baseline} stays champion "
                   "and tags the tracks")  # fmt: skip
    return f"Verdict {comparison.verdict} ({rule}): {outcome}."


def _comparison_lines(comparison: ComparisonRecord | None) -> list[str]:
    if comparison is None:
        return []
    earlier = "" if comparison.compared_now else "; compared by an earlier run"
    lines = [
        "",
        f"Against the previous champion ({comparison.baseline} -> {comparison.candidate}, "
        f"{comparison.n_tracks} test tracks{earlier})",
    ]
    for change in comparison.changes:
        interval = ""
        if change.ci_low is not None and change.ci_high is not None:
            interval = (f" ({comparison.confidence_level:.0%} CI {change.ci_low:+.3f} .. "
                        f"{change.ci_high:+.3f})")  # fmt: skip
        delta = "n/a" if change.delta is None else f"{change.delta:+.3f}"
        lines.append(f"  {change.metric:<16}{fmt(change.baseline)} -> "
                     f"{fmt(change.candidate)}  {delta}{interval}")  # fmt: skip
    if comparison.agreement is not None:
        lines.append(f"  decided tags agree on {comparison.agreement:.1%} of track-tag pairs")
    lines.append(f"  {comparison_outcome(comparison)}")
    return lines


def _real_music_lines(tagging: TaggingRecord) -> list[str]:
    lines = [f"Real music (at most {tagging.max_patches} patches per track): the tags each model "
             "decides, highest score first"]  # fmt: skip
    for tagger in tagging.models:
        lines.append(f"  {tagger.label:<22}{tagger.uri}  ({thresholds_note(tagger)})")
    if not tagging.real_tracks:
        lines.append("  no real tracks found (make setup installs singularity-music)")
    width = max((len(m.label) for m in tagging.models), default=0) + 2
    for track in tagging.real_tracks:
        lines.append(f"  {track.track_id.removeprefix('real/')}  "
                     f"({format_duration(track.duration_s)})")  # fmt: skip
        for tags in track.by_model:
            lines.append(f"    {tags.model:<{width}}{_decided_and_top(tags)}")
    return lines


def thresholds_note(tagger: TaggerRecord) -> str:
    """What a model's tags were decided at, with the rule and split the thresholds were
    chosen by when its policy says."""
    note = THRESHOLDS_SOURCES[tagger.thresholds]
    policy = tagger.policy or {}
    if policy.get("rule"):
        split = f" on the {policy['split']} split" if policy.get("split") else ""
        note += f": {policy['rule']}{split}"
    return note


def _decided_and_top(tags: ModelTags, shown: int = 4) -> str:
    """The decided tags with their scores (the ``shown`` highest, and how many more); the
    top scores for a model without thresholds, or when it decides none."""
    if tags.decided is None:
        return f"top: {_listed(tags.top[:3])}"
    if not tags.decided:
        return f"tags: none above its thresholds; top: {_listed(tags.top[:3])}"
    more = len(tags.decided) - shown
    return f"tags: {_listed(tags.decided[:shown])}" + (f" (+{more} more)" if more > 0 else "")


def _listed(scores: tuple[TagScore, ...]) -> str:
    return ", ".join(f"{t.tag} {t.score:.2f}" for t in scores)


def _tagging_lines(tagging: TaggingRecord) -> list[str]:
    counts, speed = tagging.counts, tagging.throughput
    by_code = ", ".join(f"{code} {n}" for code, n in counts["errors_by_code"].items()) or "none"
    complete = all(m.exactly_once for m in tagging.models) and tagging.exactly_once
    earlier = "; by an earlier run: this one found nothing left to tag"
    return [
        f"Tagging    {counts['manifest_rows']} manifest rows = {counts['predictions']} "
        f"predictions + {counts['errors']} errors ({by_code}),",
        f"           for each of {_plural(len(tagging.models), 'model')}, each track decoded "
        f"once: {'every row exactly once' if complete else 'INCOMPLETE'}",
        f"           {fmt(speed.tracks_per_s, 2)} tracks/s, "
        f"{fmt(speed.audio_hours_per_hour, 1)} audio hours per hour on "
        f"{_int(speed.cluster.get('CPU'))} CPUs "
        f"({speed.predictions} + {speed.errors} rows in {fmt(speed.wall_s, 1)} s"
        f"{'' if tagging.tagged_this_run else earlier})",
    ]


def _where_lines(report: DemoReport) -> list[str]:
    model, tagging, server = report.model, report.tagging, report.mlflow
    lines = [
        "Where things are",
        f"  report        {report.html_path} (open in a browser; also {report.report_path})",
        f"  predictions   {tagging.predictions}/*.parquet",
        f"  errors        {tagging.errors}/*.parquet",
        f"  run summary   {tagging.run_file}",
        *(f"  {m.name:<13} {m.output}" for m in tagging.models[1:]),
        f"  plots         {model.plots}/*.png",
        f"  logs          {report.log_path} (Ray, Ray Data, MLflow)",
        f"  MLflow run    {model.run_url}",
        f"  model         {model.model_url}",
    ]
    if report.comparison is not None and report.comparison.run_url:
        lines.append(f"  comparison    {report.comparison.run_url}")
    if server.running:
        lines.append(f"  MLflow UI     open {server.uri} (running; stop: {server.stop})")
    else:
        lines.append(f"  MLflow UI     stopped; to browse: {server.restart}")
    return lines


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
