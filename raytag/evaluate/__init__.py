"""Evaluation: track-level scores over whole tracks, ROC-AUC and PR-AUC per tag and macro.

Metrics follow the auto-tagging literature (MagnaTagATune, MSD): each tag is a binary
problem scored with scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(PR-AUC), and the macro figure is their unweighted mean over tags. A tag whose ground
truth has no positives or no negatives has no defined AUC: it is reported as null with
the reason and left out of the macro mean, never an error, since small test splits of a
21-tag vocabulary often miss a tag.

Tracks are scored as tagging would serve them, but over the whole track: every patch of
every track (``max_patches=None``), sigmoid outputs averaged per track. A track that does
not decode is listed under ``errors`` with its code and left out of the metrics.
:func:`evaluate_predictions` computes the same metrics from the scores a ``raytag tag`` run
wrote instead, so a test set of any size is scored on the cluster.

    metrics   the records (TagMetrics, Metrics, Evaluation) and the computation of the AUCs
    scoring   the scores of a model, or of a tagging run's output, and their evaluation
    plots     per-tag AUC bars, ROC and PR curves, as PNGs
    calibration  per-tag decision thresholds chosen on a labelled split (its docstring has
              the policy), logged to MLflow, and ``raytag calibrate``'s new model version

With thresholds (the model's own, or given), the metrics also hold each tag's precision,
recall and F1 of the tags assigned at its threshold, and their macro means over the same
tags as the macro AUCs.
"""

from raytag.evaluate.calibration import (
    RULES,
    CalibratedVersion,
    Calibration,
    calibrate,
    calibrate_model,
    calibrate_split,
    log_calibration,
    log_evaluation,
)
from raytag.evaluate.metrics import (
    Evaluation,
    Metrics,
    TagMetrics,
    TrackScores,
    compute_metrics,
    label_matrix,
    write_metrics,
)
from raytag.evaluate.plots import PLOT_FILES, write_plots
from raytag.evaluate.scoring import (
    evaluate_model,
    evaluate_predictions,
    evaluate_tracks,
    labelled_splits,
    read_labelled_tracks,
    score_predictions,
    score_tracks,
)

__all__ = [
    "PLOT_FILES",
    "RULES",
    "CalibratedVersion",
    "Calibration",
    "Evaluation",
    "Metrics",
    "TagMetrics",
    "TrackScores",
    "calibrate",
    "calibrate_model",
    "calibrate_split",
    "compute_metrics",
    "evaluate_model",
    "evaluate_predictions",
    "evaluate_tracks",
    "label_matrix",
    "labelled_splits",
    "log_calibration",
    "log_evaluation",
    "read_labelled_tracks",
    "score_predictions",
    "score_tracks",
    "write_metrics",
    "write_plots",
]
