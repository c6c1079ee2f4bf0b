"""The model card of a registered version: a markdown description a reviewer reads in the
MLflow UI (what the model is, what it was trained on, its evaluation, thresholds, known
limits and the run that made it) and version tags to sort and filter versions on
(:data:`CARD_TAGS`). :func:`raytag.registry.log_model` writes it for every version it
registers: trained, imported or calibrated. It sits below the registry and imports none
of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# What the card reads from the MLflow run that logged a version, written by raytag.registry
# and raytag.train: the Ray Train run name, and metric keys with tag names made safe.
RUN_NAME_TAG = "raytag.run_name"


def metric_safe(name: str) -> str:
    """A tag name as MLflow accepts in metric keys (letters, digits, ``_-. /``)."""
    return re.sub(r"[^\w\-. /]", "_", name)


# The card's version tags, what a reviewer sorts and filters versions on (in a search,
# `tags.arch = 'musicnn'`). Values are strings (AUCs with four decimals, which sort as text
# the way they do as numbers); a tag whose value is unknown is left off.
CARD_TAGS = (
    "arch",
    "n_tags",
    "calibrated",
    "training_manifest",
    "test_macro_roc_auc",
    "test_macro_pr_auc",
)
_TEST_MACROS = ("test_macro_roc_auc", "test_macro_pr_auc")


def describe_version(
    name: str, version: str | int, meta: Mapping[str, Any], run_id: str | None
) -> str:
    """Write the model card of ``NAME`` version ``version``: a markdown description and the
    :data:`CARD_TAGS`, from the model folder's ``meta`` (raytag.json), the MLflow run that
    logged it (a training run's ``manifest`` param and ``test_*`` evaluation) and, when its
    weights are another registered version's (a calibrated copy, whose ``meta`` names that
    version), that version's card tags. Returns the description."""
    client = MlflowClient()
    version = str(version)
    run = client.get_run(run_id) if run_id else None
    source = _source_version(client, meta, (name, version))
    tags = _card_tags(meta, run, source)
    description = _card(name, version, meta, run, source, tags)
    client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return description


def _source_version(
    client: MlflowClient, meta: Mapping[str, Any], registering: tuple[str, str]
) -> ModelVersion | None:
    """The registered version whose weights these are, when the folder names one other than
    the version being registered (a model loaded from the registry and logged again)."""
    key = (str(meta.get("name")), str(meta.get("version")))
    if not key[1].isdigit() or key == registering:
        return None
    try:
        return client.get_model_version(*key)
    except MlflowException:
        return None  # a folder named like a version of a model this server does not hold


def _is_training_run(run: Run | None) -> bool:
    return run is not None and RUN_NAME_TAG in run.data.tags


def _card_tags(
    meta: Mapping[str, Any], run: Run | None, source: ModelVersion | None
) -> dict[str, str]:
    tags = {
        "arch": str(meta["model"]["arch"]),
        "n_tags": str(len(meta["vocabulary"])),
        "calibrated": "yes" if meta.get("thresholds") else "no",
    }
    inherited = dict(source.tags) if source is not None else {}
    if _is_training_run(run) and run.data.params.get("manifest"):
        tags["training_manifest"] = run.data.params["manifest"]
    elif "training_manifest" in inherited:
        tags["training_manifest"] = inherited["training_manifest"]
    metrics = run.data.metrics if run is not None else {}
    for key in _TEST_MACROS:
        if key in metrics:
            tags[key] = f"{metrics[key]:.4f}"
        elif key in inherited:  # the same weights score the same
            tags[key] = inherited[key]
    return {key: tags[key] for key in CARD_TAGS if key in tags}


def _card(
    name: str,
    version: str,
    meta: Mapping[str, Any],
    run: Run | None,
    source: ModelVersion | None,
    tags: Mapping[str, str],
) -> str:
    metrics = run.data.metrics if run is not None else {}
    sections = [
        f"# {name} version {version}",
        _card_what(meta),
        _card_trained_on(meta, run, source, tags),
        _card_evaluation(meta, metrics, source, tags),
        _card_thresholds(meta, metrics),
        _card_limits(meta, metrics, tags),
        _card_made_by(run),
    ]
    return "\n\n".join(sections) + "\n"


def _card_what(meta: Mapping[str, Any]) -> str:
    vocabulary, audio = meta["vocabulary"], meta["audio"]
    patches = (
        "every patch of a track"
        if audio.get("max_patches") is None
        else f"at most {audio['max_patches']} evenly spaced patches of a track"
    )
    return (
        f"**What it is.** A `{meta['model']['arch']}` tagger of {len(vocabulary)} tags: "
        f"{', '.join(vocabulary)}. It hears {audio['sample_rate']} Hz mono audio in "
        f"{audio['patch_seconds']:g}-s patches and scores a track as the mean of its patches' "
        f"sigmoid outputs ({patches} by its own policy; `raytag tag --max-patches` sets it "
        "per run)."
    )


def _card_trained_on(
    meta: Mapping[str, Any],
    run: Run | None,
    source: ModelVersion | None,
    tags: Mapping[str, str],
) -> str:
    manifest = tags.get("training_manifest")
    if _is_training_run(run):
        params = run.data.params
        warm = params.get("init_from") not in (None, "None")  # its architecture, not a preset
        start = f"warm-started from `{params['init_from']}`" if warm else None
        recipe = [start or f"preset `{params.get('model')}`"]
        recipe.append(f"at most {params.get('epochs')} epochs")
        if params.get("freeze_encoder") == "True":
            recipe.append("encoder frozen (only the dense head trained)")
        return (
            f"**Trained on.** `{manifest}` (its `train` split; `valid` for early stopping), "
            f"by raytag's Ray Train run `{run.data.tags[RUN_NAME_TAG]}`: {', '.join(recipe)}."
        )
    if source is not None:
        trained = f", trained on `{manifest}`" if manifest else ""
        return (
            f"**Trained on.** The weights of `{source.name}` version {source.version}{trained} "
            "(see that version's card)."
        )
    return (
        "**Trained on.** Not recorded: this model was made outside raytag's training "
        f"(model folder `{meta.get('name')}`, version `{meta.get('version')}`) and "
        "registered as it was."
    )


def _card_evaluation(
    meta: Mapping[str, Any],
    metrics: Mapping[str, float],
    source: ModelVersion | None,
    tags: Mapping[str, str],
) -> str:
    if "test_macro_roc_auc" not in tags:
        return (
            "**Evaluation.** Not evaluated when registered: `raytag evaluate --model "
            "models:/NAME/VERSION --manifest LABELLED --split test` measures it."
        )
    where = f" of `{tags['training_manifest']}`" if "training_manifest" in tags else ""
    n_tracks = metrics.get("test_n_tracks")
    over = f" over {int(n_tracks)} tracks" if n_tracks is not None else ""
    lines = [
        f"**Evaluation.** On the test split{where}{over}: macro ROC-AUC "
        f"{_figure(_number(tags, 'test_macro_roc_auc'))}, macro PR-AUC "
        f"{_figure(_number(tags, 'test_macro_pr_auc'))}."
    ]
    if "test_macro_roc_auc" not in metrics and source is not None:
        lines[0] += f" Measured on `{source.name}` version {source.version}, the same weights."
    decided = _decision_figures(metrics, "test")
    if decided:
        lines[0] += f" At its thresholds: macro {decided}."
    rows = [
        (tag, metrics.get(f"test_roc_auc/{metric_safe(tag)}"),
         metrics.get(f"test_pr_auc/{metric_safe(tag)}"))
        for tag in meta["vocabulary"]
    ]  # fmt: skip
    if any(roc is not None for _, roc, _ in rows):
        lines += ["", "| tag | ROC-AUC | PR-AUC |", "|---|---|---|"]
        lines += [f"| {tag} | {_figure(roc)} | {_figure(pr)} |" for tag, roc, pr in rows]
    if any(roc is None for _, roc, _ in rows) and len(lines) > 1:
        lines += ["", "n/a: the test split has no positive (or no negative) track of the tag."]
    return "\n".join(lines)


def _card_thresholds(meta: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    thresholds = meta.get("thresholds")
    if not thresholds:
        return (
            "**Thresholds.** None: `raytag tag` assigns no tags with this version until it is "
            "calibrated (`raytag calibrate` registers a calibrated version)."
        )
    policy = thresholds.get("policy", {})
    stated = [f"{key} {_policy_value(value)}" for key, value in policy.items() if _stated(value)]
    values = sorted(thresholds["values"].values())
    text = (
        f"**Thresholds.** One per tag, {values[0]:.3f} to {values[-1]:.3f} "
        f"(median {values[len(values) // 2]:.3f}); a track gets a tag when its score is at "
        f"or above the tag's threshold. Policy: {'; '.join(stated) or 'not recorded'}."
    )
    split = policy.get("split")
    decided = _decision_figures(metrics, split) if split else None
    if decided:
        text += f" At them on the `{split}` split: macro {decided}."
    return text


def _decision_figures(metrics: Mapping[str, float], prefix: str) -> str | None:
    """Macro precision, recall and F1 at the thresholds, as the run logged them for a
    split (``<prefix>_macro_f1``...), as text; None when it did not."""
    figures = [(key, metrics.get(f"{prefix}_macro_{key}")) for key in ("precision", "recall", "f1")]
    if any(value is None for _, value in figures):
        return None
    return ", ".join(f"{key} {value:.3f}" for key, value in figures)


def _policy_value(value: Any) -> str:
    """A policy value as text: a mapping of lists (the fallback tags) as ``key: a, b``."""
    if isinstance(value, Mapping):
        parts = [f"{key}: {_policy_value(inner)}" for key, inner in value.items() if inner]
        return f"({'; '.join(parts)})"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return f"`{value}`"


def _stated(value: Any) -> bool:
    """Whether a policy value says something (not None, not an empty list or mapping)."""
    if isinstance(value, Mapping):
        return any(_stated(v) for v in value.values())
    return value is not None and value != []


def _card_limits(
    meta: Mapping[str, Any], metrics: Mapping[str, float], tags: Mapping[str, str]
) -> str:
    audio = meta["audio"]
    limits = [
        f"It knows only its {len(meta['vocabulary'])} tags; other tags of a manifest are "
        "ignored (`raytag evaluate` lists them as unknown).",
        f"It hears {audio['sample_rate']} Hz mono: nothing above "
        f"{audio['sample_rate'] / 2000:g} kHz, no stereo image. Tracks under "
        f"{audio['min_seconds']:g} s are refused (`too_short`).",
        "A track's scores average its patches: a short passage of a long track weighs little, "
        "and with `--max-patches` the patches tagging skips are not heard at all.",
    ]
    if "test_macro_roc_auc" in tags:
        n_tracks = metrics.get("test_n_tracks")
        size = f"{int(n_tracks)} tracks of " if n_tracks is not None else ""
        limits.append(
            f"Its test figures come from {size}one catalogue's test split; on another "
            "catalogue they can differ: evaluate it on yours before it serves."
        )
    thresholds = meta.get("thresholds") or {}
    fallback = thresholds.get("policy", {}).get("fallback") or {}
    defaulted = sorted({tag for tags_of in fallback.values() for tag in tags_of})
    if defaulted:
        limits.append(
            f"Tags whose threshold is a fallback, not calibrated: {', '.join(defaulted)}."
        )
    return "**Known limits.**\n\n" + "\n".join(f"- {line}" for line in limits)


def _card_made_by(run: Run | None) -> str:
    if run is None:
        return "**Made by.** Logged without an MLflow run."
    link = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return f"**Made by.** MLflow run [{run.info.run_name}]({link}) (`{run.info.run_id}`)."


def _number(tags: Mapping[str, str], key: str) -> float | None:
    return float(tags[key]) if key in tags else None


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
