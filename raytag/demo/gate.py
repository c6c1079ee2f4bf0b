"""The demo's promotion, through the gate ``raytag registry promote`` applies
(:mod:`raytag.promotion`): a version put forward while another holds ``@champion`` is
compared with it on the catalogue's test split (:func:`raytag.evaluate.compare.compare_models`:
both models in one tagging run) and promoted unless the verdict is ``worse``; refused, the
champion stays and the demo tags with it. The first version becomes champion with no
comparison, and a reused champion shows the comparison recorded on it, if any.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from raytag.demo.champion import ALIAS, REGISTERED_MODEL, Candidate, run_url
from raytag.demo.progress import Clock
from raytag.demo.report import ComparisonRecord, MetricChange, fmt

SPLIT = "test"
# The comparison's macro figures as the report names them: (field of Comparison, name).
MACRO_FIGURES = (("macro_roc_auc", "macro ROC-AUC"), ("macro_pr_auc", "macro PR-AUC"))


def promote_or_keep(
    candidate: Candidate, manifest: str, workdir: Path, max_patches: int, say: Clock
) -> tuple[str, ComparisonRecord | None]:
    """The version that holds ``@champion`` after this run, and the comparison behind it
    (None: the first version, or a reused champion with none recorded)."""
    from raytag.promotion import PromotionRefused, promote

    version, champion = candidate.version, candidate.champion
    if version == champion:
        return version, _recorded_on_champion(version, workdir)
    if champion is None:
        promote(REGISTERED_MODEL, version, ALIAS)
        say(f"promotion: version {version} is @{ALIAS}, the first (nothing to compare with)")
        return version, None
    data, run_id, compared_now = _comparison(version, champion, manifest, workdir, max_patches,
                                             say)  # fmt: skip
    try:
        promote(REGISTERED_MODEL, version, ALIAS)
    except PromotionRefused:
        say(f"promotion: refused: version {version} is worse than version {champion}, which "
            f"stays @{ALIAS} and tags the tracks (`raytag registry promote {REGISTERED_MODEL} "
            f"{version} --force` would override)")  # fmt: skip
        return champion, _record(data, run_id, workdir, promoted=False, compared_now=compared_now)
    say(f"promotion: version {version} is @{ALIAS} (was version {champion}; verdict "
        f"{data['verdict']})")  # fmt: skip
    return version, _record(data, run_id, workdir, promoted=True, compared_now=compared_now)


def _comparison(
    version: str, champion: str, manifest: str, workdir: Path, max_patches: int, say: Clock
) -> tuple[dict[str, Any], str | None, bool]:
    """``version`` against ``champion``: the comparison recorded on the version when it was
    made against this champion (a reused version is not compared again), else one made now.
    As comparison.json holds it, its MLflow run, and whether it was made now."""
    from mlflow import MlflowClient

    from raytag.evaluate.compare import compare_models
    from raytag.promotion import COMPARISON_BASELINE_TAG, COMPARISON_RUN_TAG, version_key
    from raytag.tagging import TagOptions

    tags = MlflowClient().get_model_version(REGISTERED_MODEL, version).tags
    if tags.get(COMPARISON_BASELINE_TAG) == version_key(REGISTERED_MODEL, champion):
        run_id = tags[COMPARISON_RUN_TAG]
        say(f"comparison: version {version} against version {champion} (@{ALIAS}), as an "
            f"earlier demo recorded it (run {run_id})")  # fmt: skip
        return _download(run_id, workdir), run_id, False
    say(f"comparison: version {version} against version {champion} (@{ALIAS}) on the "
        f"{SPLIT} split, both models in one tagging run ...")  # fmt: skip
    folder = _plots_folder(workdir)
    comparison = compare_models(
        f"models:/{REGISTERED_MODEL}/{champion}", f"models:/{REGISTERED_MODEL}/{version}",
        manifest, split=SPLIT, output=str(workdir / "compare" / f"v{champion}-vs-v{version}"),
        options=TagOptions(max_patches=max_patches), plots_dir=folder,
    )  # fmt: skip
    macro = comparison.macro_roc_auc
    say(f"comparison: macro ROC-AUC {fmt(macro.baseline)} -> {fmt(macro.candidate)} on "
        f"{comparison.n_tracks} tracks: {comparison.verdict}")  # fmt: skip
    return comparison.to_dict(), comparison.run_id, True


def _recorded_on_champion(version: str, workdir: Path) -> ComparisonRecord | None:
    """The comparison that the reused champion's version tags name (``raytag.comparison.*``,
    its latest), read back from its MLflow run; None when it has none or the run is gone."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from raytag.promotion import COMPARISON_RUN_TAG

    tags = MlflowClient().get_model_version(REGISTERED_MODEL, version).tags
    run_id = tags.get(COMPARISON_RUN_TAG)
    if run_id is None:
        return None
    try:
        data = _download(run_id, workdir)
    except MlflowException:
        return None
    return _record(data, run_id, workdir, promoted=True, compared_now=False)


def _download(run_id: str, workdir: Path) -> dict[str, Any]:
    """A comparison run's ``comparison/`` artifacts (the record and its plots) into the
    report's comparison folder; the record."""
    import mlflow

    from raytag.evaluate.compare import ARTIFACT_DIR

    folder = _plots_folder(workdir)
    mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=ARTIFACT_DIR, dst_path=str(folder.parent)
    )
    return json.loads((folder / "comparison.json").read_text())


def _plots_folder(workdir: Path) -> Path:
    """workdir/report/comparison, emptied: it holds only the comparison this report shows."""
    from raytag.evaluate.compare import ARTIFACT_DIR

    folder = workdir / "report" / ARTIFACT_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _record(
    data: dict[str, Any],
    run_id: str | None,
    workdir: Path,
    *,
    promoted: bool,
    compared_now: bool,
) -> ComparisonRecord:
    """The report's comparison, from the record comparison.json holds."""
    from raytag.evaluate.compare import ARTIFACT_DIR, PLOT_FILES

    base, cand = data["baseline"], data["candidate"]
    plots = (workdir / "report" / ARTIFACT_DIR / name for name in PLOT_FILES)
    return ComparisonRecord(
        baseline=f"{base['name']} v{base['version']}",
        candidate=f"{cand['name']} v{cand['version']}",
        n_tracks=data["n_tracks"],
        changes=tuple(MetricChange(name, **data[key]) for key, name in MACRO_FIGURES),
        agreement=data["agreement"],
        verdict=data["verdict"],
        promoted=promoted,
        compared_now=compared_now,
        confidence_level=data["confidence_level"],
        run_url=None if run_id is None else run_url(run_id),
        plots=tuple(str(plot) for plot in plots if plot.is_file()),
    )
