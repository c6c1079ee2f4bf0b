"""Calibration: one decision threshold per tag, chosen on a labelled split, so a model's
scores become the tags it assigns (a track gets a tag when its score is at or above the
tag's threshold, :class:`raytag.thresholds.Thresholds`).

The policy, per tag, on the scores the split's tracks get (whole tracks, as evaluated):

- ``max_f1`` (the default rule): the threshold with the highest F1 on the split, among the
  scores its tracks got (scikit-learn's ``precision_recall_curve``); ties go to the lowest
  such threshold, the one with more recall.
- ``precision`` with a target P: the lowest threshold whose precision on the split is at
  least P, the most recall that keeps P. A tag that reaches P at no threshold falls back
  to ``max_f1`` and is listed under ``fallback.precision_unreachable``.
- A tag no track of the split has: just above its highest score there (the next float32),
  so it assigns the tag to no track of the split; listed under ``fallback.no_positives``.
- A tag every track of the split has: its lowest score there, so it assigns the tag to
  every track of the split (what ``max_f1`` gives too); listed under
  ``fallback.no_negatives``, since the split says nothing of the tag's negatives.

``Thresholds.policy`` records it as plain data: ``rule``, ``target_precision``, ``split``,
``manifest``, ``n_tracks`` (the tracks scored) and ``fallback`` (those three lists).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve

from raytag.checkpoint import LoadedModel
from raytag.evaluate.metrics import Evaluation, Metrics
from raytag.evaluate.scoring import evaluate_tracks, labelled_splits, score_tracks
from raytag.thresholds import Thresholds

RULES = ("max_f1", "precision")
FALLBACKS = ("no_positives", "no_negatives", "precision_unreachable")
POLICY_TAG_PREFIX = "raytag.thresholds."  # the policy, as tags of the MLflow run
TABLE_ARTIFACT = "thresholds/table.json"  # per tag: threshold, figures on the split, basis
THRESHOLDS_ARTIFACT = "thresholds/thresholds.json"  # a thresholds file `raytag tag` reads


def check_rule(rule: str, target_precision: float | None) -> None:
    """A ValueError unless ``rule`` is known and ``target_precision`` fits it."""
    if rule not in RULES:
        raise ValueError(f"unknown thresholds rule {rule!r}: one of {', '.join(RULES)}")
    if rule == "precision":
        if target_precision is None or not 0 < target_precision <= 1:
            raise ValueError(
                f"the precision rule needs a target precision in (0, 1], not {target_precision}"
            )
    elif target_precision is not None:
        raise ValueError("a target precision needs the precision rule")


def calibrate(
    y_true: np.ndarray,
    y_score: np.ndarray,
    vocabulary: list[str],
    *,
    rule: str = "max_f1",
    target_precision: float | None = None,
    split: str | None = None,
    manifest: str | None = None,
) -> Thresholds:
    """One threshold per tag of ``vocabulary`` from 0/1 labels and scores (tracks, tags),
    by the module's policy; ``split`` and ``manifest`` are recorded in the policy."""
    check_rule(rule, target_precision)
    truth = np.asarray(y_true) > 0
    scores = np.asarray(y_score, dtype=np.float64)
    if truth.shape != scores.shape or truth.shape[1:] != (len(vocabulary),):
        raise ValueError(
            f"labels {truth.shape} and scores {scores.shape} must both be "
            f"(tracks, {len(vocabulary)})"
        )
    if truth.shape[0] == 0:
        raise ValueError("no tracks to calibrate thresholds on")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    values, fallback = [], {name: [] for name in FALLBACKS}
    for i, tag in enumerate(vocabulary):
        threshold, basis = _tag_threshold(truth[:, i], scores[:, i], rule, target_precision)
        values.append(threshold)
        if basis in fallback:
            fallback[basis].append(tag)
    policy = {
        "rule": rule,
        "target_precision": target_precision,
        "split": split,
        "manifest": manifest,
        "n_tracks": int(truth.shape[0]),
        "fallback": fallback,
    }
    return Thresholds(values, policy)


def _tag_threshold(
    truth: np.ndarray, scores: np.ndarray, rule: str, target_precision: float | None
) -> tuple[float, str]:
    """One tag's threshold and what decided it: the rule's name or a fallback's."""
    if not truth.any():
        return float(np.nextafter(np.float32(scores.max()), np.float32(np.inf))), "no_positives"
    if truth.all():
        return float(scores.min()), "no_negatives"
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if rule == "precision":
        reaching = np.flatnonzero(precision >= target_precision)
        if reaching.size:
            return float(thresholds[reaching[0]]), "precision"
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    best = float(thresholds[int(np.argmax(f1))])  # argmax: the first, lowest, of ties
    return best, "max_f1" if rule == "max_f1" else "precision_unreachable"


@dataclass(frozen=True)
class Calibration:
    """Thresholds chosen on a split, and that split's evaluation at them."""

    thresholds: Thresholds
    evaluation: Evaluation

    def table(self) -> dict[str, list[Any]]:
        """Per tag, as columns: threshold, precision, recall and F1 on the split, positives,
        tracks assigned, and what decided the threshold (the rule or a fallback)."""
        basis = {
            tag: name for name, tags in self.thresholds.policy["fallback"].items() for tag in tags
        }
        rule = self.thresholds.policy["rule"]
        rows = self.evaluation.per_tag
        return {
            "tag": [row.tag for row in rows],
            "threshold": [row.threshold for row in rows],
            "precision": [row.precision for row in rows],
            "recall": [row.recall for row in rows],
            "f1": [row.f1 for row in rows],
            "positives": [row.n_positive for row in rows],
            "assigned": [row.n_assigned for row in rows],
            "basis": [basis.get(row.tag, rule) for row in rows],
        }

    def format_table(self) -> str:
        """:meth:`table` as aligned text, with the macro figures and the policy."""
        table, policy, metrics = self.table(), self.thresholds.policy, self.evaluation
        width = max(len("tag"), *map(len, table["tag"]))
        lines = [
            f"{'tag':<{width}}  threshold  precision  recall     f1  positives  assigned  basis"
        ]
        for i, tag in enumerate(table["tag"]):
            lines.append(
                f"{tag:<{width}}  {table['threshold'][i]:>9.4f}  {_fmt(table['precision'][i]):>9}"
                f"  {_fmt(table['recall'][i]):>6}  {_fmt(table['f1'][i]):>5}"
                f"  {table['positives'][i]:>9}  {table['assigned'][i]:>8}  {table['basis'][i]}"
            )
        target = f" {policy['target_precision']}" if policy["target_precision"] else ""
        lines.append(
            f"rule {policy['rule']}{target} on split {policy['split']!r} "
            f"({policy['n_tracks']} tracks): macro precision {_fmt(metrics.macro_precision)}, "
            f"recall {_fmt(metrics.macro_recall)}, F1 {_fmt(metrics.macro_f1)} "
            f"over the {metrics.n_tags_scored} tags with positives and negatives"
        )
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def calibrate_split(
    loaded: LoadedModel,
    manifest_uri: str,
    split: str = "valid",
    *,
    rule: str = "max_f1",
    target_precision: float | None = None,
    batch_size: int = 64,
) -> Calibration:
    """Score the split's tracks with ``loaded`` (every patch, as evaluation does), choose
    its thresholds, and evaluate the split at them."""
    check_rule(rule, target_precision)
    tracks = score_tracks(loaded, manifest_uri, split, batch_size=batch_size)
    if not tracks.track_ids:
        if tracks.errors:
            first = tracks.errors[0]
            raise ValueError(
                f"none of the {len(tracks.errors)} tracks of split {split!r} in {manifest_uri} "
                f"decoded (e.g. {first['uri']}: {first['error_code']})"
            )
        raise ValueError(
            f"{manifest_uri} has no tracks in split {split!r} "
            f"(its splits: {', '.join(labelled_splits(manifest_uri)) or 'none'})"
        )
    thresholds = calibrate(
        tracks.y_true, tracks.y_score, loaded.vocabulary, rule=rule,
        target_precision=target_precision, split=split, manifest=manifest_uri,
    )  # fmt: skip
    model = {"name": loaded.name, "version": loaded.version}
    evaluation = evaluate_tracks(
        tracks, loaded.vocabulary, model, manifest_uri, split, thresholds=thresholds
    )
    return Calibration(thresholds, evaluation)


def log_calibration(calibration: Calibration) -> None:
    """Into the active MLflow run: the policy as ``raytag.thresholds.*`` tags, the split's
    evaluation at the thresholds (as :func:`log_evaluation` with the split as prefix), the
    per-tag table (``thresholds/table.json``) and the thresholds as a file ``raytag tag``
    reads (``thresholds/thresholds.json``)."""
    import mlflow

    thresholds, evaluation = calibration.thresholds, calibration.evaluation
    mlflow.set_tags(
        {
            f"{POLICY_TAG_PREFIX}{key}": value if isinstance(value, str) else json.dumps(value)
            for key, value in thresholds.policy.items()
        }
    )
    log_evaluation(evaluation, prefix=thresholds.policy["split"])
    mlflow.log_table(calibration.table(), TABLE_ARTIFACT)
    vocabulary = [row.tag for row in evaluation.per_tag]
    mlflow.log_dict(thresholds.to_dict(vocabulary), THRESHOLDS_ARTIFACT)


def log_evaluation(evaluation: Evaluation, *, prefix: str) -> None:
    """Into the active MLflow run: the AUCs, the JSON and any plots of ``evaluation``
    (``registry.log_run_evaluation``, under ``evaluation/<prefix>/``) and, at thresholds,
    ``<prefix>_macro_precision``, ``<prefix>_macro_recall`` and ``<prefix>_macro_f1``."""
    import mlflow

    from raytag import registry

    # The plots go in as artifacts beside the JSON, not as paths of a passing folder.
    record = replace(evaluation, plots=None).to_dict()
    registry.log_run_evaluation(record, evaluation.plots or (), prefix=prefix)
    if evaluation.at_thresholds:
        mlflow.log_metrics(
            {f"{prefix}_{key}": value for key, value in _decision_macros(evaluation).items()}
        )


def _decision_macros(metrics: Metrics) -> dict[str, float]:
    figures = {
        "macro_precision": metrics.macro_precision,
        "macro_recall": metrics.macro_recall,
        "macro_f1": metrics.macro_f1,
    }
    return {key: value for key, value in figures.items() if value is not None}


@dataclass(frozen=True)
class CalibratedVersion:
    """What :func:`calibrate_model` registered: the calibration, the new version and the
    MLflow run that made it."""

    calibration: Calibration
    name: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    run_id: str


def calibrate_model(
    model_uri: str,
    manifest_uri: str,
    *,
    split: str = "valid",
    rule: str = "max_f1",
    target_precision: float | None = None,
    registered_model: str | None = None,
    alias: str | None = None,
    experiment: str | None = None,
    device: str = "cpu",
    batch_size: int = 64,
) -> CalibratedVersion:
    """Calibrate any model (``models:/...``, ``runs:/...``, a folder) on a labelled split and
    register it, thresholds included, as a new version of ``registered_model`` (default:
    the name in a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI), from an MLflow run
    of its own that holds the calibration (:func:`log_calibration`)."""
    import mlflow

    from raytag import registry

    check_rule(rule, target_precision)
    name = registered_model or _registered_name(model_uri)
    if name is None:
        raise ValueError(
            f"{model_uri} is not a registered model version: name the model to register"
        )
    loaded = registry.load(model_uri, device=device)
    calibration = calibrate_split(
        loaded, manifest_uri, split, rule=rule, target_precision=target_precision,
        batch_size=batch_size,
    )  # fmt: skip
    experiment_id = mlflow.set_experiment(experiment).experiment_id if experiment else None
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"calibrate-{name}") as run:
        mlflow.log_params(
            {"calibrated_model": model_uri, "calibrated_version": f"{loaded.name}/{loaded.version}"}
        )
        log_calibration(calibration)
        calibrated = replace(loaded, thresholds=calibration.thresholds)
        info = registry.log_model(calibrated, registered_model_name=name, alias=alias)
    version = str(info.registered_model_version)
    return CalibratedVersion(
        calibration, name, version, f"models:/{name}/{version}", run.info.run_id
    )


def _registered_name(uri: str) -> str | None:
    """NAME of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; None for other URIs."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@[^/]+|/\d+)/?", uri)
    return match.group(1) if match else None
