"""Champion against challenger: two models scored on the same tracks, the differences of
their AUCs with bootstrap confidence intervals, how often their decided tags agree, and a
verdict that ``raytag registry promote`` gates on (:func:`raytag.promotion.promote`).

:func:`compare_models`, step by step:

1. Both models tag the labelled tracks (the manifest's rows of ``split``) in one tagging
   run, each track decoded once (:func:`raytag.tagging.tag_catalogue` with both models, one
   ``NAME-vVERSION`` folder each); each folder's scores are read back
   (:func:`raytag.evaluate.score_predictions`) and paired by ``track_id``, on the tags both
   vocabularies have. A track either model could not score is left out for both.
2. Per tag and macro (the unweighted mean over the tags with positive and negative tracks,
   as :mod:`raytag.evaluate` defines it), each model's ROC-AUC and PR-AUC and their
   difference, candidate minus baseline.
3. A paired bootstrap, ``scipy.stats.bootstrap(paired=True)``: every resample draws tracks
   with replacement and takes both models' scores and the labels of the same tracks (1000
   resamples, seed 0 by default). Each difference gets the 95% percentile interval of its
   resampled values. A tag that a resample leaves with one class has no AUC in it: its
   interval is over the resamples where it has both (``resamples_defined``), which is
   scipy's percentile interval whenever it has both in all of them.
4. Agreement: per tag, the share of tracks on which both models decide the tag alike at
   the thresholds that decided each model's ``tags`` column in the run (its folder's
   ``thresholds.json``: the model's own, ``LoadedModel.thresholds``, or a ``--thresholds``
   file); overall, the share of (track, tag) cells decided alike and of tracks whose
   decided tags are identical. None, with the reason, when a model has no thresholds.

The verdict, from the 95% interval of the macro ROC-AUC difference (candidate minus
baseline):

    worse         the interval lies entirely below 0
    better        the interval lies entirely above 0
    inconclusive  the interval contains 0

Everything is logged to MLflow as a comparison run (params, metrics, ``comparison/``
artifacts: the record as JSON, the per-tag table and the delta plots), and a candidate that
is a registered version is tagged with the run and the verdict
(:func:`raytag.promotion.record_comparison`), where ``promote`` finds it.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from scipy.stats import DegenerateDataWarning, bootstrap, quantile, rankdata

from raytag import promotion, registry
from raytag.evaluate.metrics import TrackScores, compute_metrics
from raytag.evaluate.scoring import read_labelled_tracks, score_predictions
from raytag.storage import arrow_filesystem, join
from raytag.tagging import TagOptions, tag_catalogue
from raytag.tagging.output import read_thresholds, recorded_thresholds
from raytag.thresholds import Thresholds

VERDICTS = ("better", "worse", "inconclusive")
DEFAULT_EXPERIMENT = "raytag-compare"
ARTIFACT_DIR = "comparison"  # the run's artifacts: comparison.json, per_tag.json, plots
PLOT_FILES = ("delta_roc_auc.png", "delta_pr_auc.png")
CANDIDATE_TAG = "raytag.comparison.candidate"  # on the comparison run: NAME/VERSION
# Bootstrap values held in memory at once: resamples x tags x tracks.
_BOOTSTRAP_CELLS = 4_000_000


@dataclass(frozen=True)
class Difference:
    """One figure of both models on the same tracks, the candidate's minus the baseline's,
    and the bootstrap interval of that difference; None where undefined."""

    baseline: float | None
    candidate: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class TagComparison:
    """One tag of both vocabularies: its AUC differences and how often the models agree."""

    tag: str
    n_positive: int
    n_negative: int
    roc_auc: Difference
    pr_auc: Difference
    resamples_defined: int  # resamples in which the tag had positive and negative tracks
    agreement: float | None  # share of tracks both models decide the tag alike on
    reason: str | None = None  # why the AUCs are undefined


@dataclass(frozen=True)
class Comparison:
    """The comparison of a candidate with a baseline on one labelled manifest (plain data;
    :meth:`to_dict` is the JSON the MLflow run holds). ``verdict`` is one of
    :data:`VERDICTS`, by the rule of the module docstring."""

    baseline: dict[str, str]  # uri, name, version
    candidate: dict[str, str]
    manifest: str
    split: str | None
    n_tracks: int  # tracks both models scored
    macro_roc_auc: Difference
    macro_pr_auc: Difference
    per_tag: tuple[TagComparison, ...]
    agreement: float | None  # share of (track, tag) cells decided alike
    tracks_agreeing: float | None  # share of tracks whose decided tags are identical
    agreement_note: str | None  # why there is no agreement
    baseline_only_tags: tuple[str, ...]
    candidate_only_tags: tuple[str, ...]
    left_out: tuple[dict[str, Any], ...]  # tracks a model could not score (error rows)
    verdict: str
    confidence_level: float
    resamples: int
    seed: int
    run_id: str | None = None  # the MLflow comparison run
    plots: tuple[str, ...] | None = None  # the delta plots, when written to a folder

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_models(
    baseline_uri: str,
    candidate_uri: str,
    manifest_uri: str,
    *,
    split: str | None = None,
    output: str | None = None,
    options: TagOptions | None = None,
    resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
    experiment: str = DEFAULT_EXPERIMENT,
    plots_dir: str | Path | None = None,
) -> Comparison:
    """Compare ``candidate_uri`` with ``baseline_uri`` (``models:/...``, ``runs:/...`` or
    folders) on the labelled manifest's tracks of ``split`` (every row when None), as the
    module docstring says, and log the comparison run to MLflow (``MLFLOW_TRACKING_URI``).

    ``output`` keeps both models' tagging outputs (local or ``s3://``; a temporary folder
    by default, which a multi-node cluster cannot share): a rerun with the same manifest
    and split reuses them. ``options`` are the tagging run's (its ``max_patches`` decides
    which patches are scored). With ``plots_dir`` the delta plots are also kept there and
    listed under ``plots``. Raises ValueError when the models share no tag or no tag has
    positive and negative tracks; TagError (the tagging run's) when both URIs are the same
    model version.
    """
    with _folder_or_temporary(output) as folder:
        labelled = _write_labelled(manifest_uri, split, folder)
        summaries = tag_catalogue(labelled, [baseline_uri, candidate_uri], folder, options)
        baseline, candidate = (summary.record["model"] for summary in summaries)
        (base_tracks, base_vocab, base_thresholds), (cand_tracks, cand_vocab, cand_thresholds) = (
            _model_run(summary.record["output"], manifest_uri, split) for summary in summaries
        )
    pair = PairedScores.of(base_tracks, base_vocab, cand_tracks, cand_vocab)
    comparison = _compare(
        pair,
        baseline,
        candidate,
        manifest_uri,
        split,
        agreement=decision_agreement(pair, base_thresholds, cand_thresholds),
        resamples=resamples,
        seed=seed,
        confidence_level=confidence_level,
    )
    with _folder_or_temporary(None if plots_dir is None else str(plots_dir)) as folder:
        plots = write_delta_plots(comparison, folder)
        run_id = _log_run(comparison, experiment, options or TagOptions(), plots)
    candidate_version = registry.registered_version(candidate_uri)
    if candidate_version is not None:
        base = registry.registered_version(baseline_uri)
        promotion.record_comparison(
            *candidate_version,
            run_id=run_id,
            baseline=promotion.version_key(*base) if base else baseline_uri,
            verdict=comparison.verdict,
        )
    kept = None if plots_dir is None else tuple(str(plot) for plot in plots)
    return replace(comparison, run_id=run_id, plots=kept)


@contextmanager
def _folder_or_temporary(output: str | None) -> Iterator[str]:
    if output is not None:
        yield output
        return
    with tempfile.TemporaryDirectory(prefix="raytag-compare-") as tmp:
        yield tmp


def _write_labelled(manifest_uri: str, split: str | None, output: str) -> str:
    """The rows to tag, ``track_id``, ``uri`` and ``tags`` of ``split``, as a manifest
    beside the tagging outputs, where every node of the cluster reads it."""
    rows = read_labelled_tracks(manifest_uri, split)
    if len(rows) < 2:
        where = f"split {split!r} of {manifest_uri}" if split else manifest_uri
        raise ValueError(f"{where} has {len(rows)} labelled tracks: a comparison needs two")
    uri = join(output, f"labelled-{split or 'all'}.parquet")
    fs, path = arrow_filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(pa.Table.from_pylist(rows), path, filesystem=fs)
    return uri


def _model_run(
    folder: str, manifest_uri: str, split: str | None
) -> tuple[TrackScores, list[str], Thresholds | None]:
    """One model's folder of the run: its scores with the labels, its vocabulary, and the
    thresholds that decided its ``tags`` column (None: it had none)."""
    tracks, vocabulary, _ = score_predictions(folder, manifest_uri, split)
    record = read_thresholds(folder)
    return tracks, vocabulary, None if record is None else recorded_thresholds(record, vocabulary)


@dataclass(frozen=True)
class PairedScores:
    """The tracks both models scored, on the tags both know: labels and the two score
    matrices row-aligned (tracks, tags), and where each model's columns and rows came from."""

    tags: list[str]
    track_ids: list[str]
    y_true: np.ndarray
    baseline_scores: np.ndarray  # the baseline's full rows (every tag of its vocabulary)
    candidate_scores: np.ndarray
    baseline_columns: list[int]  # the shared tags' columns in each model's rows
    candidate_columns: list[int]
    baseline_only: tuple[str, ...]
    candidate_only: tuple[str, ...]
    left_out: tuple[dict[str, Any], ...]

    @classmethod
    def of(
        cls,
        baseline: TrackScores,
        baseline_vocabulary: list[str],
        candidate: TrackScores,
        candidate_vocabulary: list[str],
    ) -> PairedScores:
        tags = [tag for tag in baseline_vocabulary if tag in set(candidate_vocabulary)]
        shared = set(tags)
        if not tags:
            raise ValueError("the two models share no tag: there is nothing to compare")
        candidate_row = {track: i for i, track in enumerate(candidate.track_ids)}
        rows = [
            (i, candidate_row[track])
            for i, track in enumerate(baseline.track_ids)
            if track in candidate_row
        ]
        base_rows = np.array([i for i, _ in rows], dtype=np.intp)
        cand_rows = np.array([j for _, j in rows], dtype=np.intp)
        base_columns = [baseline_vocabulary.index(tag) for tag in tags]
        left_out = [{"model": "baseline", **row} for row in baseline.errors]
        left_out += [{"model": "candidate", **row} for row in candidate.errors]
        return cls(
            tags=tags,
            track_ids=[baseline.track_ids[i] for i in base_rows],
            y_true=baseline.y_true[base_rows][:, base_columns],
            baseline_scores=baseline.y_score[base_rows],
            candidate_scores=candidate.y_score[cand_rows],
            baseline_columns=base_columns,
            candidate_columns=[candidate_vocabulary.index(tag) for tag in tags],
            baseline_only=tuple(t for t in baseline_vocabulary if t not in shared),
            candidate_only=tuple(t for t in candidate_vocabulary if t not in shared),
            left_out=tuple(left_out),
        )

    @property
    def shared_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Both models' scores of the shared tags, (tracks, tags) each."""
        return (
            self.baseline_scores[:, self.baseline_columns],
            self.candidate_scores[:, self.candidate_columns],
        )


@dataclass(frozen=True)
class Agreement:
    """How often two models' decided tags agree on the same tracks; None, with ``note``,
    when a model has no thresholds."""

    per_tag: tuple[float, ...] | None
    cells: float | None
    tracks: float | None
    note: str | None = None


def decision_agreement(
    pair: PairedScores, baseline: Thresholds | None, candidate: Thresholds | None
) -> Agreement:
    """Agreement of the two models' decisions on the shared tags, each at its thresholds
    (in its own vocabulary's order)."""
    missing = [
        role
        for role, thresholds in (("baseline", baseline), ("candidate", candidate))
        if thresholds is None
    ]
    if missing:
        note = f"the {' and the '.join(missing)} {'has' if len(missing) == 1 else 'have'} no "
        note += "thresholds (not calibrated, no --thresholds file): no decided tags to compare"
        return Agreement(None, None, None, note)
    decided_base = baseline.decide(pair.baseline_scores)[:, pair.baseline_columns]
    decided_cand = candidate.decide(pair.candidate_scores)[:, pair.candidate_columns]
    same = decided_base == decided_cand
    return Agreement(
        per_tag=tuple(float(v) for v in same.mean(axis=0)),
        cells=float(same.mean()),
        tracks=float(same.all(axis=1).mean()),
    )


def ranking_aucs(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and PR-AUC (average precision) along the last axis (tracks) of any stack of
    labels and finite scores, NaN where the tracks lack positives or negatives.

    The values are scikit-learn's ``roc_auc_score`` and ``average_precision_score``, ties
    included, computed from ranks so that a thousand resamples take a second: ROC-AUC is
    the Mann-Whitney statistic (the positives' rank sum, ties averaged, less its least
    value, over positives x negatives); average precision is the mean over positives of
    the precision among the tracks scoring at least as high as each.
    """
    truth = np.asarray(y_true) > 0
    scores = np.asarray(y_score, dtype=np.float64)
    n = truth.shape[-1]
    positives = truth.sum(axis=-1)
    negatives = n - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        rank_sum = np.where(truth, rankdata(scores, axis=-1), 0.0).sum(axis=-1)
        roc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
        at_or_above = n + 1 - rankdata(scores, method="min", axis=-1)
        # Negatives moved below every score: a positive's rank counts the positives under it.
        lowered = rankdata(np.where(truth, scores, -np.inf), method="min", axis=-1)
        positives_at_or_above = positives[..., None] - (lowered - 1 - negatives[..., None])
        precision = np.where(truth, positives_at_or_above / at_or_above, 0.0)
        average_precision = precision.sum(axis=-1) / positives
    defined = (positives > 0) & (negatives > 0)
    return np.where(defined, roc, np.nan), np.where(defined, average_precision, np.nan)


def _differences(
    y_true: np.ndarray, baseline: np.ndarray, candidate: np.ndarray, axis: int = -1
) -> np.ndarray:
    """The bootstrap statistic, on (tags, resamples, tracks) stacks: rows macro ROC-AUC,
    macro PR-AUC, then per-tag ROC-AUC and per-tag PR-AUC differences (candidate minus
    baseline), columns the resamples."""
    roc_base, pr_base = ranking_aucs(y_true, baseline)
    roc_cand, pr_cand = ranking_aucs(y_true, candidate)
    roc, pr = roc_cand - roc_base, pr_cand - pr_base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no tag is defined
        macro = np.stack([np.nanmean(roc, axis=0), np.nanmean(pr, axis=0)])
    return np.concatenate([macro, roc, pr])


def bootstrap_intervals(
    y_true: np.ndarray,
    baseline: np.ndarray,
    candidate: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Paired bootstrap intervals of the AUC differences on (tracks, tags) labels and
    scores: an array (2 + 2 x tags, 2) of [low, high] in :func:`_differences`' row order
    (NaN where never defined), and per tag the resamples in which it was defined."""
    n_tracks, n_tags = np.shape(y_true)
    with warnings.catch_warnings():
        # NaN (a tag with one class in a resample) makes scipy's own interval NaN; the
        # interval is taken below over the resamples where each difference is defined.
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(
            (np.asarray(y_true) > 0, baseline, candidate),
            _differences,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            batch=max(1, _BOOTSTRAP_CELLS // (n_tracks * n_tags)),
            confidence_level=confidence_level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    alpha = (1 - confidence_level) / 2
    distribution = result.bootstrap_distribution
    intervals = quantile(distribution, [alpha, 1 - alpha], axis=-1, nan_policy="omit")
    defined = np.isfinite(distribution[2 : 2 + n_tags]).sum(axis=-1)
    return intervals, defined


def verdict(ci_low: float, ci_high: float) -> str:
    """``worse`` when the interval of the macro ROC-AUC difference lies entirely below 0,
    ``better`` entirely above, ``inconclusive`` when it contains 0."""
    if ci_high < 0:
        return "worse"
    if ci_low > 0:
        return "better"
    return "inconclusive"


def _compare(
    pair: PairedScores,
    baseline: dict[str, str],
    candidate: dict[str, str],
    manifest_uri: str,
    split: str | None,
    *,
    agreement: Agreement,
    resamples: int,
    seed: int,
    confidence_level: float,
) -> Comparison:
    base_scores, cand_scores = pair.shared_scores
    base = compute_metrics(pair.y_true, base_scores, pair.tags)
    cand = compute_metrics(pair.y_true, cand_scores, pair.tags)
    if base.macro_roc_auc is None:
        raise ValueError(
            f"no tag the models share has both positive and negative tracks among the "
            f"{len(pair.track_ids)} tracks compared: there is nothing to compare"
        )
    intervals, defined = bootstrap_intervals(
        pair.y_true, base_scores, cand_scores,
        resamples=resamples, seed=seed, confidence_level=confidence_level,
    )  # fmt: skip
    n_tags = len(pair.tags)
    per_tag = tuple(
        TagComparison(
            tag=tag,
            n_positive=b.n_positive,
            n_negative=b.n_negative,
            roc_auc=_difference(b.roc_auc, c.roc_auc, intervals[2 + i]),
            pr_auc=_difference(b.pr_auc, c.pr_auc, intervals[2 + n_tags + i]),
            resamples_defined=int(defined[i]),
            agreement=None if agreement.per_tag is None else agreement.per_tag[i],
            reason=b.reason,
        )
        for i, (tag, b, c) in enumerate(zip(pair.tags, base.per_tag, cand.per_tag, strict=True))
    )
    macro_roc = _difference(base.macro_roc_auc, cand.macro_roc_auc, intervals[0])
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        manifest=manifest_uri,
        split=split,
        n_tracks=len(pair.track_ids),
        macro_roc_auc=macro_roc,
        macro_pr_auc=_difference(base.macro_pr_auc, cand.macro_pr_auc, intervals[1]),
        per_tag=per_tag,
        agreement=agreement.cells,
        tracks_agreeing=agreement.tracks,
        agreement_note=agreement.note,
        baseline_only_tags=pair.baseline_only,
        candidate_only_tags=pair.candidate_only,
        left_out=pair.left_out,
        verdict=verdict(macro_roc.ci_low, macro_roc.ci_high),
        confidence_level=confidence_level,
        resamples=resamples,
        seed=seed,
    )


def _difference(
    baseline: float | None, candidate: float | None, interval: np.ndarray
) -> Difference:
    if baseline is None or candidate is None:
        return Difference(baseline, candidate, None, None, None)
    low, high = (float(v) if np.isfinite(v) else None for v in interval)
    return Difference(baseline, candidate, candidate - baseline, low, high)


# -- MLflow and the plots ---------------------------------------------------------------


def _log_run(
    comparison: Comparison, experiment: str, options: TagOptions, plots: list[Path]
) -> str:
    """The comparison run: params, metrics, the record as JSON, the per-tag table and the
    plots under ``comparison/``; its tags name both models and the verdict."""
    import mlflow

    base, cand = comparison.baseline, comparison.candidate
    name = f"compare {base['name']} v{base['version']} vs {cand['name']} v{cand['version']}"
    # Not mlflow.set_experiment: a caller's later runs stay in its own experiment.
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags(  # the version tags' keys, and the candidate's
            {
                promotion.COMPARISON_BASELINE_TAG: _key(base),
                CANDIDATE_TAG: _key(cand),
                promotion.COMPARISON_VERDICT_TAG: comparison.verdict,
            }
        )
        mlflow.log_params(
            {
                "baseline_uri": base["uri"],
                "baseline_version": base["version"],
                "candidate_uri": cand["uri"],
                "candidate_version": cand["version"],
                "manifest": comparison.manifest,
                "split": comparison.split or "all",
                "max_patches": options.max_patches or "all",
                "resamples": comparison.resamples,
                "seed": comparison.seed,
                "confidence_level": comparison.confidence_level,
            }
        )
        mlflow.log_metrics(_run_metrics(comparison))
        mlflow.log_dict(comparison.to_dict(), f"{ARTIFACT_DIR}/comparison.json")
        mlflow.log_table(per_tag_table(comparison), f"{ARTIFACT_DIR}/per_tag.json")
        for plot in plots:
            mlflow.log_artifact(str(plot), ARTIFACT_DIR)
    return run.info.run_id


def _key(model: dict[str, str]) -> str:
    return promotion.version_key(model["name"], model["version"])


def _run_metrics(comparison: Comparison) -> dict[str, float]:
    values: dict[str, float | None] = {
        "n_tracks": comparison.n_tracks,
        "n_tags": len(comparison.per_tag),
        "n_left_out": len(comparison.left_out),
        "agreement": comparison.agreement,
        "tracks_agreeing": comparison.tracks_agreeing,
    }
    for key in ("roc_auc", "pr_auc"):
        macro: Difference = getattr(comparison, f"macro_{key}")
        values |= {f"macro_{key}_{field}": value for field, value in asdict(macro).items()}
        for row in comparison.per_tag:
            tag = registry.metric_safe(row.tag)
            values[f"{key}_delta/{tag}"] = getattr(row, key).delta
    for row in comparison.per_tag:
        values[f"agreement/{registry.metric_safe(row.tag)}"] = row.agreement
    return {key: float(value) for key, value in values.items() if value is not None}


def per_tag_table(comparison: Comparison) -> dict[str, list[Any]]:
    """Per tag, as columns: each model's AUCs, their difference and its interval, the
    positives, the agreement."""
    rows = comparison.per_tag
    table: dict[str, list[Any]] = {
        "tag": [row.tag for row in rows],
        "positives": [row.n_positive for row in rows],
    }
    for key in ("roc_auc", "pr_auc"):
        for field in ("baseline", "candidate", "delta", "ci_low", "ci_high"):
            table[f"{key}_{field}"] = [getattr(getattr(row, key), field) for row in rows]
    table["agreement"] = [row.agreement for row in rows]
    return table


def write_delta_plots(comparison: Comparison, folder: str | Path) -> list[Path]:
    """Per tag, the ROC-AUC and the PR-AUC difference as bars with their interval as
    whiskers, and the macro difference with its interval, as PNGs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        _delta_chart(comparison, "roc_auc", "ROC-AUC", folder / PLOT_FILES[0]),
        _delta_chart(comparison, "pr_auc", "PR-AUC", folder / PLOT_FILES[1]),
    ]


def _delta_chart(comparison: Comparison, key: str, label: str, path: Path) -> Path:
    rows = comparison.per_tag
    deltas = [getattr(row, key) for row in rows]
    fig = Figure(figsize=(8, 0.3 * len(rows) + 2.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    values = [d.delta or 0.0 for d in deltas]  # None: labelled n/a
    colours = ["tab:green" if v > 0 else "tab:red" for v in values]
    ax.barh(y, values, color=colours, alpha=0.8)
    for i, (row, d) in enumerate(zip(rows, deltas, strict=True)):
        if d.delta is None:
            ax.text(0, i, f" n/a ({row.reason})", va="center", fontsize=7, color="gray")
        elif d.ci_low is not None:  # a percentile interval need not contain the delta
            ax.plot([d.ci_low, d.ci_high], [i, i], color="black", marker="|", linewidth=1)
    macro: Difference = getattr(comparison, f"macro_{key}")
    ax.axvline(0, color="gray", linewidth=0.8)
    if macro.delta is not None:
        interval = (
            f" [{macro.ci_low:+.3f}, {macro.ci_high:+.3f}]" if macro.ci_low is not None else ""
        )
        ax.axvline(
            macro.delta,
            color="tab:blue",
            linestyle="--",
            label=f"macro {macro.delta:+.3f}{interval}",
        )
        if macro.ci_low is not None:
            ax.axvspan(macro.ci_low, macro.ci_high, color="tab:blue", alpha=0.12)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, [row.tag for row in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # vocabulary order, top to bottom
    ax.set_xlabel(f"{label}: candidate - baseline")
    base, cand = comparison.baseline, comparison.candidate
    ax.set_title(
        f"{label} difference per tag, {comparison.confidence_level:.0%} bootstrap intervals\n"
        f"{cand['name']} v{cand['version']} vs {base['name']} v{base['version']}, "
        f"{comparison.n_tracks} tracks",
        fontsize=10,
    )
    fig.savefig(path, dpi=100)
    return path


# -- as a person reads it ---------------------------------------------------------------


def format_comparison(comparison: Comparison) -> str:
    """The comparison as aligned text: the models, the macro and per-tag differences with
    their intervals, the agreement and the verdict."""
    base, cand = comparison.baseline, comparison.candidate
    level = f"{comparison.confidence_level:.0%}"
    split = f" (split {comparison.split})" if comparison.split else ""
    lines = [
        f"baseline   {base['uri']} ({base['name']} version {base['version']})",
        f"candidate  {cand['uri']} ({cand['name']} version {cand['version']})",
        f"{comparison.n_tracks} tracks of {comparison.manifest}{split}, "
        f"{len(comparison.per_tag)} shared tags; error rows left out: {len(comparison.left_out)}",
        f"each AUC: baseline -> candidate, difference, {level} paired bootstrap interval of "
        f"the difference ({comparison.resamples} resamples)",
        "",
    ]
    width = max(len("macro"), *(len(row.tag) for row in comparison.per_tag))
    lines.append(f"{'':<{width}}  {'ROC-AUC':<{_CELLS}}  {'PR-AUC':<{_CELLS}}  agree")
    lines.append(_row("macro", comparison.macro_roc_auc, comparison.macro_pr_auc, width))
    for row in comparison.per_tag:
        lines.append(_row(row.tag, row.roc_auc, row.pr_auc, width, row.agreement, row.reason))
    lines.append("")
    if comparison.agreement is None:
        lines.append(f"agreement: n/a, {comparison.agreement_note}")
    else:
        lines.append(
            f"decided tags agree on {comparison.agreement:.1%} of track-tag pairs; "
            f"{comparison.tracks_agreeing:.1%} of tracks get the same tags from both"
        )
    for role, tags in (
        ("baseline", comparison.baseline_only_tags),
        ("candidate", comparison.candidate_only_tags),
    ):
        if tags:
            lines.append(f"only the {role} has: {', '.join(tags)}")
    macro = comparison.macro_roc_auc
    lines.append(
        f"verdict: {comparison.verdict} (macro ROC-AUC {macro.delta:+.3f}, {level} interval "
        f"[{_signed(macro.ci_low)}, {_signed(macro.ci_high)}])"
    )
    if comparison.run_id:
        lines.append(f"MLflow run: {comparison.run_id}")
    return "\n".join(lines)


_CELLS = 41  # the width of one AUC's cells in format_comparison


def _row(
    name: str,
    roc: Difference,
    pr: Difference,
    width: int,
    agreement: float | None = None,
    reason: str | None = None,
) -> str:
    def cells(d: Difference) -> str:
        if d.delta is None:
            return f"{f'n/a ({reason})':<{_CELLS}}"
        interval = f"[{_signed(d.ci_low)}, {_signed(d.ci_high)}]"
        return f"{d.baseline:.3f} -> {d.candidate:.3f}  {_signed(d.delta):>6}  {interval:<17}"

    agree = "" if agreement is None else f"{agreement:.0%}"
    return f"{name:<{width}}  {cells(roc)}  {cells(pr)}  {agree}".rstrip()


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"
