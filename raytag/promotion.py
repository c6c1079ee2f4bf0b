"""Promotion through a gate: moving ``models:/NAME@ALIAS`` to a version needs evidence
that it is not worse than the version holding the alias, a comparison
(:mod:`raytag.evaluate.compare`) recorded on the candidate version as
``raytag.comparison.*`` tags. ``force`` skips the gate; every promotion is recorded on the
version and on its comparison run.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from raytag.registry import set_alias

# A comparison (raytag.evaluate.compare) recorded on the candidate version: the latest one.
COMPARISON_RUN_TAG = "raytag.comparison.run_id"
COMPARISON_BASELINE_TAG = "raytag.comparison.baseline"  # NAME/VERSION, or the baseline's URI
COMPARISON_VERDICT_TAG = "raytag.comparison.verdict"
REFUSED_VERDICT = "worse"
# A promotion recorded on the promoted version (the latest one), and on its comparison run.
PROMOTION_TAG_PREFIX = "raytag.promotion."
PROMOTED_RUN_TAG = "raytag.promoted"


class PromotionRefused(RuntimeError):
    """The gate said no: why, and what to run instead."""


@dataclass(frozen=True)
class Promotion:
    """A move of ``models:/NAME@ALIAS``, and the evidence it was made on."""

    name: str
    version: str
    alias: str
    replaced: str | None  # the version that held the alias; None: nobody did
    comparison_run_id: str | None
    verdict: str | None
    forced: bool

    def line(self) -> str:
        if self.replaced == self.version:
            return f"models:/{self.name}@{self.alias} already points at version {self.version}"
        was = f"version {self.replaced}" if self.replaced else "no version"
        if self.comparison_run_id:
            evidence = f"comparison run {self.comparison_run_id}: {self.verdict}"
        else:
            evidence = "no comparison needed" if self.replaced is None else "no comparison"
        forced = ", forced" if self.forced else ""
        return (
            f"models:/{self.name}@{self.alias} -> version {self.version} (was {was}; "
            f"{evidence}{forced})"
        )


def version_key(name: str, version: str | int) -> str:
    """How comparisons name a registered version: ``NAME/VERSION``."""
    return f"{name}/{version}"


def alias_holder(name: str, alias: str) -> str | None:
    """The version ``models:/NAME@ALIAS`` points at, None when the alias is not set."""
    holder = MlflowClient().get_registered_model(name).aliases.get(alias)
    return None if holder is None else str(holder)


def record_comparison(
    name: str, version: str | int, *, run_id: str, baseline: str, verdict: str
) -> None:
    """Tag ``NAME`` version ``version`` with its latest comparison: the MLflow run that
    holds it, the baseline it was compared with (``NAME/VERSION`` or a URI) and the verdict."""
    client = MlflowClient()
    for key, value in (
        (COMPARISON_RUN_TAG, run_id),
        (COMPARISON_BASELINE_TAG, baseline),
        (COMPARISON_VERDICT_TAG, verdict),
    ):
        client.set_model_version_tag(name, str(version), key, value)


def promote(
    name: str, version: str | int, alias: str = "champion", *, force: bool = False
) -> Promotion:
    """Point ``models:/NAME@ALIAS`` at ``version``, through the gate.

    An alias nobody holds is set without a comparison. Otherwise ``version`` needs a
    comparison (``raytag compare``, recorded on the version by :func:`record_comparison`)
    whose baseline is the alias's current holder; the gate refuses (:class:`PromotionRefused`)
    when there is none, or when its verdict is ``worse``. ``force`` skips the gate. The
    promotion is recorded as ``raytag.promotion.*`` tags of the version (alias, replaced
    version, comparison run, verdict, forced) and as a ``raytag.promoted`` tag of the
    comparison run.
    """
    client = MlflowClient()
    version = str(client.get_model_version(name, str(version)).version)  # it must exist
    holder = alias_holder(name, alias)
    if holder == version:
        return Promotion(name, version, alias, holder, None, None, force)
    comparison = None
    if holder is not None:
        tags = client.get_model_version(name, version).tags
        if tags.get(COMPARISON_BASELINE_TAG) == version_key(name, holder):
            comparison = (tags[COMPARISON_RUN_TAG], tags[COMPARISON_VERDICT_TAG])
        if not force:
            _gate(name, version, alias, holder, comparison, tags.get(COMPARISON_BASELINE_TAG))
    run_id, verdict = comparison or (None, None)
    set_alias(name, version, alias)
    promotion = Promotion(name, version, alias, holder, run_id, verdict, force)
    recorded = {
        "alias": alias,
        "replaced": holder or "none",
        "comparison_run_id": run_id or "none",
        "verdict": verdict or "none",
        "forced": "yes" if force else "no",
    }
    for key, value in recorded.items():
        client.set_model_version_tag(name, version, PROMOTION_TAG_PREFIX + key, value)
    if run_id is not None:
        client.set_tag(run_id, PROMOTED_RUN_TAG, f"{version_key(name, version)}@{alias}")
    return promotion


def _gate(
    name: str,
    version: str,
    alias: str,
    holder: str,
    comparison: tuple[str, str] | None,
    compared_with: str | None,
) -> None:
    if comparison is None:
        latest = f" (its latest is with {compared_with})" if compared_with else ""
        raise PromotionRefused(
            f"{name} version {version} has no comparison with version {holder}, which holds "
            f"@{alias}{latest}: run `raytag compare --baseline models:/{name}/{holder} "
            f"--candidate models:/{name}/{version} --manifest LABELLED --split test` (or give "
            "promote --manifest), or --force"
        )
    run_id, verdict = comparison
    if verdict == REFUSED_VERDICT:
        raise PromotionRefused(
            f"{name} version {version} is worse than version {holder}, which holds @{alias} "
            f"(comparison run {run_id}: the 95% interval of its macro ROC-AUC difference lies "
            "below 0); --force promotes it anyway"
        )
