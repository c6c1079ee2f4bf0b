"""The evaluation's plots: per-tag ROC-AUC and PR-AUC bars, ROC and PR curves, as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from raytag.evaluate.metrics import Metrics, TagMetrics

PLOT_FILES = ("per_tag_roc_auc.png", "per_tag_pr_auc.png", "roc_curves.png", "pr_curves.png")


def write_plots(
    metrics: Metrics, y_true: np.ndarray, y_score: np.ndarray, folder: str | Path
) -> list[Path]:
    """Per-tag ROC-AUC and PR-AUC bars, ROC and PR curves of the scored tags, as PNGs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per_tag = metrics.per_tag
    paths = [
        _bar_chart(per_tag, "roc_auc", metrics.macro_roc_auc, "ROC-AUC", folder / PLOT_FILES[0]),
        _bar_chart(per_tag, "pr_auc", metrics.macro_pr_auc, "PR-AUC", folder / PLOT_FILES[1]),
    ]
    scored = [(i, row) for i, row in enumerate(per_tag) if row.roc_auc is not None]
    paths.append(_curves(scored, y_true, y_score, "roc", folder / PLOT_FILES[2]))
    paths.append(_curves(scored, y_true, y_score, "pr", folder / PLOT_FILES[3]))
    return paths


def _bar_chart(
    per_tag: tuple[TagMetrics, ...], key: str, macro: float | None, label: str, path: Path
) -> Path:
    tags = [row.tag for row in per_tag]
    values = [getattr(row, key) or 0.0 for row in per_tag]  # None: labelled n/a
    fig = Figure(figsize=(8, 0.28 * len(tags) + 2), layout="constrained")
    ax = fig.subplots()
    ax.barh(tags, values, color="tab:blue")
    for y, row in enumerate(per_tag):
        if getattr(row, key) is None:
            ax.text(0.01, y, f"n/a ({row.reason})", va="center", fontsize=7, color="gray")
    if macro is not None:
        ax.axvline(macro, color="tab:red", linestyle="--", label=f"macro {macro:.3f}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_ylim(len(tags) - 0.5, -0.5)  # vocabulary order, top to bottom
    ax.set_xlabel(label)
    ax.set_title(f"{label} per tag")
    return _save(fig, path)


def _curves(
    scored: list[tuple[int, TagMetrics]],
    y_true: np.ndarray,
    y_score: np.ndarray,
    kind: str,
    path: Path,
) -> Path:
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    colours = colormaps["tab20"].colors
    for k, (i, row) in enumerate(scored):
        truth, score = np.asarray(y_true)[:, i] > 0, np.asarray(y_score)[:, i]
        if kind == "roc":
            x, y, _ = roc_curve(truth, score)
            value = row.roc_auc
        else:
            y, x, _ = precision_recall_curve(truth, score)
            value = row.pr_auc
        style = {"color": colours[k % 20], "linestyle": ("-", "--", ":")[k // 20 % 3]}
        ax.plot(x, y, linewidth=1, label=f"{row.tag} ({value:.2f})", **style)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves")
    else:
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curves")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    if not scored:
        ax.text(0.5, 0.5, "no tag has both classes", ha="center", color="gray")
    elif len(scored) <= 25:
        ax.legend(fontsize=6, loc="lower right" if kind == "roc" else "lower left", ncol=2)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    """A bare Figure renders with Agg: no pyplot state, no display, safe in Ray workers."""
    fig.savefig(path, dpi=100)
    return path
