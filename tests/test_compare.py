"""compare and promote: the paired statistics on hand-made cases, then champion against
challenger end to end on a real MLflow server and a local Ray, with two models whose
ranking is known exactly: one whose scores the labels were cut from, and the same model
with its classifier negated (every ranking reversed)."""

from __future__ import annotations

import json
import uuid
import wave
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from matplotlib.image import imread
from mlflow.tracking import MlflowClient
from sklearn.metrics import average_precision_score, roc_auc_score

from raytag import promotion, registry
from raytag.checkpoint import load_model, save_model
from raytag.cli import main
from raytag.config import AudioConfig
from raytag.evaluate import TrackScores, score_tracks
from raytag.evaluate.compare import (
    ARTIFACT_DIR,
    PLOT_FILES,
    PairedScores,
    bootstrap_intervals,
    decision_agreement,
    ranking_aucs,
    verdict,
)
from raytag.models import build_model
from raytag.thresholds import Thresholds

VOCABULARY = ["bright", "busy", "loud"]
AUDIO = AudioConfig(max_patches=None)
N_TRACKS = 12  # labelled "test"; two "train" rows point at no file and must not be tagged


# -- the statistics --------------------------------------------------------------------


def test_ranking_aucs_are_scikit_learns_ties_included() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(2, 30))
        truth = rng.random((4, n)) < rng.random()
        scores = np.round(rng.random((4, n)), int(rng.integers(1, 3)))  # many ties
        roc, ap = ranking_aucs(truth, scores)
        for t in range(4):
            if truth[t].all() or not truth[t].any():
                assert np.isnan(roc[t]) and np.isnan(ap[t])
            else:
                assert roc[t] == pytest.approx(roc_auc_score(truth[t], scores[t]))
                assert ap[t] == pytest.approx(average_precision_score(truth[t], scores[t]))


def test_bootstrap_intervals_of_paired_differences() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random((40, 3)) < 0.4
    truth[:, 2] = False
    truth[:2, 2] = True  # a rare tag: some resamples hold none of its two positives
    baseline = rng.random((40, 3))
    better = baseline + 0.6 * truth  # every positive raised: higher AUCs, never lower

    same, _ = bootstrap_intervals(truth, baseline, baseline, resamples=200)
    np.testing.assert_array_equal(same, 0.0)  # paired: identical models never differ

    intervals, defined = bootstrap_intervals(truth, baseline, better, resamples=200, seed=3)
    again, _ = bootstrap_intervals(truth, baseline, better, resamples=200, seed=3)
    np.testing.assert_array_equal(intervals, again)  # the seed fixes the resamples
    assert intervals.shape == (2 + 2 * 3, 2)
    assert intervals[0, 0] > 0  # macro ROC-AUC difference: above 0
    assert (intervals[:, 0] <= intervals[:, 1]).all() and (intervals >= 0).all()
    assert defined[0] == defined[1] == 200 and 0 < defined[2] < 200


def test_verdict_rule() -> None:
    assert verdict(-0.2, -0.01) == "worse"
    assert verdict(0.01, 0.3) == "better"
    assert verdict(-0.1, 0.1) == verdict(0.0, 0.2) == verdict(-0.2, 0.0) == "inconclusive"


def test_agreement_on_the_shared_tags_needs_both_models_thresholds() -> None:
    truth = np.array([[1, 0], [0, 1], [1, 1]])
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.4]])  # tracks a, b, c; tags x, y
    baseline = TrackScores(["a", "b", "c"], truth, scores, [], [])
    # The candidate lists the tracks in another order and knows a tag more: y, z, x.
    order = [2, 0, 1]
    wider = np.stack([scores[order, 1] + 0.05, np.full(3, 0.3), scores[order, 0] + 0.05], 1)
    labels = np.stack([truth[order, 1], np.zeros(3, int), truth[order, 0]], 1)
    candidate = TrackScores(["c", "a", "b"], labels, wider, [], [])
    pair = PairedScores.of(baseline, ["x", "y"], candidate, ["y", "z", "x"])
    assert pair.tags == ["x", "y"] and pair.candidate_only == ("z",)
    np.testing.assert_array_equal(pair.shared_scores[1], scores + 0.05)

    base = Thresholds((0.5, 0.5))
    agreement = decision_agreement(pair, base, Thresholds((0.5, 0.5, 0.5)))
    assert agreement.per_tag == (1.0, 1.0) and agreement.cells == agreement.tracks == 1.0
    # x (the candidate's third tag) at 0.8: track c (0.75) loses it, the baseline keeps it.
    agreement = decision_agreement(pair, base, Thresholds((0.5, 0.5, 0.8)))
    assert agreement.per_tag == (pytest.approx(2 / 3), 1.0)
    assert agreement.cells == pytest.approx(5 / 6) and agreement.tracks == pytest.approx(2 / 3)

    missing = decision_agreement(pair, None, base)
    assert missing.per_tag is None and missing.cells is None
    assert missing.note.startswith("the baseline has no thresholds")


# -- champion against challenger, end to end -------------------------------------------


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _manifest(path: Path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tracks of tones and noise; a model ("good") and its negation ("inverted"); labels cut
    from the good model's own scores (a tag is on where its score is above the tag's
    median), so it ranks every tag perfectly (ROC-AUC 1) and the inverted one (ROC-AUC 0)
    backwards. Thresholds at the medians make their decided tags disagree everywhere."""
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(7)
    time = np.arange(int(3.5 * 16_000)) / 16_000
    rows = []
    for i in range(N_TRACKS):
        tone = np.sin(2 * np.pi * (110 * 2 ** (i / 3)) * time)
        wave_ = (0.05 + 0.07 * i) * tone + (0.4 * (i % 3) / 2) * rng.standard_normal(time.size)
        _write_wav(root / f"t{i}.wav", wave_)
        rows.append({"track_id": f"t{i}", "uri": str(root / f"t{i}.wav"), "split": "test"})
    torch.manual_seed(0)
    model = build_model("spectrogram-small", n_tags=len(VOCABULARY))
    model.train()(torch.randn(4, 16_000))  # batch-norm statistics off their defaults
    model.eval()
    unlabelled = _manifest(root / "unlabelled.parquet", [{**r, "tags": []} for r in rows])
    classifier = model.get_submodule(model.CLASSIFIER)

    def scores() -> np.ndarray:  # one patch per track: each score is one logit's sigmoid
        save_model(root / "good", model, VOCABULARY, AUDIO, name="good")
        return score_tracks(load_model(root / "good"), unlabelled).y_score.astype(np.float64)

    # A fresh model's scores saturate: standardise its logits over these tracks, so that
    # they spread over (0, 1) and rank the tracks apart.
    fresh = scores()
    logits = np.log(fresh) - np.log1p(-fresh)
    mean, std = torch.tensor(logits.mean(0)).float(), torch.tensor(logits.std(0)).float()
    with torch.no_grad():
        classifier.weight.div_(std[:, None])
        classifier.bias.sub_(mean).div_(std)
    standardised = scores()
    ordered = np.sort(standardised, axis=0)
    assert (np.diff(ordered, axis=0) > 1e-4).all(), "the scores must rank the tracks apart"
    middle = (ordered[N_TRACKS // 2 - 1] + ordered[N_TRACKS // 2]) / 2
    for row, on in zip(rows, standardised > middle, strict=True):
        row["tags"] = [tag for tag, yes in zip(VOCABULARY, on, strict=True) if yes]
    rows += [
        {"track_id": f"train{i}", "uri": str(root / "absent.wav"), "split": "train", "tags": []}
        for i in range(2)
    ]
    save_model(root / "good", model, VOCABULARY, AUDIO, name="good", thresholds=Thresholds(middle))
    with torch.no_grad():
        classifier.weight.neg_()
        classifier.bias.neg_()
    # sigmoid(-x) = 1 - sigmoid(x): the inverted model decides a tag below the good one's cut.
    inverted = Thresholds(tuple(1 - middle))
    save_model(root / "inverted", model, VOCABULARY, AUDIO, name="inverted", thresholds=inverted)
    return {
        "good": str(root / "good"),
        "inverted": str(root / "inverted"),
        "manifest": _manifest(root / "labelled.parquet", rows),
        "output": str(root / "tags"),
    }


def _artifacts(run_id: str, path: str) -> set[str]:
    return {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, path)}


def test_compare_then_promote(
    models: dict[str, str], mlflow_env: str, ray_local, tmp_path: Path
) -> None:
    name = f"tagger-{uuid.uuid4().hex[:8]}"
    good = registry.register_folder(models["good"], name).registered_model_version
    inverted = registry.register_folder(models["inverted"], name).registered_model_version
    assert (good, inverted) == ("1", "2")
    first = promotion.promote(name, 1)  # nobody holds @champion: no comparison needed
    assert (first.replaced, first.comparison_run_id) == (None, None)
    with pytest.raises(promotion.PromotionRefused, match="no comparison with version 1"):
        promotion.promote(name, 2)

    runner = CliRunner()
    record = tmp_path / "comparison.json"
    # Every patch as float32: the run's scores are those the labels were cut from (~1e-6).
    compared = runner.invoke(main, [
        "compare", "--baseline", f"models:/{name}@champion", "--candidate", f"models:/{name}/2",
        "--manifest", models["manifest"], "--split", "test", "--output", models["output"],
        "--max-patches", "0", "--no-pcm16", "--resamples", "300", "--json", str(record),
    ])  # fmt: skip
    assert compared.exit_code == 0, compared.output
    macro_row = next(line for line in compared.output.splitlines() if line.startswith("macro"))
    assert macro_row.split()[1:8] == ["1.000", "->", "0.000", "-1.000", "[-1.000,", "-1.000]",
                                      "1.000"]  # fmt: skip
    assert "verdict: worse (macro ROC-AUC -1.000" in compared.output
    comparison = json.loads(record.read_text())
    assert comparison["baseline"] == {
        "uri": f"models:/{name}@champion", "name": name, "version": "1"
    }  # fmt: skip
    assert comparison["n_tracks"] == N_TRACKS and comparison["left_out"] == []  # no train row
    assert comparison["macro_roc_auc"] == {
        "baseline": 1.0, "candidate": 0.0, "delta": -1.0, "ci_low": -1.0, "ci_high": -1.0
    }  # fmt: skip
    assert comparison["verdict"] == "worse" and comparison["macro_pr_auc"]["ci_high"] < 0
    # Reversed, each tag's 6 positives rank 7th to 12th: precision k / (6 + k) at the k-th.
    last = np.mean([k / (6 + k) for k in range(1, 7)])
    assert comparison["macro_pr_auc"]["candidate"] == pytest.approx(last)
    per_tag = comparison["per_tag"]
    assert [row["tag"] for row in per_tag] == VOCABULARY
    assert all(row["roc_auc"]["delta"] == -1.0 and row["agreement"] == 0.0 for row in per_tag)
    assert comparison["agreement"] == comparison["tracks_agreeing"] == 0.0

    client = MlflowClient()
    run_id = comparison["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["baseline_uri"] == f"models:/{name}@champion"
    assert (run.data.params["candidate_version"], run.data.params["split"]) == ("2", "test")
    assert run.data.metrics["macro_roc_auc_delta"] == run.data.metrics["macro_roc_auc_ci_high"]
    assert run.data.metrics["macro_roc_auc_delta"] == -1.0
    assert run.data.metrics["agreement/loud"] == 0.0
    assert run.data.tags["raytag.comparison.verdict"] == "worse"
    listed = {Path(f.path).name for f in client.list_artifacts(run_id, ARTIFACT_DIR)}
    assert listed == {"comparison.json", "per_tag.json", *PLOT_FILES}
    plot = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{PLOT_FILES[0]}", dst_path=str(tmp_path)
    )
    assert imread(plot).shape[0] > 100
    recorded = client.get_model_version(name, "2").tags
    assert recorded[promotion.COMPARISON_VERDICT_TAG] == "worse"
    assert recorded[promotion.COMPARISON_BASELINE_TAG] == f"{name}/1"
    assert recorded[promotion.COMPARISON_RUN_TAG] == run_id

    refused = runner.invoke(main, ["registry", "promote", name, "2"])
    assert refused.exit_code == 1 and "is worse than version 1" in refused.output
    assert promotion.alias_holder(name, "champion") == "1"
    forced = runner.invoke(main, ["registry", "promote", name, "2", "--force"])
    assert forced.exit_code == 0, forced.output
    assert f"comparison run {run_id}: worse, forced" in forced.output
    assert promotion.alias_holder(name, "champion") == "2"
    promoted = client.get_model_version(name, "2").tags
    assert {key: promoted[promotion.PROMOTION_TAG_PREFIX + key] for key in (
        "alias", "replaced", "comparison_run_id", "verdict", "forced"
    )} == {"alias": "champion", "replaced": "1", "comparison_run_id": run_id,
           "verdict": "worse", "forced": "yes"}  # fmt: skip
    assert client.get_run(run_id).data.tags[promotion.PROMOTED_RUN_TAG] == f"{name}/2@champion"

    same = runner.invoke(main, [
        "compare", "--baseline", f"models:/{name}@champion", "--candidate", f"models:/{name}/2",
        "--manifest", models["manifest"],
    ])  # fmt: skip
    assert same.exit_code == 1 and "the same model" in same.output
